# mypy: ignore-errors
"""The files a loaded scene depends on, as Blender sees them (runs inside Blender).

:func:`remap` turns the absolute paths a scene holds (written on another system, or where
another machine mounts a shared location) into this worker's, with the farm's path map
that the worker resolved for its system (``path_map`` in the settings; the rules are
buildcat/paths.py, loaded by its path). It runs right after the file is opened, before
anything else: linked libraries are pointed at their files and reloaded, then images,
caches, sounds, fonts, volumes, movie clips, sequencer strips, File Output nodes and
modifier caches, in memory only (the file is never saved).

override.py calls :func:`refuse_missing` before any frame renders, so a texture Blender
cannot find fails the task with its name instead of a magenta frame reported done
(``allow_missing`` in the settings lets it render). warm.py keeps :func:`stamps` of the
files at load time and opens the .blend again when any of them changed.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import sys

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from script_support import JobFault, ScriptError

#: The start of the error, so the farm can tell this failure (the job's own fault) apart.
MISSING = "missing files: "
_LAST_DIGITS = re.compile(r"\d+(?=\D*$)")


def _collections():
    """(kind, data blocks) of every kind of data that reads a file."""
    data = bpy.data
    for kind, name in (
        ("library", "libraries"),
        ("image", "images"),
        ("cache", "cache_files"),
        ("sound", "sounds"),
        ("font", "fonts"),
        ("volume", "volumes"),
        ("movie clip", "movieclips"),
    ):
        blocks = getattr(data, name, None)
        if blocks is not None:
            yield kind, blocks


def _absolute(block, path: str) -> str:
    library = getattr(block, "library", None)
    return os.path.normpath(bpy.path.abspath(path, library=library))


def files() -> list[tuple[str, str, str, str]]:
    """(kind, data block name, path as written, absolute path) of each file used."""
    found = []
    for kind, blocks in _collections():
        for block in blocks:
            if getattr(block, "packed_file", None) is not None:
                continue  # inside the .blend
            if kind == "image" and block.source not in ("FILE", "SEQUENCE", "MOVIE", "TILED"):
                continue  # generated, render result, viewer
            path = block.filepath
            if not path or path == "<builtin>":
                continue
            found.append((kind, block.name, path, _absolute(block, path)))
    return found


def _exists(kind: str, block_name: str, path: str) -> bool:
    if os.path.exists(path):
        return True
    if kind != "image":
        return False
    image = bpy.data.images.get(block_name)
    if image is None or image.source not in ("SEQUENCE", "TILED"):
        return False
    # A sequence or UDIM set: any file of the set will do.
    name = os.path.basename(path).replace("<UDIM>", "*").replace("<UVTILE>", "*")
    pattern = os.path.join(glob.escape(os.path.dirname(path)), _LAST_DIGITS.sub("*", name))
    return bool(glob.glob(pattern))


def missing(settings: dict | None = None) -> list[str]:
    """One description per file Blender cannot find (saying why a path was not mapped,
    where the path map tells)."""
    rules = _rules(settings or {})
    lost = []
    for kind, name, written, absolute in files():
        if _exists(kind, name, absolute):
            continue
        line = f"{written} ({kind} {name!r}, looked for {absolute}"
        why = _unmapped(rules, written)
        lost.append(line + (f"; {why})" if why else ")"))
    return lost


def _unmapped(rules, written: str) -> str:
    """Why an absolute path was left as written, or ''."""
    paths = _paths_module()
    system = rules.system if rules is not None else paths.this_system()
    if rules is None:
        rules = paths.Resolved(system)
    mapped = rules.map(written, blender=True)
    if mapped.kind == paths.NO_PATH:
        return f"location {mapped.location!r} of the path map has no {system} path"
    if mapped.kind == paths.UNMAPPED and (
        (paths.flavour(system) != "windows" and paths.looks_windows(written))
        or (paths.flavour(system) == "windows" and written.startswith("/"))
    ):
        return "another system's path, under no location of the farm's path map (farm paths)"
    return ""


def refuse_missing(settings: dict) -> None:
    """Stop with the names of the files Blender cannot find, unless they are allowed."""
    lost = missing(settings)
    if not lost:
        return
    if settings.get("allow_missing"):
        print(f"buildcat: rendering without {len(lost)} missing file(s) (allow_missing)")
        for line in lost:
            print(f"buildcat: missing {line}", flush=True)
        return
    raise JobFault(MISSING + "; ".join(lost))  # the same on every worker


def stamps() -> dict[str, int | None]:
    """Modification time (ns) of every file the loaded scene depends on; None if missing."""
    result: dict[str, int | None] = {}
    for _kind, _name, _written, absolute in files():
        result[absolute] = stamp(absolute)
    return result


def stamp(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def changed(recorded: dict[str, int | None]) -> list[str]:
    """The files whose modification time is not what ``recorded`` says."""
    return [path for path, mtime in recorded.items() if stamp(path) != mtime]


# ---- the path map -------------------------------------------------------------------------------


def _paths_module():
    """buildcat/paths.py, loaded by its path: the buildcat package itself (and what it
    imports) is not there in Blender's own Python."""
    name = "buildcat_paths"
    if name not in sys.modules:
        here = os.path.dirname(os.path.abspath(__file__))
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(os.path.dirname(here), "paths.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while being made
        spec.loader.exec_module(module)
    return sys.modules[name]


def _rules(settings: dict):
    data = settings.get("path_map")
    if not data:
        return None
    paths = _paths_module()
    try:
        return paths.Resolved.from_json(data)
    except ValueError as exc:
        raise ScriptError(f"'path_map': {exc}") from None


def _strips(scene):
    editor = scene.sequence_editor
    if editor is None:
        return ()
    # Blender 4.4 renamed sequences_all to strips_all; 3.x has only the first.
    return getattr(editor, "strips_all", None) or getattr(editor, "sequences_all", ())


def _places():
    """(what, owner, attribute) of every path a loaded scene holds but linked
    libraries' own: those are as their library says (linked data cannot be changed)."""
    data = bpy.data
    for kind, blocks in _collections():
        if kind == "library":
            continue
        for block in blocks:
            if getattr(block, "library", None) is not None:
                continue
            if getattr(block, "packed_file", None) is not None:
                continue
            yield f"{kind} {block.name!r}", block, "filepath"
    for scene in data.scenes:
        if scene.library is not None:
            continue
        yield f"scene {scene.name!r} output", scene.render, "filepath"
        for strip in _strips(scene):
            for attribute in ("directory", "filepath"):
                if hasattr(strip, attribute):
                    yield f"strip {strip.name!r}", strip, attribute
        tree = getattr(scene, "node_tree", None)
        for node in tree.nodes if tree is not None else ():
            if node.type == "OUTPUT_FILE":
                yield f"File Output node {node.name!r}", node, "base_path"
    for obj in data.objects:
        if obj.library is not None:
            continue
        for modifier in obj.modifiers:
            what = f"modifier {modifier.name!r} of {obj.name!r}"
            if modifier.type == "FLUID" and getattr(modifier, "domain_settings", None):
                yield what, modifier.domain_settings, "cache_directory"
            elif modifier.type in ("OCEAN", "MESH_CACHE"):
                yield what, modifier, "filepath"


def remap(settings: dict) -> list[str]:
    """Point every absolute path under a location of the path map at this worker's path of
    it (libraries first, reloaded); returns the ``buildcat:`` lines printed."""
    rules = _rules(settings)
    if rules is None:
        return []
    notes = []

    def note(line: str) -> None:
        print("buildcat: " + line, flush=True)
        notes.append("buildcat: " + line)

    def one(what: str, owner, attribute: str) -> bool:
        written = getattr(owner, attribute, None)
        if not isinstance(written, str) or not written or written == "<builtin>":
            return False
        mapped = rules.map(written, blender=True)
        if not mapped.changed:
            return False
        try:
            setattr(owner, attribute, mapped.path)
        except (AttributeError, TypeError, ValueError, RuntimeError) as exc:
            note(f"cannot map {what}: {written}: {exc}")
            return False
        note(f"mapped {what}: {written} -> {mapped.path}")
        return True

    # Libraries before what they hold: reloaded from the right file, their data replaces
    # the placeholders Blender made when it could not find them.
    for library in bpy.data.libraries:
        if one(f"library {library.name!r}", library, "filepath"):
            library.reload()
    for what, owner, attribute in _places():
        one(what, owner, attribute)
    return notes
