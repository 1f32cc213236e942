"""What the dashboard's job detail reads beyond the job's view: the task table in pages,
a task's log in pieces (following its tail while it runs; the traceback of a failed
run comes beside it, as the worker sent it), and the frames a job rendered,
each frame's image and record (time, memory, Blender, worker).

``GET /api/v1/jobs/{job}/tasks?state=&q=&offset=&limit=``,
``GET /api/v1/tasks/{task}/log?offset=&limit=`` (or ``?tail=``),
``GET /api/v1/jobs/{job}/frames``, ``GET /api/v1/tasks/{task}/image?output=``.
Log files and images are read in threads (``web.ThumbnailReader``'s, for images), never on
the event loop, and only where the farm wrote them or a done task's result names them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from buildcat import auth, protocol
from buildcat.errors import ProtocolError
from buildcat.root import state_dir
from buildcat.server import views
from buildcat.server.farm import farm_of
from buildcat.server.replies import respond
from buildcat.server.scheduler import Task, TaskState
from buildcat.server.web import IMAGE_TYPES, frame_response

API = protocol.API_PREFIX
#: The most a piece of a log holds, and what a first look at a log shows of its end.
MAX_LOG_PIECE = 256 * 1024
DEFAULT_TAIL = 64 * 1024
#: The most tasks one page of a job's tasks holds, and the most frames a frame list.
MAX_TASK_PAGE = 10_000
MAX_FRAMES = 100_000
_TASK_STATES = {str(state) for state in TaskState}


# ---- the task table -------------------------------------------------------------------------


def task_page(tasks: list[Task], query: Mapping[str, str]) -> dict[str, Any]:
    """Tasks in index order, filtered by state (``running`` is the word for leased) and
    a search in id and label, one page of them; without ``limit``, all (the old reply)."""
    states = {part for part in query.get("state", "").split(",") if part}
    states = {"leased" if part == "running" else part for part in states}
    bad = sorted(states - _TASK_STATES)
    if bad:
        raise ProtocolError(
            f"state must be among {', '.join(sorted(_TASK_STATES))}, not {bad[0]!r}"
        )
    search = query.get("q", "").strip().casefold()
    offset = views.query_number(query, "offset", 0, 0, 10**9)
    limit = views.query_number(query, "limit", 0, 0, MAX_TASK_PAGE) if "limit" in query else None
    if states or search:
        tasks = [
            task
            for task in tasks
            if (not states or str(task.state) in states)
            and (not search or search in f"{task.id} {task.payload.get('label', '')}".casefold())
        ]
    end = None if limit is None else offset + limit
    return {
        "tasks": [task.to_dict() for task in tasks[offset:end]],
        "matched": len(tasks),
        "offset": offset,
    }


async def job_tasks(request: web.Request) -> web.Response:
    job = farm_of(request).scheduler.job(request.match_info["job"])
    return respond(request, task_page(job.tasks, request.query))


# ---- a task's log in pieces -----------------------------------------------------------------


def log_path(root: Path, task: Task) -> Path:
    """Where the worker writes the task's log (``worker/tasklog.py``)."""
    return state_dir(root) / "logs" / task.job.id / f"{task.id}.log"


