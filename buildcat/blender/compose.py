# mypy: ignore-errors
"""Stitch render tiles into one image, or average sample-split renders (runs inside Blender).

``blender -b --factory-startup --python-exit-code 1 --python compose.py -- '{json}'`` or
``python compose.py '{json}'`` with the bpy module. JSON keys:

- ``mode``: ``"stitch"`` or ``"merge"``
- ``inputs``: absolute image paths, all ``width`` x ``height`` and all 8-bit or all float
- ``rects`` (stitch): per input ``[x0, y0, x1, y1]`` in pixels, ends exclusive, y = 0 is the
  bottom row: the part of that input that goes into the output (later inputs win overlaps)
- ``width``, ``height``: the output size (default: the first input's size)
- ``fractions`` (stitch, instead of ``rects``): rects as fractions of the frame
- ``blend`` and ``settings``: the scene and the job's override settings. The result is written
  as that scene writes its frames (format, colour mode and depth, EXR codec, JPEG quality,
  with its view transform, look and exposure), and ``output`` has no extension: the
  format's own is added. The inputs are then the farm's float EXR parts (linear light);
  a merge weights each by its share of the scene's samples
- ``output``: absolute path of the result; extension included when there is no ``blend``
- ``format`` (without ``blend``): ``"PNG"``, ``"JPEG"`` or ``"OPEN_EXR"``

Stitch copies each input's rect; merge writes the per-pixel (weighted) mean of the inputs'
stored values. The result is written to a temporary name beside ``output``, then renamed
over it, and the last line says where: ``buildcat: merge of 4 images written to PATH``.
"""

from __future__ import annotations

import array
import itertools
import operator
import os
import sys

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import override
from script_support import ScriptError, read_settings, run

try:  # Debian's Blender runs the system Python, which may lack numpy.
    import numpy
except ImportError:
    numpy = None

FORMATS = ("PNG", "JPEG", "OPEN_EXR")
JPEG_QUALITY = 95


def _buffer(length: int):
    if numpy is not None:
        return numpy.zeros(length, dtype=numpy.float32)
    return array.array("f", bytes(4 * length))


def _load(path: str, width: int, height: int) -> tuple[bpy.types.Image, object]:
    if not os.path.isfile(path):
        raise ScriptError(f"input image not found: {path}")
    try:
        image = bpy.data.images.load(path, check_existing=False)
    except RuntimeError as exc:
        raise ScriptError(f"cannot read {path}: {exc}") from None
    if tuple(image.size) != (width, height):
        raise ScriptError(f"{path} is {image.size[0]}x{image.size[1]}, expected {width}x{height}")
    if image.channels != 4:  # pixels always come as RGBA, whatever the file holds
        raise ScriptError(f"{path}: unexpected channel count {image.channels}")
    pixels = _buffer(width * height * 4)
    image.pixels.foreach_get(pixels)  # the stored values: bytes / 255, or linear floats
    return image, pixels


def _check_rect(rect: object, width: int, height: int) -> tuple[int, int, int, int]:
    if not isinstance(rect, list | tuple) or len(rect) != 4:
        raise ScriptError(f"rect {rect!r} is not [x0, y0, x1, y1]")
    x0, y0, x1, y1 = (int(v) for v in rect)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ScriptError(f"rect {list(rect)} is empty or outside the {width}x{height} image")
    return x0, y0, x1, y1


def stitch(sources: list, rects: list, width: int, height: int):
    """Each source's rect, copied into one buffer; pixels no rect covers stay zero."""
    result = _buffer(width * height * 4)
    for pixels, (x0, y0, x1, y1) in zip(sources, rects, strict=True):
        for row in range(y0, y1):  # Blender's pixel rows run bottom to top, like the rects
            start = (row * width + x0) * 4
            end = (row * width + x1) * 4
            result[start:end] = pixels[start:end]
    return result


