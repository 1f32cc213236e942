# mypy: ignore-errors
"""Build a small animated Cycles scene from nothing and save it as a .blend (runs inside Blender).

``blender -b --factory-startup --python-exit-code 1 --python demo_scene.py -- '{json}'`` or
``python demo_scene.py '{json}'`` with the bpy module. JSON keys: ``output`` (absolute .blend
path), ``frames`` (24), ``resolution`` ([64, 64]), ``samples`` (16), ``denoise`` (false).
"""

from __future__ import annotations

import math
import os
import sys

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mathutils import Vector
from script_support import ScriptError, read_settings, run


def _material(name: str, rgb: tuple[float, float, float]) -> bpy.types.Material:
    material = bpy.data.materials.new(name)
    material.diffuse_color = (*rgb, 1.0)
    material.use_nodes = True
    bsdf = material.node_tree.nodes.get("Principled BSDF")
    if bsdf is not None:
        bsdf.inputs["Base Color"].default_value = (*rgb, 1.0)
        bsdf.inputs["Roughness"].default_value = 0.5
    return material


def _add(kind: str, name: str, rgb: tuple[float, float, float], **kwargs) -> bpy.types.Object:
    getattr(bpy.ops.mesh, f"primitive_{kind}_add")(**kwargs)
    obj = bpy.context.active_object
    obj.name = name
    obj.data.materials.append(_material(name, rgb))
    return obj


def _look_at(obj: bpy.types.Object, target: tuple[float, float, float]) -> None:
    direction = Vector(target) - obj.location
    obj.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()


def build(
    output: str, frames: int, resolution: tuple[int, int], samples: int, denoise: bool
) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.name = "Scene"

    _add("plane", "Ground", (0.55, 0.55, 0.5), size=12.0, location=(0, 0, 0))
    _add("uv_sphere", "Sphere", (0.1, 0.3, 0.9), radius=0.7, location=(-1.6, 0.6, 0.7))
    _add("cylinder", "Pillar", (0.1, 0.7, 0.2), radius=0.4, depth=1.6, location=(1.6, 1.0, 0.8))
    mover = _add("cube", "Mover", (0.9, 0.25, 0.1), size=0.9, location=(-1.5, -1.2, 0.45))

    # The mover crosses the frame while turning, so every frame differs visibly.
    last = max(frames, 2)
    scene.frame_set(1)
    mover.keyframe_insert("location", frame=1)
    mover.keyframe_insert("rotation_euler", frame=1)
    mover.location = (1.5, -1.2, 0.45)
    mover.rotation_euler = (0.0, 0.0, math.radians(180))
    mover.keyframe_insert("location", frame=last)
    mover.keyframe_insert("rotation_euler", frame=last)

    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (math.radians(40), math.radians(10), math.radians(30))
    scene.collection.objects.link(sun)

    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    camera.location = (0.0, -7.0, 4.0)
    _look_at(camera, (0.0, 0.0, 0.5))
    scene.collection.objects.link(camera)
    scene.camera = camera

    world = bpy.data.worlds.new("World")
    world.color = (0.3, 0.35, 0.45)
    world.use_nodes = True
    background = world.node_tree.nodes.get("Background")
    if background is not None:
        background.inputs["Color"].default_value = (0.3, 0.35, 0.45, 1.0)
    scene.world = world

    render = scene.render
    render.engine = "CYCLES"
    render.resolution_x, render.resolution_y = resolution
    render.resolution_percentage = 100
    render.film_transparent = False
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGB"
    render.image_settings.color_depth = "8"
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.frame_start = 1
    scene.frame_end = frames
    scene.frame_set(1)

    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.samples = samples
    cycles.use_adaptive_sampling = False
    cycles.use_denoising = denoise
    cycles.seed = 0
    cycles.use_animated_seed = False
    cycles.max_bounces = 4

    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=output, compress=False)
    print(f"buildcat: saved demo scene {output} ({frames} frames, {resolution[0]}x{resolution[1]})")


def main(argv: list[str]) -> None:
    settings = read_settings(argv)
    output = settings.get("output")
    if not isinstance(output, str) or not os.path.isabs(output):
        raise ScriptError("'output' must be an absolute .blend path")
    frames = int(settings.get("frames", 24))
    width, height = (int(v) for v in settings.get("resolution", (64, 64)))
    samples = int(settings.get("samples", 16))
    if frames < 1 or width < 1 or height < 1 or samples < 1:
        raise ScriptError("'frames', 'resolution' and 'samples' must be positive")
    build(output, frames, (width, height), samples, bool(settings.get("denoise", False)))


if __name__ == "__main__":
    run(main)
