# mypy: ignore-errors
"""Change a loaded scene's render settings for one farm task (runs inside Blender).

Binary: ``blender -b SCENE.blend [-S NAME] --python-exit-code 1 --python override.py
-o /abs/out/frame_#### -F PNG -x 1 -f 1,2 -- '{json}'``. With the bpy module, bpy_render.py
imports this file and calls :func:`apply`. All JSON keys are optional:

- ``scene``: scene name (run as the binary's ``--python`` script before ``-f``, the binary
  renders the scene chosen on its command line, so pass ``-S NAME`` too; without it the
  script stops rather than render another scene; warm.py and bpy_render.py render the
  named scene whichever scene is active)
- ``engine``: ``"cycles"``, ``"eevee"`` or ``"workbench"``
- ``samples``: Cycles samples, or EEVEE render samples
- ``resolution``: ``[width, height]`` at 100 %
- ``camera``: camera object name; it wins over timeline markers that bind cameras
- ``format``: ``"PNG"`` or ``"JPEG"`` (8-bit RGB) or ``"OPEN_EXR"`` (RGBA half float)
- ``seed``: Cycles seed, not animated
- ``split_count``: render 1/N of the samples (one part of a sample split)
- ``border``: ``[xmin, ymin, xmax, ymax]`` fractions of the frame, y = 0 at the bottom;
  the image keeps the full size (no crop), pixels outside the border stay empty
- ``denoise``: true or false turns Cycles denoising on or off; absent leaves the scene's choice
- ``allow_missing``: render even when files the scene uses are missing (dependencies.py);
  without it such a task stops before the first frame, naming the files
- ``autoexec``: true lets the file's Python (drivers, scripts) run; read by whoever opens
  the file (the binary's ``-y``, ``open_mainfile(use_scripts=...)``), ignored here

A scene or camera the file lacks raises :class:`JobFault` (``buildcat: job error:``): the
job is wrong, not this worker.

Cycles denoising needs OpenImageDenoise; where this Blender lacks it (Debian's build), it is
turned off with a note instead of failing every frame.
"""

from __future__ import annotations

import os
import sys

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dependencies
from script_support import JobFault, ScriptError, read_settings, run

PREFIX = "buildcat: "
NO_DENOISER = "buildcat: this Blender has no OpenImageDenoise; denoising turned off for this task"
# Engine ids by our name; the first one this Blender accepts wins (EEVEE is
# BLENDER_EEVEE_NEXT in 4.2-4.5 and BLENDER_EEVEE before and after).
ENGINES = {
    "cycles": ("CYCLES",),
    "eevee": ("BLENDER_EEVEE_NEXT", "BLENDER_EEVEE"),
    "workbench": ("BLENDER_WORKBENCH",),
}
FORMATS = ("PNG", "JPEG", "OPEN_EXR")
KEYS = {
    "scene",
    "engine",
    "samples",
    "resolution",
    "camera",
    "format",
    "seed",
    "split_count",
    "border",
    "denoise",
    "allow_missing",
    "autoexec",
}


def has_openimagedenoise() -> bool:
    """Whether Cycles in this Blender can denoise on the CPU; True when it cannot be told."""
    try:
        import _cycles

        return bool(_cycles.with_openimagedenoise)
    except (ImportError, AttributeError):
        pass
    return bool(getattr(bpy.app.build_options, "openimagedenoise", True))


def in_blender_binary() -> bool:
    """True inside the Blender program, False in the bpy module (which has no binary path)."""
    return bool(bpy.app.binary_path)


def target_scene(settings: dict) -> bpy.types.Scene:
    """The scene the settings name, else the context scene."""
    name = settings.get("scene")
    if name is None:
        return bpy.context.scene
    scene = bpy.data.scenes.get(name)
    if scene is None:
        known = ", ".join(repr(s.name) for s in bpy.data.scenes)
        raise JobFault(f"no scene named {name!r} in this file (scenes: {known})")
    return scene


def _integer(value: object, key: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ScriptError(f"{key!r} must be a whole number >= {low}, not {value!r}")
    return value


def _set_engine(scene: bpy.types.Scene, name: object) -> str:
    candidates = ENGINES.get(name) if isinstance(name, str) else None
    if candidates is None:
        raise ScriptError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")
    for engine_id in candidates:
        try:
            scene.render.engine = engine_id
        except TypeError:  # not an engine this Blender has
            continue
        return engine_id
    raise ScriptError(f"this Blender {bpy.app.version_string} has no {name} engine")


def _set_format(scene: bpy.types.Scene, file_format: object) -> None:
    if file_format not in FORMATS:
        raise ScriptError(f"'format' must be one of {', '.join(FORMATS)}, not {file_format!r}")
    settings = scene.render.image_settings
    settings.file_format = file_format
    if file_format == "OPEN_EXR":
        settings.color_mode = "RGBA"
        settings.color_depth = "16"
    else:
        settings.color_mode = "RGB"
        settings.color_depth = "8"
    scene.render.use_file_extension = True


def _set_border(scene: bpy.types.Scene, border: object) -> None:
    if not isinstance(border, list | tuple) or len(border) != 4:
        raise ScriptError(f"'border' must be [xmin, ymin, xmax, ymax], not {border!r}")
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in border):
        raise ScriptError(f"'border' must hold four numbers, not {border!r}")
    xmin, ymin, xmax, ymax = (float(v) for v in border)
    if not (0.0 <= xmin < xmax <= 1.0 and 0.0 <= ymin < ymax <= 1.0):
        raise ScriptError(f"'border' {list(border)} is empty or outside 0..1")
    render = scene.render
    render.use_border = True
    render.use_crop_to_border = False
    render.border_min_x, render.border_min_y = xmin, ymin
    render.border_max_x, render.border_max_y = xmax, ymax