def read_piece(path: Path, offset: int | None, limit: int, tail: int) -> tuple[bytes, int, int]:
    """``(bytes, where they start, the file's size)``: ``limit`` bytes from ``offset``, or
    the last ``tail`` bytes when no offset is given. A missing file is empty."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            start = max(0, size - tail) if offset is None else min(offset, size)
            handle.seek(start)
            return handle.read(limit), start, size
    except FileNotFoundError:
        return b"", 0, 0


def _whole_lines(data: bytes, start: int, from_tail: bool) -> tuple[bytes, int]:
    """A piece that begins mid-line (a tail) starts at its next line; one cut mid-character
    at its end keeps the character for the next piece."""
    if from_tail and start > 0:
        newline = data.find(b"\n")
        if 0 <= newline < len(data) - 1:
            return data[newline + 1 :], start + newline + 1
    return data, start


async def task_log(request: web.Request) -> web.Response:
    """A piece of the task's log file: ``text``, ``offset`` (where it starts), ``next``
    (where the next piece starts: ask for it to follow the log), ``size`` and whether
    the task is still running (more may come). Before the worker has written a log file
    (or where none could be written), the tail the worker sent back is the log."""
    farm = farm_of(request)
    task = farm.scheduler.task(request.match_info["task"])
    query = request.query
    limit = views.query_number(query, "limit", MAX_LOG_PIECE, 0, MAX_LOG_PIECE) or MAX_LOG_PIECE
    tail = views.query_number(query, "tail", DEFAULT_TAIL, 0, MAX_LOG_PIECE)
    offset = views.query_number(query, "offset", 0, 0, 2**62) if "offset" in query else None
    path = log_path(farm.config.root, task)
    data, start, size = await asyncio.to_thread(read_piece, path, offset, limit, tail)
    data, start = _whole_lines(data, start, from_tail=offset is None)
    text = data.decode("utf-8", "replace")
    if size == 0 and offset in (None, 0) and task.log:
        text = task.log
    return respond(
        request,
        {
            "task": task.id,
            "text": auth.redact(text, farm.secret),
            "offset": start,
            "next": start + len(data),
            "size": size,
            "running": task.state is TaskState.LEASED,
            "state": str(task.state),
            "error": task.error,
            "traceback": auth.redact(task.traceback, farm.secret),
        },
    )


# ---- the frames a job rendered --------------------------------------------------------------


def frame_list(tasks: list[Task]) -> list[dict[str, Any]]:
    """Every finished frame a browser can show, in frame order: its task, which of the
    task's outputs it is, and its record when the render reported one."""
    frames: list[dict[str, Any]] = []
    for task in tasks:
        if task.state is not TaskState.DONE or not isinstance(task.result, dict):
            continue
        if not views.final_frames(task):
            continue
        outputs = task.result.get("outputs")
        if not isinstance(outputs, list):
            continue
        numbers = task.result.get("frames")
        infos = task.result.get("frames_info")
        for position, output in enumerate(outputs):
            if not isinstance(output, str) or Path(output).suffix.lower() not in IMAGE_TYPES:
                continue
            frame = (
                numbers[position] if isinstance(numbers, list) and position < len(numbers) else None
            )
            info = infos[position] if isinstance(infos, list) and position < len(infos) else None
            record = info if isinstance(info, dict) else {}
            frames.append(
                {
                    "frame": frame if isinstance(frame, int) else None,
                    "task": task.id,
                    "output": position,
                    "path": output,
                    "seconds": record.get("seconds", task.seconds),
                    "peak_memory_mb": record.get("peak_memory_mb"),
                    "blender": record.get("blender"),
                    "worker": record.get("worker") or task.worker_name,
                }
            )
            if len(frames) >= MAX_FRAMES:
                return frames
    frames.sort(key=lambda entry: (entry["frame"] is None, entry["frame"] or 0, entry["task"]))
    return frames


def _at(values: Any, position: int) -> Any:
    return values[position] if isinstance(values, list) and position < len(values) else None


async def job_frames(request: web.Request) -> web.Response:
    job = farm_of(request).scheduler.job(request.match_info["job"])
    return respond(request, {"job": job.id, "frames": frame_list(job.tasks)})


async def task_image(request: web.Request) -> web.StreamResponse:
    """One image a done task's result names (``output``: which of them, default the
    last), read as thumbnails are: a regular file under the root, in the reader's threads."""
    farm = farm_of(request)
    task = farm.scheduler.task(request.match_info["task"])
    outputs = task.result.get("outputs") if isinstance(task.result, dict) else None
    if task.state is not TaskState.DONE or not isinstance(outputs, list) or not outputs:
        raise web.HTTPNotFound(reason=f"task {task.id} has no finished image")
    position = views.query_number(request.query, "output", len(outputs) - 1, 0, len(outputs) - 1)
    relative = outputs[position]
    if not isinstance(relative, str) or Path(relative).suffix.lower() not in IMAGE_TYPES:
        raise web.HTTPNotFound(
            reason=f"output {position} of task {task.id} is not an image a browser shows"
        )
    return await frame_response(farm, relative, "private, max-age=60")


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{API}/jobs/{{job}}/tasks", job_tasks)
    app.router.add_get(f"{API}/jobs/{{job}}/frames", job_frames)
    app.router.add_get(f"{API}/tasks/{{task}}/log", task_log)
    app.router.add_get(f"{API}/tasks/{{task}}/image", task_image)
