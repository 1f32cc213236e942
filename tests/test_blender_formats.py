"""A frame is written as the scene's own output settings say, unless an option changes them:
multilayer EXR with its passes, RGBA 16-bit PNG with its alpha, JPEG quality; options that
change only what they name; output patterns with an extension; tiles in the scene's format.
Every frame is held against a plain render of the same file by the same Blender."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy
import OpenEXR
import pytest
from PIL import Image

from buildcat.blender import BPY
from tests.blender_support import BINARY, BOTH_BLENDERS, needs_binary, run_in_blender
from tests.conftest import Farm

#: A small Cycles scene: a plane, a sphere, a sun and a camera; ``{setup}`` sets the output.
SCENE = """
import bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = 4
scene.cycles.use_denoising = False
scene.render.resolution_x, scene.render.resolution_y = 32, 24
scene.render.resolution_percentage = 100
bpy.ops.mesh.primitive_plane_add(size=4)
bpy.ops.mesh.primitive_uv_sphere_add(radius=0.8, location=(0, 0, 0.8))
bpy.ops.object.light_add(type="SUN", location=(1, -1, 4))
bpy.ops.object.camera_add(location=(0, -7, 3), rotation=(1.2, 0, 0))
scene.camera = bpy.context.object
scene.world = bpy.data.worlds.new("sky")
scene.world.color = (0.2, 0.25, 0.3)
image = scene.render.image_settings
{setup}
bpy.ops.wm.save_as_mainfile(filepath={path!r})
"""

MULTILAYER = """
image.file_format = "OPEN_EXR_MULTILAYER"
image.color_depth = "32"
image.exr_codec = "ZIP"
layer = scene.view_layers[0]
layer.use_pass_normal = True
layer.use_pass_z = True
"""
TRANSPARENT_PNG16 = """
scene.render.film_transparent = True
image.file_format = "PNG"
image.color_mode = "RGBA"
image.color_depth = "16"
"""
JPEG_30 = """
image.file_format = "JPEG"
image.color_mode = "RGB"
image.quality = 30
"""
MOVIE = """
image.file_format = "FFMPEG"
"""


def build_scene(blender: str, path: Path, setup: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    run_in_blender(blender, SCENE.format(setup=setup, path=str(path)))
    return path


def plain_render(blender: str, scene: Path, frame: int, pattern: Path) -> Path:
    """``blender -b FILE -o PATTERN -f N`` (or its bpy equivalent); the file it wrote."""
    if blender == BPY:
        run_in_blender(
            BPY,
            "import bpy\n"
            f"bpy.ops.wm.open_mainfile(filepath={str(scene)!r})\n"
            "scene = bpy.context.scene\n"
            f"scene.frame_start = scene.frame_end = {frame}\n"
            f"scene.render.filepath = {str(pattern)!r}\n"
            "bpy.ops.render.render(animation=True)\n",
        )
    else:
        command = [blender, "-b", str(scene), "-o", str(pattern), "-f", str(frame)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stdout[-2000:]
    [written] = pattern.parent.glob(f"{pattern.name.replace('####', f'{frame:04d}')}.*")
    return written


def exr_channels(path: Path) -> dict[str, numpy.ndarray]:
    return dict(
        (name, channel.pixels)
        for name, channel in OpenEXR.File(str(path), separate_channels=True).channels().items()
    )


#: The raw samples ffmpeg decodes a PNG to, by (colour type, bit depth), big-endian.
_RAW_FORMATS = {
    (0, 8): "gray", (0, 16): "gray16be", (2, 8): "rgb24", (2, 16): "rgb48be",
    (4, 8): "ya8", (4, 16): "ya16be", (6, 8): "rgba", (6, 16): "rgba64be",
}  # fmt: skip


def png_pixels(path: Path) -> tuple[int, int, numpy.ndarray]:
    """Bit depth, colour type and the samples (8- or 16-bit) of a PNG, decoded by ffmpeg:
    Pillow turns 16-bit RGBA into 8-bit."""
    data = path.read_bytes()
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo",
         "-pix_fmt", _RAW_FORMATS[colour, depth], "-"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    samples = numpy.frombuffer(raw, dtype=">u2" if depth == 16 else numpy.uint8)
    return depth, colour, samples.reshape(height, width, channels).astype(numpy.int64)


def _farm_with(farm: Farm, blender: str) -> None:
    farm.start_worker("--blender", blender)
    farm.wait_workers(1)


@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_a_multilayer_exr_scene_is_written_with_its_passes(farm: Farm, blender: str) -> None:
    scene = build_scene(blender, farm.root / "shots" / "layers.blend", MULTILAYER)
    _farm_with(farm, blender)
    job = farm.client().render("shots/layers.blend", "1", output="out/f_####")
    job.wait(timeout=300)
    assert job.results()[0]["outputs"] == ["out/f_0001.exr"]
    farm_frame = exr_channels(farm.root / "out" / "f_0001.exr")
    plain = exr_channels(plain_render(blender, scene, 1, farm.root / "plain" / "f_####"))
    assert set(farm_frame) == set(plain)
    assert any(name.endswith("Normal.X") for name in plain), sorted(plain)
    assert any(name.endswith(".Z") for name in plain), sorted(plain)
    for name, pixels in plain.items():
        assert farm_frame[name].dtype == pixels.dtype == numpy.float32, name
        assert numpy.array_equal(farm_frame[name], pixels), name


@needs_binary
def test_a_blender_started_per_task_writes_the_scenes_format_too(
    farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # BUILDCAT_BLENDER_WARM=0: blender -b FILE --python override.py -o ... -f N, no -F.
    monkeypatch.setenv("BUILDCAT_BLENDER_WARM", "0")
    blender = BINARY or "blender"
    scene = build_scene(blender, farm.root / "shots" / "layers.blend", MULTILAYER)
    _farm_with(farm, blender)
    job = farm.client().render("shots/layers.blend", "1", output="out/f_####")
    job.wait(timeout=300)
    assert job.results()[0]["outputs"] == ["out/f_0001.exr"]
    farm_frame = exr_channels(farm.root / "out" / "f_0001.exr")
    plain = exr_channels(plain_render(blender, scene, 1, farm.root / "plain" / "f_####"))
    assert set(farm_frame) == set(plain)
    assert all(numpy.array_equal(farm_frame[name], pixels) for name, pixels in plain.items())


@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_png_rgba_16_and_jpeg_quality_are_the_scenes_and_depth_alone_changes(
    farm: Farm, blender: str
) -> None:
    png_scene = build_scene(blender, farm.root / "shots" / "clear.blend", TRANSPARENT_PNG16)
    jpeg_scene = build_scene(blender, farm.root / "shots" / "jpeg.blend", JPEG_30)
    _farm_with(farm, blender)
    client = farm.client()
    png = client.render("shots/clear.blend", "1", output="png/f_####")
    jpeg = client.render("shots/jpeg.blend", "1", output="jpeg/f_####")
    eight = client.render("shots/clear.blend", "1", output="eight/f_####", color_depth=8)
    for job in (png, jpeg, eight):
        job.wait(timeout=300)

    depth, colour, pixels = png_pixels(farm.root / "png" / "f_0001.png")
    plain_depth, plain_colour, plain = png_pixels(
        plain_render(blender, png_scene, 1, farm.root / "plain" / "png_####")
    )
    assert (depth, colour) == (plain_depth, plain_colour) == (16, 6)  # 16-bit RGBA
    assert (pixels[..., 3] == 0).mean() > 0.2  # the sky is transparent, as in the plain one
    assert numpy.array_equal(pixels, plain)

    assert jpeg.results()[0]["outputs"] == ["jpeg/f_0001.jpg"]
    farm_jpeg = Image.open(farm.root / "jpeg" / "f_0001.jpg")
    plain_jpeg = Image.open(plain_render(blender, jpeg_scene, 1, farm.root / "plain" / "jpg_####"))
    assert farm_jpeg.quantization == plain_jpeg.quantization  # quality 30's tables
    assert numpy.array_equal(numpy.asarray(farm_jpeg), numpy.asarray(plain_jpeg))

    # --color-depth 8: still RGBA with its alpha, only 8 bits a channel.
    depth, colour, pixels = png_pixels(farm.root / "eight" / "f_0001.png")
    assert (depth, colour) == (8, 6)
    assert numpy.abs(pixels - plain / 257).max() <= 2  # dithered to 8 bits


@needs_binary
def test_output_options_are_checked_at_submit_against_the_scene(farm: Farm) -> None:
    blender = BINARY or "blender"
    build_scene(blender, farm.root / "shots" / "clear.blend", TRANSPARENT_PNG16)
    build_scene(blender, farm.root / "shots" / "jpeg.blend", JPEG_30)
    build_scene(blender, farm.root / "shots" / "layers.blend", MULTILAYER)
    build_scene(blender, farm.root / "shots" / "movie.blend", MOVIE)
    refusals = {
        ("shots/clear.blend", "--color-depth", "32"): "PNG (the scene's format) has no colour "
        "depth 32: use 8 or 16",
        ("shots/clear.blend", "--format", "JPEG", "--color-mode", "RGBA"): "JPEG has no colour "
        "mode RGBA: use BW or RGB",
        ("shots/jpeg.blend", "--output", "a/f_####.png"): "ends in .png but the scene writes JPEG",
        ("shots/clear.blend", "--format", "JPEG", "--output", "a/f_####.png"): "ends in .png but "
        "JPEG writes .jpg",
        ("shots/movie.blend",): "writes a movie (FFMPEG): render frames",
        ("shots/layers.blend", "--tiles", "2x2"): "not a multilayer EXR",
        ("shots/clear.blend", "--format", "open_exr_multilayer", "--sample-split", "2"): "not a "
        "multilayer EXR",
    }
    for options, reason in refusals.items():
        done = farm.cli("submit", "blender", *options, "--frames", "1")
        assert done.returncode != 0, options
        assert reason in done.stderr, (options, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert farm.client().jobs() == []  # nothing was queued


@needs_binary
def test_an_output_pattern_with_the_formats_extension_renders_once(farm: Farm) -> None:
    blender = BINARY or "blender"
    build_scene(blender, farm.root / "shots" / "clear.blend", TRANSPARENT_PNG16)
    _farm_with(farm, blender)
    job = farm.client().render("shots/clear.blend", "1", output="shots/a_####.png")
    job.wait(timeout=300)
    assert job.results()[0]["outputs"] == ["shots/a_0001.png"]
    assert [task["attempts"] for task in job.tasks()] == [1]
    assert png_pixels(farm.root / "shots" / "a_0001.png")[:2] == (16, 6)


@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_tiles_are_stitched_in_the_scenes_format(farm: Farm, blender: str) -> None:
    scene = build_scene(blender, farm.root / "shots" / "clear.blend", TRANSPARENT_PNG16)
    _farm_with(farm, blender)
    job = farm.client().render("shots/clear.blend", "1", output="tiled/f_####", tiles=(2, 2))
    job.wait(timeout=300)
    assert job.results()[-1]["outputs"] == ["tiled/f_0001.png"]
    depth, colour, pixels = png_pixels(farm.root / "tiled" / "f_0001.png")
    _, _, plain = png_pixels(plain_render(blender, scene, 1, farm.root / "plain" / "f_####"))
    assert (depth, colour) == (16, 6)
    # The tiles are float EXR renders of the same samples; the stitch writes them as the
    # render pipeline writes a frame (view transform, alpha, 16-bit): the plain frame.
    assert numpy.array_equal(pixels, plain), numpy.abs(pixels - plain).max()
    assert not [p for p in (farm.root / "tiled").rglob("*") if p.is_file() and "tile" in p.name]
