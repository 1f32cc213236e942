"""`farm paths`: the farm's path map (``<root>/.buildcat/paths.json``), listed, edited and
asked what a path is on each system."""

from __future__ import annotations

import os
from pathlib import Path

import click

from buildcat import paths
from buildcat.cli.base import FarmGroup, main, print_json, root_option
from buildcat.display import table
from buildcat.errors import FarmError


@main.group("paths", cls=FarmGroup)
def paths_group() -> None:
    """The path map: shared locations as each system names them.

    A path inside a .blend (or a command) written on one system is remapped on a worker
    of another when it falls under one of these locations; the farm root is always one.
    """


def _own_root(root: Path) -> str:
    return os.path.abspath(root)


@paths_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the map as JSON.")
@root_option
def list_paths(as_json: bool, root: Path) -> None:
    """List every location and its path on each system."""
    path_map = paths.load(root)
    if as_json:
        print_json(path_map.to_json())
        return
    system = paths.this_system()
    seen = path_map.with_own_root(system, _own_root(root))
    rows = []
    for place in seen.locations:
        cells = [place.name]
        for column in paths.SYSTEMS:
            values = list(place.on(column))
            if place.name == paths.ROOT and column == system and values:
                values[0] += " (this machine)"
            cells.append(", ".join(values) or "-")
        rows.append(cells)
    click.echo(table(["NAME", *(s.upper() for s in paths.SYSTEMS)], rows))


@paths_group.command("add")
@click.argument("name")
@click.option("--linux", multiple=True, metavar="PATH", help="Its path on Linux (repeatable).")
@click.option(
    "--windows",
    multiple=True,
    metavar="PATH",
    help="Its path on Windows (T:\\, \\\\server\\share).",
)
@click.option("--macos", multiple=True, metavar="PATH", help="Its path on macOS (/Volumes/...).")
@click.option("--replace", is_flag=True, help="Replace a location of the same name.")
@root_option
def add(
    name: str,
    linux: tuple[str, ...],
    windows: tuple[str, ...],
    macos: tuple[str, ...],
    replace: bool,
    root: Path,
) -> None:
    """Add location NAME with its path on each system (`root` for the farm root's paths on
    other systems). The first path of a system is where paths map to there; every one
    given is recognised."""
    given = {"linux": list(linux), "windows": list(windows), "macos": list(macos)}
    given = {system: values for system, values in given.items() if values}
    if not given:
        raise FarmError("give at least one of --linux, --windows, --macos")
    path_map = paths.load(root)
    updated = path_map.with_location(paths.location(name, given), replace=replace)
    # This machine's own root must not be claimed by another location.
    updated.with_own_root(paths.this_system(), _own_root(root))
    written = paths.save(root, updated)
    click.echo(f"{name}: {_describe(updated.get(name))} (saved in {written})")


@paths_group.command("remove")
@click.argument("name")
@root_option
def remove(name: str, root: Path) -> None:
    """Remove location NAME (for `root`: its paths on other systems)."""
    path_map = paths.load(root)
    if name == paths.ROOT and path_map.get(paths.ROOT) is None:
        raise FarmError("the root has no paths in the map to remove: the root is always a location")
    paths.save(root, path_map.without(name))
    click.echo(f"{name}: removed")


@paths_group.command("check")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@root_option
def check(path: str, as_json: bool, root: Path) -> None:
    """Show what PATH is on each system (Windows paths by Windows rules, wherever read).

    Exits 1 when PATH is absolute but under no location: no other system can find it."""
    system = paths.this_system()
    seen = paths.load(root).with_own_root(system, _own_root(root))
    here = seen.resolve(system).map(path)
    if here.kind == paths.RELATIVE:
        if as_json:
            print_json({"path": path, "location": None, "relative": True})
        else:
            click.echo(f"{path}: relative to the farm root: the same file on every system")
        return
    if here.kind == paths.UNMAPPED:
        flags = "--windows" if paths.looks_windows(path) else "--linux or --macos"
        raise FarmError(
            f"{path} is under no location of the path map: no other system can find it "
            f"(farm paths add NAME {flags} ...)"
        )
    found: dict[str, str | None] = {}
    for target in paths.SYSTEMS:
        mapped = seen.resolve(target).map(path)
        found[target] = mapped.path if mapped.kind in (paths.MAPPED, paths.LOCAL) else None
    if as_json:
        print_json({"path": path, "location": here.location, "systems": found})
        return
    click.echo(f"{path}: under {here.location}")
    for target, mapped_path in found.items():
        shown = mapped_path or f"(none: {here.location} has no {target} path)"
        mine = " (this machine)" if target == system and mapped_path else ""
        click.echo(f"{target:<7}  {shown}{mine}")


def _describe(place: paths.Location | None) -> str:
    if place is None:
        return "no paths"
    return ", ".join(f"{s} {' or '.join(place.on(s))}" for s in paths.SYSTEMS if place.on(s))