def merge(sources: list, weights: list | None = None):
    """The per-pixel mean of the sources, each weighted (by its samples) when given."""
    weights = weights or [1] * len(sources)
    whole = float(sum(weights))
    if numpy is not None:
        total = numpy.zeros(len(sources[0]), dtype=numpy.float64)
        for pixels, weight in zip(sources, weights, strict=True):
            total += numpy.asarray(pixels, dtype=numpy.float64) * (weight / whole)
        return total.astype(numpy.float32)
    total = [0.0] * len(sources[0])
    for pixels, weight in zip(sources, weights, strict=True):
        total = list(map(operator.add, total, map(operator.mul, pixels,
                                                  itertools.repeat(weight / whole))))  # fmt: skip
    return array.array("f", total)


#: Job settings that say how the frame is written (the rest are for the parts' renders).
SCENE_KEYS = ("scene", "engine", "samples", "format", "color_mode", "color_depth")


def _job_scene(
    blend: str, settings: object, mode: str, count: int
) -> tuple[bpy.types.Scene, list | None]:
    """Open the job's scene with its output options; return it and, for a sample split,
    each part's samples (the weights of the merge)."""
    if not isinstance(settings, dict):
        raise ScriptError("'settings' must be a JSON object")
    if not os.path.isfile(blend):
        raise ScriptError(f"no .blend file at {blend}")
    bpy.ops.wm.open_mainfile(filepath=blend)
    override.apply({key: settings[key] for key in SCENE_KEYS if key in settings})
    scene = override.target_scene(settings)
    if scene.render.image_settings.file_format == "OPEN_EXR_MULTILAYER":
        raise ScriptError(
            "a tiled or sample-split frame is one image, not a multilayer EXR with passes: "
            "give --format OPEN_EXR, or render whole frames"
        )
    weights = None
    if mode == "merge":
        total = scene.cycles.samples
        if total < count:
            raise ScriptError(f"{total} samples cannot be split into {count} parts")
        weights = [override.split_share(total, count, i)[0] for i in range(count)]
    return scene, weights


def _writer_scene(file_format: str) -> bpy.types.Scene:
    """A scene whose output settings write pixels as stored: no view transform or look."""
    scene = bpy.data.scenes.new("buildcat-compose")
    view = scene.view_settings
    view.view_transform = "Standard"
    view.look = "None"
    view.exposure = 0.0
    view.gamma = 1.0
    scene.display_settings.display_device = "sRGB"
    settings = scene.render.image_settings
    settings.file_format = file_format
    if file_format == "OPEN_EXR":
        settings.color_mode = "RGBA"
        settings.color_depth = "16"
        settings.exr_codec = "ZIP"
    else:
        settings.color_mode = "RGB"
        settings.color_depth = "8"
        settings.quality = JPEG_QUALITY
    return scene


def _write_as_a_frame(scene: bpy.types.Scene, image: bpy.types.Image, path: str) -> None:
    """Write ``image`` (scene-linear float) as ``scene`` writes a rendered frame: through
    Blender's own render pipeline, so the view transform, look, exposure, dither and the
    format's settings are applied exactly as in a plain render (``Image.save_render`` skips
    the dither). The compositor's only input is the image: Blender renders no 3D scene when
    no Render Layers node asks for it."""
    render = scene.render
    render.resolution_x, render.resolution_y = image.size[0], image.size[1]
    render.resolution_percentage = 100
    render.use_border = False
    render.use_compositing = True
    render.use_sequencer = False
    render.use_file_extension = False  # ``path`` has the extension already
    render.filepath = path
    scene.use_nodes = True
    tree = scene.node_tree
    tree.nodes.clear()
    source = tree.nodes.new("CompositorNodeImage")
    source.image = image
    composite = tree.nodes.new("CompositorNodeComposite")
    composite.use_alpha = True
    tree.links.new(source.outputs["Image"], composite.inputs["Image"])
    result = bpy.ops.render.render(write_still=True, scene=scene.name)
    if "FINISHED" not in result:
        raise ScriptError(f"Blender could not write {path}")


