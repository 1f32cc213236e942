"""Scenes with one solid colour a frame, and ffprobe/ffmpeg readings of the videos made of
them, for the preview video and contact sheet tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy

from tests.blender_support import run_in_blender

#: Frame n of the colour scene (1-based) shows COLOURS[(n - 1) % len(COLOURS)]: the world's
#: colour in sRGB, keyed per frame with constant interpolation; nothing else is in view.
COLOURS = [
    (230, 40, 40),
    (40, 200, 60),
    (50, 70, 220),
    (235, 220, 40),
    (40, 210, 220),
    (200, 50, 210),
    (128, 128, 128),
    (250, 250, 250),
]
SIZE = (33, 21)  # odd both ways: the video pads to 34x22
FPS = 12

BUILD_COLOURS = """
import bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.samples = 1
scene.cycles.device = "CPU"
scene.cycles.use_denoising = False
scene.render.resolution_x, scene.render.resolution_y = {size}
scene.render.resolution_percentage = 100
scene.render.fps, scene.render.fps_base = {fps}, 1.0
scene.view_settings.view_transform = "Standard"
scene.view_settings.look = "None"
scene.view_settings.exposure = 0.0
scene.view_settings.gamma = 1.0
scene.render.film_transparent = False
image = scene.render.image_settings
image.file_format, image.color_mode, image.color_depth = "PNG", "RGB", "8"
scene.frame_start, scene.frame_end = 1, {frames}
camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
scene.collection.objects.link(camera)
scene.camera = camera
world = bpy.data.worlds.new("World")
world.use_nodes = True
scene.world = world
background = world.node_tree.nodes["Background"].inputs[0]
def linear(c):
    c = c / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
colours = {colours}
for frame in range(1, {frames} + 1):
    rgb = colours[(frame - 1) % len(colours)]
    background.default_value = (*[linear(c) for c in rgb], 1.0)
    background.keyframe_insert("default_value", frame=frame)
for curve in world.node_tree.animation_data.action.fcurves:
    for point in curve.keyframe_points:
        point.interpolation = "CONSTANT"
bpy.ops.wm.save_as_mainfile(filepath={path!r})
"""


def build_colour_scene(blender: str, path: Path, frames: int = 8) -> Path:
    """A .blend whose frames are solid colours (COLOURS), SIZE pixels, FPS frames a second."""
    path.parent.mkdir(parents=True, exist_ok=True)
    run_in_blender(
        blender,
        BUILD_COLOURS.format(size=SIZE, fps=FPS, frames=frames, colours=COLOURS, path=str(path)),
    )
    return path


def colour_of(frame: int) -> tuple[int, int, int]:
    return COLOURS[(frame - 1) % len(COLOURS)]


def probe(video: Path) -> dict[str, object]:
    """ffprobe's reading of the video stream, every frame decoded and counted."""
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
         "-show_entries",
         "stream=codec_name,pix_fmt,width,height,r_frame_rate,avg_frame_rate,nb_read_frames",
         "-of", "json", str(video)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    [stream] = json.loads(done.stdout)["streams"]
    return dict(stream)


def mean_colours(video: Path, width: int, height: int, crop: tuple[int, int]) -> numpy.ndarray:
    """Each decoded frame's mean RGB over its top-left ``crop`` (the picture, not the
    padding), decoded by ffmpeg to rgb24: one row per frame, in the video's order."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(video), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    frames = numpy.frombuffer(raw, numpy.uint8).reshape(-1, height, width, 3)
    picture = frames[:, : crop[1], : crop[0]].astype(float)
    return picture.reshape(len(frames), -1, 3).mean(axis=1)
