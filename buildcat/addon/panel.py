"""The Farm panel in the Render properties, and its sub-panel of job-type settings."""

from typing import Any

import bpy

from . import farm, submitting


class BUILDCAT_PT_farm(bpy.types.Panel):
    bl_label = "Farm"
    bl_idname = "BUILDCAT_PT_farm"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"

    def draw(self, context: Any) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        props = context.scene.buildcat
        row = layout.row(align=True)
        row.prop(props, "host")
        row.operator("buildcat.refresh", text="", icon="FILE_REFRESH")
        layout.prop(props, "root")
        if props.farm_name:
            layout.label(text=f"{props.farm_name} at {props.farm_address}", icon="LINKED")
        layout.prop(props, "job_type")
        declared = (
            set(props.declared.split(","))
            if props.declared
            else {"frames", "chunk", "output", "preview_video"}
        )
        if "frames" in declared:
            layout.prop(props, "use_scene_frames")
            row = layout.row()
            row.enabled = not props.use_scene_frames
            if props.use_scene_frames:
                row.label(text=f"Frames  {submitting.scene_frames(context.scene)}")
            else:
                row.prop(props, "frames")
        if "chunk" in declared:
            layout.prop(props, "chunk")
        if "output" in declared:
            layout.prop(props, "use_scene_output")
            if not props.use_scene_output:
                layout.prop(props, "output")
        layout.prop(props, "priority")
        layout.prop(props, "requires")
        if "preview_video" in declared:
            layout.prop(props, "preview_video")
        row = layout.row(align=True)
        row.scale_y = 1.4
        row.operator("buildcat.submit", icon="RENDER_ANIMATION")
        layout.operator("buildcat.make_paths_relative", icon="FILE_FOLDER")
        if props.message:
            layout.label(text=props.message, icon="INFO")
        if props.job_id:
            box = layout.box()
            box.label(
                text=f"Job {props.job_id}: {props.job_state}", icon=_state_icon(props.job_state)
            )
            box.prop(props, "job_progress", slider=True)
            if props.job_frames:
                box.label(text=f"Frames written: {props.job_frames}")
            if props.job_error:
                box.label(text=props.job_error, icon="ERROR")
            box.operator("buildcat.open_dashboard", icon="URL")


def _state_icon(state: str) -> str:
    if state == "done":
        return "CHECKMARK"
    if state in farm.FINAL_STATES:
        return "ERROR"
    return "TIME"


class BUILDCAT_PT_job_settings(bpy.types.Panel):
    bl_label = "Job Type Settings"
    bl_idname = "BUILDCAT_PT_job_settings"
    bl_parent_id = "BUILDCAT_PT_farm"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: Any) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        props = context.scene.buildcat
        if not props.settings:
            layout.label(text="Refresh to read the job type's settings", icon="FILE_REFRESH")
        for item in props.settings:
            if item.kind == "bool":
                layout.prop(item, "flag", text=item.label)
            elif item.kind == "choice":
                layout.prop(item, "choice", text=item.label)
            else:
                layout.prop(item, "text", text=item.label)


CLASSES = (BUILDCAT_PT_farm, BUILDCAT_PT_job_settings)
