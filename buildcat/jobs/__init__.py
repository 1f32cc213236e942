"""Task kinds: how each kind's task payloads are checked (client, server, worker) and run.

A job has a kind (``python``, ``blender``, ...), and each of its tasks runs as that kind
unless its payload names another under ``"kind"``: one job can render frames, run a
command on each and end with a Python task, the tasks waiting for each other through
their ``depends``.
"""

from __future__ import annotations

from typing import Any

from buildcat.errors import FarmError
from buildcat.jobs import blender, command, python, script

#: kind -> payload validator; every validator raises FarmError with one clear line.
VALIDATORS = {
    "python": python.validate_payload,
    "blender": blender.validate_payload,
    "command": command.validate_payload,
    "script": script.validate_payload,
}
#: kind -> the job function (``module:function``) a worker's child runs a task of that kind
#: with, its payload the one argument (``python`` tasks name their own function; ``blender``
#: ones are run with the worker's Blender as well).
RUNNERS: dict[str, str] = {
    "command": "buildcat.jobs.command:run_task",
    "script": "buildcat.jobs.script:run_task",
}


def task_kind(job_kind: str, payload: Any) -> str:
    """The kind a task runs as: the one its payload names, else its job's."""
    kind = payload.get("kind") if isinstance(payload, dict) else None
    return kind if isinstance(kind, str) and kind else job_kind


def work_of(job_kind: str, payload: Any) -> str:
    """What a task runs, as one key: its kind and, for a Python task, its function. A
    worker that saw such tasks end quickly takes many of them at once, of any job."""
    kind = task_kind(job_kind, payload)
    function = payload.get("function") if isinstance(payload, dict) else None
    return f"{kind}:{function if isinstance(function, str) else ''}"


def validate_payload(kind: str, payload: Any) -> None:
    """Check one task payload of a job of ``kind`` before it is queued or run."""
    if not isinstance(payload, dict):
        raise FarmError("a task payload must be a map")
    if "kind" in payload and not (isinstance(payload["kind"], str) and payload["kind"]):
        raise FarmError("a task's 'kind' must be the name of a task kind")
    what = "task" if "kind" in payload else "job"
    kind = task_kind(kind, payload)
    validator = VALIDATORS.get(kind)
    if validator is None:
        known = ", ".join(sorted(VALIDATORS))
        raise FarmError(f"unknown {what} kind {kind!r} (known: {known})")
    validator(payload)
