# mypy: ignore-errors
"""Render frames of a .blend with Blender as a Python module (the ``bpy`` package).

``python bpy_render.py '{json}'``. JSON keys:

- ``blend``: absolute path of the .blend
- ``frames``: list of frame numbers
- ``output``: absolute output pattern with ``#`` padding, like ``blender -o``
- ``settings``: the override settings of override.py (``format`` among them;
  ``autoexec`` lets the file's Python drivers and scripts run, off unless true)

The Blender binary runs it too (``blender -b --python bpy_render.py -- '{json}'``) where
``-f`` cannot say the frames: it reads ``-f -2`` as "two before the end".

Each frame is written where the binary would write it, and Blender prints ``Saved: 'PATH'``
for it, as the binary does; then this script prints ``BUILDCAT-FRAME {json}`` once it has
checked the file, so the farm moves it into place only after that.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy
import dependencies
import override
from script_support import ScriptError, run, sigint_ends_the_bpy_module

#: Printed once a frame is written and checked (``BUILDCAT-FRAME {"frame": 1, "path": ...}``).
FRAME_DONE = "BUILDCAT-FRAME "


def read_job(argv: list[str]) -> tuple[str, list[int], str, dict]:
    job = override.read_settings(argv)
    blend, frames, output = job.get("blend"), job.get("frames"), job.get("output")
    settings = job.get("settings", {})
    if not isinstance(blend, str) or not os.path.isabs(blend):
        raise ScriptError("'blend' must be an absolute path")
    if not os.path.isfile(blend):
        raise ScriptError(f"no .blend file at {blend}")
    if (
        not isinstance(frames, list)
        or not frames
        or any(isinstance(f, bool) or not isinstance(f, int) for f in frames)
    ):
        raise ScriptError("'frames' must be a non-empty list of whole numbers")
    if not isinstance(output, str) or not os.path.isabs(output):
        raise ScriptError("'output' must be an absolute path pattern")
    if not isinstance(settings, dict):
        raise ScriptError("'settings' must be a JSON object")
    return blend, frames, output, settings


def open_blend(blend: str, settings: dict) -> None:
    """Open ``blend``; its Python (drivers, startup scripts) runs only with ``autoexec``,
    whatever this Blender's preferences say. Then its paths are remapped to this worker's
    with the farm's path map (``path_map``), before anything reads them."""
    bpy.ops.wm.open_mainfile(filepath=blend, use_scripts=settings.get("autoexec") is True)
    dependencies.remap(settings)


def render(blend: str, frames: list[int], output: str, settings: dict) -> list[str]:
    """Open ``blend``, apply the overrides, render ``frames``; return the written paths."""
    open_blend(blend, settings)
    override.apply(settings)
    scene = override.target_scene(settings)
    written = []
    for frame in frames:
        written.extend(render_frame(scene, frame, output))
    return written


def render_frame(scene, frame: int, output: str) -> list[str]:
    """Render one frame of a loaded scene to the ``output`` pattern; return the path."""
    scene.frame_set(frame)
    scene.render.filepath = output
    scene.render.use_file_extension = True
    path = scene.render.frame_path(frame=frame)
    # A still render writes to the file path as it stands (no # substitution).
    scene.render.filepath = path
    if os.path.exists(path):  # so a file left by an earlier attempt cannot pass as new
        os.unlink(path)
    try:
        result = bpy.ops.render.render(write_still=True, scene=scene.name)
    except RuntimeError as exc:
        raise ScriptError(f"frame {frame} failed: {str(exc).strip()}") from None
    finally:
        scene.render.filepath = output
    if "FINISHED" not in result or not os.path.isfile(path):
        raise ScriptError(f"frame {frame} failed: Blender wrote no {path}")
    # The frame is whole and checked: the farm may move it into place now.
    print(f"{FRAME_DONE}{json.dumps({'frame': frame, 'path': path})}", flush=True)
    return [path]


def main(argv: list[str]) -> None:
    render(*read_job(argv))


if __name__ == "__main__":
    sigint_ends_the_bpy_module()
    run(main)
