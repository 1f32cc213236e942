# mypy: ignore-errors
"""The files a loaded scene depends on, as Blender sees them (runs inside Blender).

override.py calls :func:`refuse_missing` before any frame renders, so a texture Blender
cannot find fails the task with its name instead of a magenta frame reported done
(``allow_missing`` in the settings lets it render). warm.py keeps :func:`stamps` of the
files at load time and opens the .blend again when any of them changed.
"""

from __future__ import annotations

import glob
import os
import re
import sys

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from script_support import JobFault

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


def missing() -> list[str]:
    """One description per file Blender cannot find."""
    return [
        f"{written} ({kind} {name!r}, looked for {absolute})"
        for kind, name, written, absolute in files()
        if not _exists(kind, name, absolute)
    ]


def refuse_missing(settings: dict) -> None:
    """Stop with the names of the files Blender cannot find, unless they are allowed."""
    lost = missing()
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
