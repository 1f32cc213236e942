# mypy: ignore-errors
"""Change a loaded scene's render settings for one farm task (runs inside Blender).

Binary: ``blender -b SCENE.blend [-S NAME] --python-exit-code 1 --python override.py
-o /abs/out/frame_#### -x 1 -f 1,2 -- '{json}'``. With the bpy module, bpy_render.py
imports this file and calls :func:`apply`. All JSON keys are optional:

- ``scene``: scene name (run as the binary's ``--python`` script before ``-f``, the binary
  renders the scene chosen on its command line, so pass ``-S NAME`` too; without it the
  script stops rather than render another scene; warm.py and bpy_render.py render the
  named scene whichever scene is active)
- ``engine``: ``"cycles"``, ``"eevee"`` or ``"workbench"``
- ``samples``: Cycles samples, or EEVEE render samples
- ``resolution``: ``[width, height]`` at 100 %
- ``camera``: camera object name; it wins over timeline markers that bind cameras
- ``format``: ``"PNG"``, ``"JPEG"``, ``"OPEN_EXR"`` or ``"OPEN_EXR_MULTILAYER"``; the scene's
  colour mode, depth, codec and quality are kept where the new format has them (Blender's own
  rule when the format changes). Absent: the scene's own format (a movie format is refused)
- ``color_mode``: ``"BW"``, ``"RGB"`` or ``"RGBA"``; ``color_depth``: ``"8"``, ``"16"`` or
  ``"32"`` (each refused with one line where the format lacks it)
- ``part``: true for a tile or a sample-split part: written as OPEN_EXR, RGBA, 32-bit float,
  lossless ZIP, whatever the job's format, so the stitch or merge loses nothing
- ``seed``: Cycles seed, not animated
- ``split_count``, ``split_index``: render part ``split_index`` (0-based) of N parts of the
  scene's samples: its share of the samples, from its offset into the one sample sequence
  (``cycles.sample_offset``), with adaptive sampling off, so the merged parts are the samples
  of one full render. ``split_count`` alone (older tasks): 1/N of the samples
- ``border``: ``[xmin, ymin, xmax, ymax]`` fractions of the frame, y = 0 at the bottom;
  the image keeps the full size (no crop), pixels outside the border stay empty
- ``denoise``: true or false turns Cycles denoising on or off; absent leaves the scene's choice
- ``allow_missing``: render even when files the scene uses are missing (dependencies.py);
  without it such a task stops before the first frame, naming the files
- ``autoexec``: true lets the file's Python (drivers, scripts) run; read by whoever opens
  the file (the binary's ``-y``, ``open_mainfile(use_scripts=...)``), ignored here
- ``gpu``: the devices of the worker slot running the task (blender/devices.py, set by a
  ``farm worker --gpu``, never by a submitter): ``{"backend": "OPTIX", "devices": [ids],
  "cpu": false, "label": "..."}``. Cycles renders on exactly those devices, whatever the
  file says (``"backend": "NONE"`` with the CPU's id: the CPU alone); a scene using OSL
  renders on the CPU where the backend cannot run it (all but OptiX), with a line
  saying so; EEVEE and Workbench are left on the GPU the system gives Blender
- ``path_map``: the farm's path map resolved for this worker (buildcat/paths.py
  ``Resolved.to_json()``), set by the worker: absolute paths under its locations are
  remapped (dependencies.py :func:`remap`) right after the file is opened, by whoever opens
  it (:func:`main` here for the binary, ``bpy_render.open_blend``); ignored by :func:`apply`

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
FORMATS = ("PNG", "JPEG", "OPEN_EXR", "OPEN_EXR_MULTILAYER")
MOVIE_FORMATS = ("AVI_RAW", "AVI_JPEG", "FFMPEG", "H264", "XVID", "THEORA")
KEYS = {
    "color_mode",
    "color_depth",
    "part",
    "split_index",
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
    "path_map",
    "gpu",
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


def _enum_items(settings, name: str) -> list[str]:
    return [item.identifier for item in settings.bl_rna.properties[name].enum_items]


def _set_format(scene: bpy.types.Scene, settings: dict) -> list[str]:
    """Change only the output settings named; return what changed, for the log."""
    image = scene.render.image_settings
    changed = []
    if "format" in settings:
        file_format = settings["format"]
        if file_format not in FORMATS:
            raise ScriptError(f"'format' must be one of {', '.join(FORMATS)}, not {file_format!r}")
        image.file_format = file_format  # Blender keeps mode and depth where it can
        changed.append(f"format {file_format}")
    elif image.file_format in MOVIE_FORMATS:
        raise ScriptError(
            f"scene {scene.name!r} writes a movie ({image.file_format}); a farm renders "
            "frames: give a --format, then make the video from the frames"
        )
    for key, prop, label in (("color_mode", "color_mode", "colour mode"),
                             ("color_depth", "color_depth", "colour depth")):  # fmt: skip
        if key not in settings:
            continue
        value = settings[key]
        accepted = _enum_items(image, prop)
        if not isinstance(value, str) or value not in accepted:
            raise ScriptError(
                f"{image.file_format} has no {label} {value!r}: use {' or '.join(accepted)}"
            )
        setattr(image, prop, value)
        changed.append(f"{label} {value}")
    if settings.get("part"):
        # A tile or a sample-split part: lossless linear float, whatever the job writes.
        image.file_format = "OPEN_EXR"
        image.color_mode = "RGBA"
        image.color_depth = "32"
        image.exr_codec = "ZIP"
        changed.append("part as OPEN_EXR RGBA 32-bit float (ZIP)")
    # The farm finds each frame by its name plus the format's extension.
    scene.render.use_file_extension = True
    return changed


def split_share(total: int, count: int, index: int) -> tuple[int, int]:
    """Part ``index`` of ``count``: (its samples, its offset into the frame's samples)."""
    base, extra = divmod(total, count)
    return base + (1 if index < extra else 0), index * base + min(index, extra)


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


def _set_devices(scene: bpy.types.Scene, gpu: object, note) -> None:
    """Render Cycles on exactly the slot's devices (the ``gpu`` setting)."""
    if not isinstance(gpu, dict) or not isinstance(gpu.get("devices"), list):
        raise ScriptError(f"'gpu' must be a map with a device list, not {gpu!r}")
    backend, wanted = str(gpu.get("backend", "")), [str(d) for d in gpu["devices"]]
    label = str(gpu.get("label") or backend)
    if scene.render.engine != "CYCLES":
        note(f"{scene.render.engine} renders on the GPU the system gives Blender, not "
             f"this slot's ({label})")  # fmt: skip
        return
    if scene.cycles.shading_system and backend not in ("OPTIX", "NONE"):
        scene.cycles.device = "CPU"
        note(f"the scene uses Open Shading Language, which {backend} cannot run: "
             "rendering on the CPU")  # fmt: skip
        return
    prefs = bpy.context.preferences.addons["cycles"].preferences
    try:
        prefs.compute_device_type = backend
    except TypeError:
        raise ScriptError(
            f"this Blender {bpy.app.version_string} has no {backend} backend"
        ) from None
    prefs.refresh_devices()
    available = {d.id: d for d in prefs.devices if d.type in (backend, "CPU")}
    missing = [d for d in wanted if d not in available]
    if missing:
        seen = ", ".join(f"{d.name} ({d.id})" for d in available.values()) or "none"
        raise ScriptError(f"{backend} device(s) {', '.join(missing)} not found by this "
                          f"Blender (it sees: {seen})")  # fmt: skip
    for device in prefs.devices:
        device.use = device.id in wanted
    used = [available[d] for d in wanted]
    scene.cycles.device = "GPU" if any(d.type != "CPU" for d in used) else "CPU"
    names = " + ".join(d.name for d in used)
    note(f"devices {backend}: {names} (Cycles on the {scene.cycles.device})")


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

    for change in _set_format(scene, settings):
        note(change)
    image = scene.render.image_settings
    note(f"writing {image.file_format} {image.color_mode} {image.color_depth}-bit")

    if "split_index" in settings:
        count = _integer(settings.get("split_count"), "split_count")
        index = _integer(settings["split_index"], "split_index", low=0)
        if scene.render.engine != "CYCLES":
            raise ScriptError("sample splitting works with Cycles only")
        if not index < count:
            raise ScriptError(f"'split_index' {index} is not below 'split_count' {count}")
        total = scene.cycles.samples
        if total < count:
            raise ScriptError(f"{total} samples cannot be split into {count} parts")
        samples, offset = split_share(total, count, index)
        if hasattr(scene.cycles, "use_sample_subset"):
            # Blender 4.2+: the pattern is laid out for ``samples``; render a subset of it.
            scene.cycles.use_sample_subset = True
            scene.cycles.sample_offset = offset
            scene.cycles.sample_subset_length = samples
        else:  # Blender 3.x: skip ``offset`` samples of the sequence, render ``samples``
            scene.cycles.samples = samples
            scene.cycles.sample_offset = offset
        # Each part must render all its samples: adaptive sampling would stop them early,
        # and not where a full render would.
        scene.cycles.use_adaptive_sampling = False
        note(f"samples {offset + 1}-{offset + samples} of {total} (part {index + 1}/{count})")
    elif "split_count" in settings:
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

    if "gpu" in settings:
        _set_devices(scene, settings["gpu"], note)

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
    dependencies.remap(settings)  # the file is open: its paths first, then the overrides
    apply(settings)


if __name__ == "__main__":
    run(main)  # on an error, sys.exit ends the binary here, before -f renders anything
