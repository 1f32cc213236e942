# mypy: ignore-errors
"""Runs inside Blender: prints one line describing the open .blend (its scenes, frame
ranges, cameras, output settings, the active scene). buildcat/blender/blendfile.py reads
it where blender-asset-tracer cannot read the file.

binary: blender -b FILE --python scene_info.py     bpy: python scene_info.py FILE
"""

import json
import sys

import bpy

if "--" not in sys.argv and len(sys.argv) > 1 and sys.argv[1].endswith(".blend"):
    bpy.ops.wm.open_mainfile(filepath=sys.argv[1])


def describe(scene):
    image = scene.render.image_settings
    return {
        "name": scene.name,
        "frame_start": scene.frame_start,
        "frame_end": scene.frame_end,
        "frame_step": scene.frame_step,
        "resolution": [scene.render.resolution_x, scene.render.resolution_y],
        "resolution_percentage": scene.render.resolution_percentage,
        "fps": scene.render.fps,
        "fps_base": scene.render.fps_base,
        "camera": scene.camera.name if scene.camera else None,
        "cameras": sorted(o.name for o in scene.objects if o.type == "CAMERA"),
        "output": {
            "file_format": image.file_format,
            "color_mode": image.color_mode,
            "color_depth": image.color_depth or "8",
            "exr_codec": image.exr_codec,
            "quality": image.quality,
        },
    }


scene = bpy.context.scene
print(
    "BUILDCAT_SCENE_INFO "
    + json.dumps(
        {
            "scene": scene.name,
            "scenes": [describe(s) for s in bpy.data.scenes],
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