def compose(settings: dict) -> str:
    mode = settings.get("mode")
    if mode not in ("stitch", "merge"):
        raise ScriptError(f"'mode' must be 'stitch' or 'merge', not {mode!r}")
    inputs = settings.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ScriptError("'inputs' must be a non-empty list of image paths")
    if "width" not in settings and "height" not in settings:
        # The size of the first input: parts are always full-frame renders.
        first = bpy.data.images.load(inputs[0], check_existing=False)
        settings = {**settings, "width": first.size[0], "height": first.size[1]}
        bpy.data.images.remove(first)
    try:
        width, height = int(settings["width"]), int(settings["height"])
    except (KeyError, TypeError, ValueError):
        raise ScriptError("'width' and 'height' must be integers") from None
    if width < 1 or height < 1:
        raise ScriptError("'width' and 'height' must be positive")
    output = settings.get("output")
    if not isinstance(output, str) or not os.path.isabs(output):
        raise ScriptError("'output' must be an absolute path")
    blend = settings.get("blend")
    job_scene, weights = None, None
    if blend is not None:
        job_scene, weights = _job_scene(blend, settings.get("settings", {}), mode, len(inputs))
        output = output + job_scene.render.file_extension
    else:
        file_format = settings.get("format", "PNG")
        if file_format not in FORMATS:
            raise ScriptError(f"'format' must be one of {', '.join(FORMATS)}, not {file_format!r}")
    rects = None
    if mode == "stitch" and "fractions" in settings:
        # Rects as fractions of the frame (y = 0 at the bottom), as the farm plans tiles.
        fractions = settings["fractions"]
        if not isinstance(fractions, list) or len(fractions) != len(inputs):
            raise ScriptError("'fractions' must give one [x0, y0, x1, y1] per input")
        settings = {
            **settings,
            "rects": [
                [round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)]
                for x0, y0, x1, y1 in fractions
            ],
        }
    if mode == "stitch":
        rects = settings.get("rects")
        if not isinstance(rects, list) or len(rects) != len(inputs):
            raise ScriptError("'rects' must give one [x0, y0, x1, y1] per input")
        rects = [_check_rect(rect, width, height) for rect in rects]

    loaded = [_load(path, width, height) for path in inputs]
    images = [image for image, _ in loaded]
    sources = [pixels for _, pixels in loaded]
    is_float = images[0].is_float
    if any(image.is_float != is_float for image in images):
        raise ScriptError("inputs mix 8-bit and float images; render them in one format")
    result = merge(sources, weights) if mode == "merge" else stitch(sources, rects, width, height)

    # The result keeps the inputs' kind and colour space, so 8-bit inputs are written back
    # byte for byte; float parts (linear light) are written as the job's scene writes a
    # frame, through its view transform; without a scene, through the Standard view.
    image = bpy.data.images.new("buildcat-result", width, height, alpha=True, float_buffer=is_float)
    image.colorspace_settings.name = images[0].colorspace_settings.name
    image.pixels.foreach_set(result)

    folder, name = os.path.split(output)
    stem, extension = os.path.splitext(name)
    temporary = os.path.join(folder, f".{stem}.tmp-{os.getpid()}{extension}")
    os.makedirs(folder, exist_ok=True)
    try:
        if job_scene is not None:
            _write_as_a_frame(job_scene, image, temporary)
        else:
            image.save_render(temporary, scene=_writer_scene(file_format))
        if not os.path.isfile(temporary):
            raise ScriptError(f"Blender wrote no file for {output}")
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    print(f"buildcat: {mode} of {len(inputs)} images written to {output}", flush=True)
    return output


def main(argv: list[str]) -> None:
    compose(read_settings(argv))


if __name__ == "__main__":
    run(main)
