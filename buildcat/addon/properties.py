"""The panel's settings: one PropertyGroup on the scene (``scene.buildcat``), and the
fields of the chosen job type's own settings, built from the farm's declaration.

No ``from __future__ import annotations`` here: Blender reads these class annotations
as property definitions, which must stay objects, not strings.
"""

from typing import Any

import bpy

#: What the farm last said of its job types (GET /api/v1/job-types); ``render`` until then.
JOB_TYPES: list[dict[str, Any]] = [
    {"name": "render", "label": "Blender render", "description": "Render this .blend"}
]
#: Settings the panel's own fields give (scene: the saved file); not repeated below.
PANEL_SETTINGS = ("scene", "frames", "chunk", "output", "preview_video")
#: Shown for a choice left to the job type's default.
DEFAULT_CHOICE = "__default__"

# Blender keeps only pointers to the strings of dynamic enum items: keep them alive here.
_ENUM_ITEMS: dict[Any, list[tuple[str, str, str]]] = {}


def _job_type_items(self: Any, context: Any) -> list[tuple[str, str, str]]:
    items = [
        (
            str(entry["name"]),
            str(entry.get("label") or entry["name"]),
            str(entry.get("description") or ""),
        )
        for entry in JOB_TYPES
        if "error" not in entry
    ]
    return _ENUM_ITEMS.setdefault(("job-types", tuple(items)), items)


def _choice_items(self: Any, context: Any) -> list[tuple[str, str, str]]:
    choices = [c for c in self.choices.split("\n") if c]
    items = [(DEFAULT_CHOICE, "Default", "The job type's default")]
    items += [(choice, choice, "") for choice in choices]
    return _ENUM_ITEMS.setdefault(("choices", tuple(choices)), items)


def declaration(name: str) -> dict[str, Any] | None:
    return next((entry for entry in JOB_TYPES if entry.get("name") == name), None)


def build_fields(props: Any) -> None:
    """The job type's own settings as fields (``props.settings``), values kept by name."""
    entry = declaration(props.job_type) or {}
    declared = entry.get("settings") or []
    kept = {item.name: (item.text, item.flag, item.choice) for item in props.settings}
    props.settings.clear()
    props.declared = ",".join(str(s["name"]) for s in declared)
    for setting in declared:
        if setting["name"] in PANEL_SETTINGS:
            continue
        item = props.settings.add()
        item.name = str(setting["name"])
        item.label = str(setting.get("label") or setting["name"]).replace("_", " ").capitalize()
        item.kind = str(setting.get("type") or "str")
        item.help = str(setting.get("help") or "")
        item.required = bool(setting.get("required"))
        item.choices = "\n".join(str(c) for c in setting.get("choices") or [])
        default = setting.get("default")
        if item.kind == "bool":
            item.flag = bool(default)
        elif item.kind == "choice":
            item.choice = str(default) if default is not None else DEFAULT_CHOICE
        elif default is not None:
            item.text = str(default)
        if item.name in kept:
            text, flag, choice = kept[item.name]
            item.text, item.flag = text, flag
            if item.kind == "choice" and (
                choice == DEFAULT_CHOICE or choice in item.choices.split("\n")
            ):
                item.choice = choice


def _job_type_changed(self: Any, context: Any) -> None:
    build_fields(self)


class BUILDCAT_PG_setting(bpy.types.PropertyGroup):
    """One setting of a job type (``name`` is the setting's)."""

    label: bpy.props.StringProperty(name="Label")
    kind: bpy.props.StringProperty(name="Type", default="str")
    help: bpy.props.StringProperty(name="Help")
    required: bpy.props.BoolProperty(name="Required")
    choices: bpy.props.StringProperty(name="Choices")
    text: bpy.props.StringProperty(name="Value", description="Empty: the job type's default")
    flag: bpy.props.BoolProperty(name="Value")
    choice: bpy.props.EnumProperty(name="Value", items=_choice_items)


class BUILDCAT_PG_farm(bpy.types.PropertyGroup):
    """What the Farm panel submits, and the last submitted job's progress."""

    host: bpy.props.StringProperty(
        name="Farm",
        description="host:port of the farm server; empty: found through the farm root "
        "(FARM_HOST, else the server's record in <root>/.buildcat/server.json)",
    )
    root: bpy.props.StringProperty(
        name="Farm root",
        subtype="DIR_PATH",
        description="This machine's path to the farm root; empty: BUILDCAT_ROOT, else the "
        "folder above this .blend that holds .buildcat/",
    )
    job_type: bpy.props.EnumProperty(
        name="Job type", items=_job_type_items, update=_job_type_changed
    )
    declared: bpy.props.StringProperty(name="Declared settings")
    use_scene_frames: bpy.props.BoolProperty(
        name="Scene's frames", default=True, description="Render the scene's frame range"
    )
    frames: bpy.props.StringProperty(
        name="Frames", default="1-250", description="Frames: 1-240, 1,7,10-25, 75-100:2"
    )
    chunk: bpy.props.IntProperty(name="Chunk", default=1, min=1, description="Frames per task")
    use_scene_output: bpy.props.BoolProperty(
        name="Scene's output",
        default=True,
        description="Write frames where the scene's output path says (when it lies under "
        "the farm root; else renders/<file>/frame_####)",
    )
    output: bpy.props.StringProperty(
        name="Output",
        description="Output path relative to the farm root, # for frame digits",
    )
    priority: bpy.props.IntProperty(
        name="Priority", default=0, min=-1000000, max=1000000, description="Higher goes first"
    )
    requires: bpy.props.StringProperty(
        name="Requires",
        description="Tags and requirements a worker must have, comma-separated: gpu, blender>=4.5",
    )
    preview_video: bpy.props.BoolProperty(
        name="Preview video", description="End with preview.mp4 of the frames, beside them"
    )
    settings: bpy.props.CollectionProperty(type=BUILDCAT_PG_setting)

    farm_name: bpy.props.StringProperty(name="Farm name")
    farm_address: bpy.props.StringProperty(name="Farm address")
    message: bpy.props.StringProperty(name="Message")
    job_id: bpy.props.StringProperty(name="Job")
    job_state: bpy.props.StringProperty(name="State")
    job_progress: bpy.props.FloatProperty(
        name="Progress", subtype="FACTOR", min=0.0, max=1.0, precision=2
    )
    job_frames: bpy.props.StringProperty(name="Frames done")
    job_error: bpy.props.StringProperty(name="Error")


CLASSES = (BUILDCAT_PG_setting, BUILDCAT_PG_farm)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.buildcat = bpy.props.PointerProperty(type=BUILDCAT_PG_farm)


def unregister() -> None:
    del bpy.types.Scene.buildcat
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
