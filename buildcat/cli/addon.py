"""The Blender add-on on the command line: `farm addon install` and `farm addon zip`."""

from __future__ import annotations

from pathlib import Path

import click

from buildcat.blender import addon_package, find_blender
from buildcat.cli.base import FarmGroup, main
from buildcat.errors import FarmError


@main.group(cls=FarmGroup)
def addon() -> None:
    """The Blender add-on: a Farm panel in the Render properties (docs/addon.md)."""


@addon.command("zip")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Where to write it [default: ./{addon_package.default_zip_name()}].",
)
def zip_command(output: Path | None) -> None:
    """Write the add-on's zip, to install by hand (Blender: Preferences > Add-ons >
    Install, or drag it in on 4.2+)."""
    written = addon_package.write_zip(output or Path(addon_package.default_zip_name()))
    click.echo(str(written))


@addon.command()
@click.option(
    "--blender",
    "blender",
    metavar="PATH",
    help="The Blender to install it in: a blender executable, or `bpy` for this Python's "
    "bpy module [default: $BLENDER, then blender on PATH].",
)
def install(blender: str | None) -> None:
    """Install and enable the add-on for a Blender (a legacy add-on on 3.x, an extension
    on 4.2+), saving that Blender's preferences."""
    found = find_blender(blender, allow_bpy=False)
    if found is None:
        raise FarmError("no Blender found: give --blender PATH (or set BLENDER)")
    click.echo(f"installing the add-on in {found.describe()} ...", err=True)
    done = addon_package.install(found)
    click.echo(f"installed and enabled {done.module} in Blender {done.blender}: {done.folder}")
