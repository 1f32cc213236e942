# mypy: ignore-errors
"""Runs inside Blender: prints one line describing the open .blend (frame range, scenes).

binary: blender -b FILE --python scene_info.py     bpy: python scene_info.py FILE
"""

import json
import sys

import bpy

if "--" not in sys.argv and len(sys.argv) > 1 and sys.argv[1].endswith(".blend"):
    bpy.ops.wm.open_mainfile(filepath=sys.argv[1])

scene = bpy.context.scene
print(
    "BUILDCAT_SCENE_INFO "
    + json.dumps(
        {
            "scene": scene.name,
            "scenes": [s.name for s in bpy.data.scenes],
            "frame_start": scene.frame_start,
            "frame_end": scene.frame_end,
            "frame_step": scene.frame_step,
            "resolution": [scene.render.resolution_x, scene.render.resolution_y],
            "engine": scene.render.engine,
            "version": bpy.app.version_string,
        }
    ),
    flush=True,
)
