"""What the Submit button does: check the file as ``farm check`` would (with bpy), save it,
have the server plan the job type's tasks, submit them, and follow the job's progress."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any

import bpy

from . import farm, properties
from .farm import FarmTrouble

#: The data blocks whose files a render reads, as ``farm check`` lists them.
FILE_BLOCKS = ("images", "libraries", "movieclips", "sounds", "fonts", "cache_files", "volumes")
_DIGITS = re.compile(r"\d+(?=\D*$)")
#: Seconds between two looks at the submitted job.
POLL_SECONDS = 1.0


def saved_in_root(props: Any) -> tuple[Path, str]:
    """The farm root and the saved .blend relative to it; FarmTrouble when the file is
    unsaved, no root is found, or the file lies outside the root."""
    path = bpy.data.filepath
    if not path:
        raise FarmTrouble(
            "save the .blend under the farm root first: the farm renders the saved file"
        )
    root = farm.find_root(path, bpy.path.abspath(props.root) if props.root else "")
    if root is None:
        raise FarmTrouble(
            f"no farm root above {path}: save the file under the farm root (the folder "
            "holding .buildcat/), or set the farm root in the panel"
        )
    relative = farm.relative_in_root(root, path)
    if relative is None:
        raise FarmTrouble(
            f"{path} lies outside the farm root {root}: save it under the root so the "
            "workers can open it"
        )
    return root, relative


def _exists(path: str, sequence: bool) -> bool:
    if os.path.exists(path):
        return True
    if not sequence:
        return False
    folder, name = os.path.split(path)
    pattern = _DIGITS.sub("*", name.replace("<UDIM>", "*").replace("<UVTILE>", "*"))
    return os.path.isdir(folder) and bool(glob.glob(os.path.join(glob.escape(folder), pattern)))


def asset_problems(root: Path) -> list[str]:
    """Every file the scene uses that is missing or lies outside the root, as
    ``PATH (missing, image NAME)``: what ``farm check`` refuses."""
    problems = []
    seen = set()
    for collection in FILE_BLOCKS:
        for block in getattr(bpy.data, collection, ()):
            written = getattr(block, "filepath", "")
            if not written or written.startswith("<"):  # Blender's built-in font
                continue
            if getattr(block, "packed_file", None) is not None:
                continue
            if collection == "images" and block.source not in (
                "FILE",
                "SEQUENCE",
                "TILED",
                "MOVIE",
            ):
                continue
            library = getattr(block, "library", None)
            resolved = os.path.normpath(bpy.path.abspath(written, library=library))
            if (written, resolved) in seen:
                continue
            seen.add((written, resolved))
            kind = collection.rstrip("s").replace("librarie", "library").replace("_", " ")
            sequence = collection == "images" and block.source in ("SEQUENCE", "TILED")
            if not _exists(resolved, sequence):
                problems.append(f"{written} (missing, {kind} {block.name})")
            elif farm.relative_in_root(root, resolved) is None:
                problems.append(f"{written} (outside the root, {kind} {block.name})")
    return problems


def scene_frames(scene: Any) -> str:
    step = f":{scene.frame_step}" if scene.frame_step > 1 else ""
    return f"{scene.frame_start}-{scene.frame_end}{step}"


def scene_output(scene: Any, root: Path) -> str | None:
    """The scene's output path relative to the root, ``#`` for frame digits; None where it
    lies outside the root (the farm's default then: renders/<file>/frame_####)."""
    written = scene.render.filepath
    if not written:
        return None
    absolute = bpy.path.abspath(written)
    relative = farm.relative_in_root(root, absolute)
    if relative is None or relative in ("", "."):
        return None
    if absolute.endswith(("/", os.sep)):  # a folder: Blender names the frames 0001...
        relative += "/####"
    return relative


def _value(item: Any) -> Any:
    """A field's value as the job type takes it; None: left to its default."""
    if item.kind == "bool":
        return bool(item.flag)
    if item.kind == "choice":
        return None if item.choice == properties.DEFAULT_CHOICE else item.choice
    text = item.text.strip()
    if not text:
        return None
    if item.kind == "int":
        try:
            return int(text)
        except ValueError:
            raise FarmTrouble(f"{item.label}: {text!r} is not a whole number") from None
    if item.kind == "float":
        try:
            return float(text)
        except ValueError:
            raise FarmTrouble(f"{item.label}: {text!r} is not a number") from None
    return text


def job_settings(props: Any, scene: Any, root: Path, relative: str) -> dict[str, Any]:
    """The settings to plan with: the panel's own fields for the names the job type
    declares, then its own fields."""
    declared = set(filter(None, props.declared.split(",")))
    common: dict[str, Any] = {
        "scene": relative,
        "frames": scene_frames(scene) if props.use_scene_frames else props.frames.strip(),
        "chunk": props.chunk,
        "output": scene_output(scene, root) if props.use_scene_output else props.output.strip(),
        "preview_video": bool(props.preview_video),
    }
    values = {name: value for name, value in common.items() if name in declared}
    for item in props.settings:
        value = _value(item)
        if value is not None:
            values[item.name] = value
    if "scene_name" in declared and "scene_name" not in values and len(bpy.data.scenes) > 1:
        values["scene_name"] = scene.name  # the scene the artist is looking at
    return {name: value for name, value in values.items() if value not in (None, "")}


def connect(props: Any, root: Path) -> farm.Farm:
    found = farm.locate(root, props.host)
    info = found.ping()
    props.farm_name = str(info.get("name", ""))
    props.farm_address = found.address
    return found


def refresh_job_types(props: Any, found: farm.Farm) -> None:
    """The farm's job types into the panel (its enum and its fields)."""
    listing = found.job_types()
    properties.JOB_TYPES[:] = listing
    names = [entry["name"] for entry in listing if "error" not in entry]
    if props.job_type not in names and names:
        props.job_type = names[0]
    properties.build_fields(props)


def submit(context: Any) -> str:
    """Check, save, plan and submit the open file; the job's id. FarmTrouble (one line)
    for anything the artist must fix; nothing is submitted then."""
    scene = context.scene
    props = scene.buildcat
    root, relative = saved_in_root(props)
    allowed = any(item.name == "allow_missing" and item.flag for item in props.settings)
    problems = [] if allowed else asset_problems(root)
    if problems:
        raise FarmTrouble(
            f"{len(problems)} file(s) the farm cannot use: {'; '.join(problems)}. Move them "
            "under the farm root (Make Paths Relative for files already there), or tick "
            "Allow missing"
        )
    found = connect(props, root)
    refresh_job_types(props, found)
    settings = job_settings(props, scene, root, relative)
    bpy.ops.wm.save_mainfile()
    plan = found.plan(props.job_type, settings)
    requires = [tag.strip() for tag in props.requires.split(",") if tag.strip()]
    job_id = found.submit(plan, priority=props.priority, requires=requires)
    props.job_id, props.job_state, props.job_progress = job_id, "queued", 0.0
    props.job_error, props.job_frames = "", ""
    props.message = f"submitted job {job_id}: {len(plan['tasks'])} task(s) to {found.address}"
    return job_id


def _farm_of(props: Any) -> farm.Farm:
    root = farm.find_root(bpy.data.filepath, bpy.path.abspath(props.root) if props.root else "")
    if root is None:
        raise FarmTrouble("no farm root for this file")
    return farm.locate(root, props.farm_address or props.host)


def poll(scene: Any) -> bool:
    """Bring the panel's view of the submitted job up to date; True while it runs."""
    props = scene.buildcat
    if not props.job_id:
        return False
    try:
        job = _farm_of(props).job(props.job_id)
    except FarmTrouble as exc:
        props.message = f"job {props.job_id}: {exc}"
        return True  # the farm may come back: keep looking
    props.job_state = str(job.get("state", ""))
    props.job_progress = float(job.get("progress") or 0.0)
    frames = job.get("frames")
    if isinstance(frames, dict):
        props.job_frames = f"{frames.get('done', 0)}/{frames.get('total', 0)}"
    props.job_error = str(job.get("error") or "")
    return props.job_state not in farm.FINAL_STATES


def _redraw() -> None:
    manager = getattr(bpy.context, "window_manager", None)
    for window in getattr(manager, "windows", ()):
        for area in window.screen.areas:
            if area.type == "PROPERTIES":
                area.tag_redraw()


def _tick() -> float | None:
    scene = bpy.context.scene
    running = poll(scene) if scene is not None else False
    _redraw()
    return POLL_SECONDS if running else None


def follow() -> None:
    """Poll the job's status from Blender's event loop until it ends."""
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=POLL_SECONDS)
