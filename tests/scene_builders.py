"""Scenes built by Blender for the scene, camera, frame-range and trust tests, and plain
renders of them (no farm) to hold the farm's frames against.

Run inside Blender (``blender -b --factory-startup --python scene_builders.py -- '{json}'``),
the script half builds the files; imported by the tests, the other half runs Blender.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

#: multi.blend: scene 'Alt' is active (frames 20-25, red world, yellow cube, AltCam);
#: scene 'Main' (frames 0-10, blue world: Blender's own range starts at 0 at the lowest,
#: though frames below may be rendered) has a green cube moving along x from frame -5 to
#: 10, a white pillar, cameras CamA (front, the scene's camera) and CamB (side), and a
#: timeline marker at frame -5 that binds CamB. driver.blend: scene 'Driven', a cube whose
#: x scale is a Python driver (3.0 when the file's Python may run, else 1.0).
#: Every scene: Cycles, 2 samples, fixed seed, 32x32, 8-bit RGB PNG output.
MAIN_KEYS = (-5, 10)


def build(out: dict[str, str]) -> None:  # runs inside Blender
    import bmesh
    import bpy

    def material(name: str, rgb: tuple[float, float, float]) -> object:
        mat = bpy.data.materials.new(name)
        mat.use_nodes = True
        nodes = mat.node_tree.nodes
        nodes.clear()
        emission = nodes.new("ShaderNodeEmission")
        emission.inputs[0].default_value = (*rgb, 1)
        output = nodes.new("ShaderNodeOutputMaterial")
        mat.node_tree.links.new(emission.outputs[0], output.inputs[0])
        return mat

    def setup(scene: object, start: int, end: int, world: tuple[float, float, float]) -> None:
        scene.render.engine = "CYCLES"
        scene.cycles.samples = 2
        scene.cycles.device = "CPU"
        scene.cycles.use_denoising = False
        scene.cycles.seed = 1
        scene.render.resolution_x = scene.render.resolution_y = 32
        scene.render.resolution_percentage = 100
        image = scene.render.image_settings
        image.file_format, image.color_mode, image.color_depth = "PNG", "RGB", "8"
        scene.frame_start, scene.frame_end = start, end
        sky = bpy.data.worlds.new(scene.name + "World")
        sky.use_nodes = True
        sky.node_tree.nodes["Background"].inputs[0].default_value = (*world, 1)
        scene.world = sky

    def link(scene: object, name: str, data: object, location: tuple[float, ...]) -> object:
        thing = bpy.data.objects.new(name, data)
        thing.location = location
        scene.collection.objects.link(thing)
        return thing

    def cube(scene: object, name: str, location: tuple[float, ...], rgb: tuple, size=1.0):
        mesh = bpy.data.meshes.new(name)
        shape = bmesh.new()
        bmesh.ops.create_cube(shape, size=size)
        shape.to_mesh(mesh)
        shape.free()
        mesh.materials.append(material(name + "Material", rgb))
        return link(scene, name, mesh, location)

    def camera(scene: object, name: str, location: tuple, rotation: tuple) -> object:
        thing = link(scene, name, bpy.data.cameras.new(name), location)
        thing.rotation_euler = rotation
        return thing

    bpy.ops.wm.read_factory_settings(use_empty=True)
    alt = bpy.data.scenes[0]
    alt.name = "Alt"
    setup(alt, 20, 25, (0.9, 0.1, 0.1))
    main = bpy.data.scenes.new("Main")
    setup(main, 0, 10, (0.1, 0.3, 0.9))
    cube(alt, "AltCube", (0, 0, 0), (1, 1, 0))
    alt.camera = camera(alt, "AltCam", (0, -6, 0), (1.5708, 0, 0))
    mover = cube(main, "Mover", (0, 0, 0), (0.1, 1, 0.1))
    for frame, x in ((MAIN_KEYS[0], -2.5), (MAIN_KEYS[1], 2.5)):
        mover.location.x = x
        mover.keyframe_insert("location", index=0, frame=frame)
    for curve in mover.animation_data.action.fcurves:
        for key in curve.keyframe_points:
            key.interpolation = "LINEAR"
    cube(main, "Pillar", (0, 2, 0), (1, 1, 1), size=0.6)
    main.camera = camera(main, "CamA", (0, -7, 0), (1.5708, 0, 0))
    side = camera(main, "CamB", (7, 0, 2), (1.3, 0, 1.5708))
    main.timeline_markers.new("side", frame=MAIN_KEYS[0]).camera = side
    if bpy.context.window is not None:  # the file's active scene is Alt (it is already
        bpy.context.window.scene = alt  # in the bpy module, which has no window)
    bpy.ops.wm.save_as_mainfile(filepath=out["multi"])

    bpy.ops.wm.read_factory_settings(use_empty=True)
    driven = bpy.data.scenes[0]
    driven.name = "Driven"
    setup(driven, 1, 3, (0.1, 0.1, 0.1))
    box = cube(driven, "Box", (0, 0, 0), (1, 0.5, 0))
    driven.camera = camera(driven, "Cam", (0, -7, 0), (1.5708, 0, 0))
    driver = box.driver_add("scale", 0).driver
    driver.type = "SCRIPTED"
    driver.expression = "__import__('math').sqrt(9.0)"  # not a 'simple expression'
    bpy.ops.wm.save_as_mainfile(filepath=out["driver"])


def build_scenes(folder: Path) -> dict[str, Path]:
    """Build multi.blend and driver.blend in ``folder`` with the oldest Blender here."""
    paths = {"multi": folder / "multi.blend", "driver": folder / "driver.blend"}
    settings = json.dumps({key: str(path) for key, path in paths.items()})
    binary = shutil.which("blender")
    if binary:
        command = [binary, "-b", "--factory-startup", "--python-exit-code", "1",
                   "--python", __file__, "--", settings]  # fmt: skip
    else:
        command = [sys.executable, __file__, settings]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and all(p.is_file() for p in paths.values()), done.stdout[-2000:]
    return paths


#: A plain render of one frame from Python: go to the frame, render, write the still.
_RENDER_FRAME = """
scene.frame_set({frame})
scene.render.filepath = scene.render.frame_path(frame={frame})
bpy.ops.render.render(write_still=True, scene=scene.name)
"""
#: The same in the bpy module, after opening the file and choosing the scene as
#: ``blender -b [-y] FILE [-S SCENE]`` does (the window's scene: a scene that is not the
#: window's renders without its animation in bpy 4.5).
_BPY_PLAIN = """
import sys, json, bpy
job = json.loads(sys.argv[1])
bpy.ops.wm.open_mainfile(filepath=job["blend"], use_scripts=job["autoexec"])
scene = bpy.data.scenes[job["scene"]] if job["scene"] else bpy.context.scene
bpy.context.window.scene = scene
scene.render.filepath = job["output"]
exec(job["python"] + job["render"], {"bpy": bpy, "scene": scene})
sys.stdout.flush()
import os
os._exit(0)  # bpy 4.5 can hang at exit once a file's Python driver has run
"""


def plain_render(
    blender: str,
    blend: Path,
    frame: int,
    out: Path,
    *,
    scene: str | None = None,
    python: str = "",
    autoexec: bool = False,
) -> Path:
    """Render one frame of ``blend`` with Blender alone, as a user would; returns the PNG.

    ``blender`` is the binary's path or ``bpy``; ``python`` runs on the loaded file first
    (``scene`` bound to the scene rendered). The binary takes ``-f N`` for frames >= 0; it
    reads ``-f -2`` as "two before the end" (and a scene's range cannot start below 0), so
    below 0 a Python line goes to the frame and renders it, as the bpy module does."""
    out.mkdir(parents=True, exist_ok=True)
    pattern = str(out / "plain_####")
    if blender == "bpy":
        job = {"blend": str(blend), "scene": scene, "python": python, "output": pattern,
               "autoexec": autoexec, "render": _RENDER_FRAME.format(frame=frame)}  # fmt: skip
        command = [sys.executable, "-c", _BPY_PLAIN, json.dumps(job)]
    else:
        expression = f"import bpy\nscene = bpy.context.scene\n{python}\n"
        if frame < 0:
            expression += (
                f"scene.render.filepath = {pattern!r}\n{_RENDER_FRAME.format(frame=frame)}"
            )
        command = [
            blender, "-b", "-y" if autoexec else "-Y", str(blend),
            *(["-S", scene] if scene else []),
            "--python-exit-code", "1", "--python-expr", expression,
            "-o", pattern, *([] if frame < 0 else ["-f", str(frame)]),
        ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    sign = "-" if frame < 0 else ""
    written = out / f"plain_{sign}{abs(frame):04d}.png"
    assert done.returncode == 0 and written.is_file(), (done.stdout + done.stderr)[-3000:]
    return written


if __name__ == "__main__":  # inside Blender
    arguments = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    build(json.loads(arguments[0]))
