"""The panel's buttons: Submit, Make Paths Relative, Refresh, Open Dashboard."""

import webbrowser
from typing import Any

import bpy

from . import submitting
from .farm import FarmTrouble


def _refuse(operator: Any, props: Any, exc: Exception) -> set[str]:
    props.message = str(exc)
    operator.report({"ERROR"}, str(exc))
    return {"CANCELLED"}


class BUILDCAT_OT_submit(bpy.types.Operator):
    """Save this file and render it on the farm"""

    bl_idname = "buildcat.submit"
    bl_label = "Submit to Farm"

    def execute(self, context: Any) -> set[str]:
        props = context.scene.buildcat
        try:
            job_id = submitting.submit(context)
        except FarmTrouble as exc:
            return _refuse(self, props, exc)
        self.report({"INFO"}, props.message)
        submitting.follow()
        print(f"buildcat: submitted job {job_id}")
        return {"FINISHED"}


class BUILDCAT_OT_make_paths_relative(bpy.types.Operator):
    """Make the file's paths relative to the .blend (bpy.ops.file.make_paths_relative),
    so the workers find them through their own path to the farm root"""

    bl_idname = "buildcat.make_paths_relative"
    bl_label = "Make Paths Relative"

    def execute(self, context: Any) -> set[str]:
        if not bpy.data.filepath:
            return _refuse(self, context.scene.buildcat, FarmTrouble("save the .blend first"))
        bpy.ops.file.make_paths_relative()
        context.scene.buildcat.message = "paths made relative to the .blend"
        self.report({"INFO"}, context.scene.buildcat.message)
        return {"FINISHED"}


class BUILDCAT_OT_refresh(bpy.types.Operator):
    """Find the farm and read its job types and the submitted job's progress"""

    bl_idname = "buildcat.refresh"
    bl_label = "Refresh"

    def execute(self, context: Any) -> set[str]:
        props = context.scene.buildcat
        try:
            root, _ = submitting.saved_in_root(props)
            found = submitting.connect(props, root)
            submitting.refresh_job_types(props, found)
        except FarmTrouble as exc:
            return _refuse(self, props, exc)
        props.message = f"farm {props.farm_name} at {props.farm_address}"
        if props.job_id and submitting.poll(context.scene):
            submitting.follow()
        return {"FINISHED"}


class BUILDCAT_OT_open_dashboard(bpy.types.Operator):
    """Open the farm's dashboard in the web browser (logged in)"""

    bl_idname = "buildcat.open_dashboard"
    bl_label = "Open Dashboard"

    def execute(self, context: Any) -> set[str]:
        props = context.scene.buildcat
        try:
            root, _ = submitting.saved_in_root(props)
            url = submitting.connect(props, root).dashboard_url()
        except FarmTrouble as exc:
            return _refuse(self, props, exc)
        webbrowser.open(url)
        return {"FINISHED"}


CLASSES = (
    BUILDCAT_OT_submit,
    BUILDCAT_OT_make_paths_relative,
    BUILDCAT_OT_refresh,
    BUILDCAT_OT_open_dashboard,
)
