# mypy: ignore-errors
"""A Blender kept running between a worker's render tasks: reads one JSON request per
line on stdin, renders it, answers on stdout; Blender starts once, not once per task.

Binary: ``blender -b --python-exit-code 1 --python warm.py``; bpy module: ``python warm.py``.
A request has the keys of bpy_render.py (``blend``, ``frames``, ``output``,
``settings``). The .blend is opened again only when the file or the settings differ from
the last request's, or when the .blend or any file it uses (linked libraries, images,
caches, sounds, fonts, volumes: dependencies.py) changed since it was loaded, so the
frames of one job reuse the loaded scene (and Cycles its loaded kernels) and a later job
never renders stale data. Blender's own output (``Fra:`` lines, ``Saved:``)
goes to stdout as usual; each request ends with one line::

    BUILDCAT-DONE ["/abs/frame_0001.png", ...]
    BUILDCAT-ERROR one line saying why
    BUILDCAT-JOB-ERROR one line saying why the job itself is wrong (no such scene or camera)

The scene a request names is rendered whichever scene the file has active
(``render.render(scene=...)``), on the binary as in the bpy module.

An empty line or end of input ends the process.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy_render
import dependencies
import override
from script_support import JobFault, ScriptError, leave_the_bpy_module, sigint_ends_the_bpy_module

DONE = "BUILDCAT-DONE "
ERROR = "BUILDCAT-ERROR "
JOB_ERROR = "BUILDCAT-JOB-ERROR "


def serve() -> None:
    loaded = None  # (blend, settings) of the scene as it is now
    stamps: dict = {}  # modification times of the .blend and every file it uses, at load
    print("BUILDCAT-READY", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        try:
            request = json.loads(line)
            blend, frames, output, settings = bpy_render.read_job(["", json.dumps(request)])
            key = (blend, json.dumps(settings, sort_keys=True))
            changed = dependencies.changed(stamps) if key == loaded else []
            if changed:
                print(f"buildcat: reloading: changed since loaded: {', '.join(changed)}")
            if key != loaded or changed:
                loaded = None  # a failure half-way must not leave a scene taken for clean
                # Stamped before opening: an edit while Blender reads the file is seen next time.
                main_file = dependencies.stamp(blend)
                bpy_render.open_blend(blend, settings)
                stamps = {**dependencies.stamps(), blend: main_file}
                override.apply(settings)
                loaded = key
            written = render_loaded(frames, output, settings)
        except ScriptError as exc:
            prefix = JOB_ERROR if isinstance(exc, JobFault) else ERROR
            print(prefix + str(exc).replace("\n", " "), flush=True)
            continue
        except Exception as exc:
            traceback.print_exc(file=sys.stdout)
            print(ERROR + f"{type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
            loaded = None
            continue
        print(DONE + json.dumps(written), flush=True)


def render_loaded(frames: list[int], output: str, settings: dict) -> list[str]:
    scene = override.target_scene(settings)
    written = []
    for frame in frames:
        written.extend(bpy_render.render_frame(scene, frame, output))
    return written


if __name__ == "__main__":
    sigint_ends_the_bpy_module()
    serve()
    leave_the_bpy_module(0)
