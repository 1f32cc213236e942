"""Bake a simulation, then render it.

Copy this file to <root>/jobtypes/ and submit it:

    farm submit bake_then_render --set scene=shots/smoke.blend --set frames=1-120

One Blender task bakes every point cache of the scene (cloth, particles, smoke) and saves
the .blend with the bake in it; the render tasks, a chunk of frames each, wait for it, so
every worker renders the same baked simulation.
"""

from buildcat.jobtypes import Setting

LABEL = "Simulation bake, then render"

SETTINGS = [
    Setting("scene", "path", required=True, help="The .blend with the simulation."),
    Setting("frames", "frames", default="1-250", help="Frames to render."),
    Setting("chunk", "int", default=10, minimum=1, help="Frames per render task."),
    Setting("blender", "str", default="blender", help="The Blender the bake runs on workers."),
]

#: Runs inside Blender: bake every cache, keep it in the file, and say so in the task log.
BAKE = (
    "import bpy; bpy.ops.ptcache.bake_all(bake=True); bpy.ops.wm.save_mainfile(); "
    "print('baked', bpy.data.filepath)"
)


def compile(settings, job):
    bake = job.command(
        [settings.blender, "-b", f"$ROOT/{settings.scene}", "--python-exit-code", "1",
         "--python-expr", BAKE],
        frames=[1],
    )  # fmt: skip
    job.render(settings.scene, settings.frames, chunk=settings.chunk, depends=[bake])
    job.name = f"bake + render {settings.scene} {settings.frames}"
