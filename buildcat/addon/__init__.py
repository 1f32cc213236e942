"""Buildcat's Blender add-on: a Farm panel in the Render properties that submits the open
file to a buildcat render farm and follows the job.

A legacy add-on for Blender 3.x (``bl_info``) and an extension for 4.2+
(``blender_manifest.toml``), the same files. It speaks the farm's JSON HTTP API with the
standard library only and never imports buildcat: Blender's Python has none of its
dependencies. Install it with ``farm addon install`` or ``farm addon zip``.
"""

import bpy

from . import operators, panel, properties

bl_info = {
    "name": "Buildcat Farm",
    "author": "buildcat",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "Properties > Render > Farm",
    "description": "Submit the open file to a buildcat render farm and follow the job",
    "doc_url": "https://github.com/buildcat/buildcat/blob/main/docs/addon.md",
    "category": "Render",
}

CLASSES = (*operators.CLASSES, *panel.CLASSES)


def register() -> None:
    properties.register()
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
    properties.unregister()