def _denoising_on(scene: bpy.types.Scene) -> bool:
    if not scene.cycles.use_denoising:
        return False
    layers = [layer for layer in scene.view_layers if layer.use]
    return any(getattr(layer.cycles, "use_denoising", True) for layer in layers)


def apply(settings: dict) -> list[str]:
    """Apply the settings to the scene they name; return the ``buildcat:`` lines printed."""
    unknown = set(settings) - KEYS
    if unknown:
        raise ScriptError(f"unknown override settings: {', '.join(sorted(unknown))}")
    notes: list[str] = []

    def note(text: str) -> None:
        line = text if text.startswith(PREFIX) else PREFIX + text
        print(line, flush=True)
        notes.append(line)

    scene = target_scene(settings)
    if "scene" in settings:
        window = bpy.context.window
        if window is not None and window.scene != scene:
            window.scene = scene
        note(f"scene {scene.name}")

    engine = scene.render.engine
    if "engine" in settings:
        engine = _set_engine(scene, settings["engine"])
        note(f"engine {engine}")

    if "samples" in settings:
        samples = _integer(settings["samples"], "samples")
        if engine == "CYCLES":
            scene.cycles.samples = samples
            note(f"samples {samples}")
        elif engine.startswith("BLENDER_EEVEE"):
            scene.eevee.taa_render_samples = samples
            note(f"samples {samples}")
        else:
            note(f"samples ignored: the {engine} engine has no sample count")

    if "resolution" in settings:
        resolution = settings["resolution"]
        if not isinstance(resolution, list | tuple) or len(resolution) != 2:
            raise ScriptError(f"'resolution' must be [width, height], not {resolution!r}")
        width, height = (_integer(v, "resolution") for v in resolution)
        scene.render.resolution_x, scene.render.resolution_y = width, height
        scene.render.resolution_percentage = 100
        note(f"resolution {width}x{height}")

    if "camera" in settings:
        name = settings["camera"]
        camera = scene.objects.get(name) if isinstance(name, str) else None
        if camera is None or camera.type != "CAMERA":
            known = ", ".join(repr(o.name) for o in scene.objects if o.type == "CAMERA")
            raise JobFault(
                f"no camera named {name!r} in scene {scene.name!r} (cameras: {known or 'none'})"
            )
        scene.camera = camera
        # Markers that bind cameras would switch it back at every frame change: an explicit
        # camera wins (in memory only; the file is never saved).
        unbound = 0
        for marker in scene.timeline_markers:
            if marker.camera is not None:
                marker.camera = None
                unbound += 1
        note(f"camera {camera.name}")
        if unbound:
            note(f"{unbound} timeline marker(s) binding cameras ignored")

    if "format" in settings:
        _set_format(scene, settings["format"])
        note(f"format {settings['format']}")

    if "split_count" in settings:
        # One of N sample-split parts: 1/N of the samples, merged with the others later.
        count = _integer(settings["split_count"], "split_count")
        if scene.render.engine != "CYCLES":
            raise ScriptError("sample splitting works with Cycles only")
        scene.cycles.samples = max(1, -(-scene.cycles.samples // count))
        note(f"samples {scene.cycles.samples} (1/{count} of the frame's samples)")

    if "seed" in settings:
        seed = _integer(settings["seed"], "seed", low=0)
        scene.cycles.seed = seed
        scene.cycles.use_animated_seed = False
        note(f"seed {seed}")

    if "border" in settings:
        _set_border(scene, settings["border"])
        note(f"border {list(settings['border'])}")

    if "denoise" in settings:
        if not isinstance(settings["denoise"], bool):
            raise ScriptError(f"'denoise' must be true or false, not {settings['denoise']!r}")
        scene.cycles.use_denoising = settings["denoise"]
        note(f"denoising {'on' if settings['denoise'] else 'off'}")

    if engine == "CYCLES" and _denoising_on(scene) and not has_openimagedenoise():
        scene.cycles.use_denoising = False
        note(NO_DENOISER)
    dependencies.refuse_missing(settings)  # a magenta frame must never pass as done
    return notes


def main(argv: list[str]) -> None:
    """The binary's ``--python`` script before ``-f``/``-a``: those render the scene the
    command line chose (``-S``), so the named scene must be that one."""
    settings = read_settings(argv)
    scene = target_scene(settings)
    if bpy.context.scene != scene:
        raise ScriptError(
            f"the Blender binary renders scene {bpy.context.scene.name!r}: "
            f"pass -S {scene.name!r} before --python"
        )
    apply(settings)


if __name__ == "__main__":
    run(main)  # on an error, sys.exit ends the binary here, before -f renders anything
