"""Python script-file tasks (StudioML's ``studio run``): a file under the farm root run
with its arguments as ``sys.argv``, as ``python tools/train.py --lr 0.1`` would run it,
by the worker's own Python or one the job names (an interpreter or a virtualenv).

The script runs in a process of its own (jobs/process.py) with the root as its working
directory; ``buildcat.progress()`` in it reports to its task through the pipe named in
``BUILDCAT_PROGRESS_FD``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from buildcat import root as farm_root
from buildcat.errors import FarmError
from buildcat.jobs import context, process

#: Longest label shown for a task of ``--map`` (its own arguments).
MAX_LABEL = 80


def _arguments(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FarmError(f"{what} must be a list of strings")
    if any("\x00" in item for item in value):
        raise FarmError(f"{what} must not contain NUL bytes")
    return value


def validate_payload(payload: dict[str, Any]) -> None:
    """One clear line for anything a script task cannot run with."""
    script = payload.get("script")
    if not isinstance(script, str):
        raise FarmError("a script task needs 'script', a path relative to the farm root")
    farm_root.check_relative(script)
    _arguments(payload.get("args", []), "'args'")
    python = payload.get("python")
    if python is not None and (not isinstance(python, str) or not python or "\x00" in python):
        raise FarmError("'python' must be the path of a Python (or a virtualenv) on the workers")


def split_arguments(item: str | Sequence[str]) -> list[str]:
    """One argument set of ``--map``: a string is split as a shell would (shlex)."""
    if isinstance(item, str):
        try:
            return shlex.split(item)
        except ValueError as exc:
            raise FarmError(f"cannot split {item!r} into arguments: {exc}") from None
    return list(item)


def plan_script(
    script: str,
    args: Sequence[str] = (),
    *,
    python: str | None = None,
    map: Sequence[str | Sequence[str]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The tasks (one, or one per argument set of ``map``) and their shared payload."""
    common: dict[str, Any] = {"script": farm_root.check_relative(script)}
    if python is not None:
        common["python"] = python
    if map is None:
        payload: dict[str, Any] = {"args": list(args)}
        if args:
            payload["label"] = _label(args)
        return [{"payload": payload}], common
    if not map:
        raise FarmError("--map needs at least one set of arguments")
    tasks = []
    for item in map:
        extra = split_arguments(item)
        tasks.append({"payload": {"args": [*args, *extra], "label": _label(extra)}})
    return tasks, common


def _label(arguments: Sequence[str]) -> str:
    label = shlex.join(arguments)
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 3] + "..."


# ---- running (inside the worker's child process) --------------------------------------------


def python_in(folder: Path) -> Path | None:
    """A virtual environment's Python (``bin/python``, ``Scripts/python.exe``), if any."""
    for inside in ("bin/python", "Scripts/python.exe"):
        if (folder / inside).is_file():
            return folder / inside
    return None


def interpreter(choice: str | None, root: str) -> str:
    """The Python to run a script with on this worker.

    None: the worker's own. An absolute path: that Python, or the virtualenv folder it
    names. A relative path with a ``/``: the same, under the farm root. A bare name
    (``python3.12``): looked up on the worker's ``PATH``."""
    if not choice:
        return sys.executable
    if os.path.isabs(choice):
        path = Path(choice)
    elif "/" in choice or "\\" in choice:
        # Joined, not resolved: a virtualenv's python is a symlink to the one it was made from.
        path = Path(root) / farm_root.check_relative(choice)
    else:
        found = shutil.which(choice)
        if found is None:
            raise process.ProcessFailed(f"--python {choice}: not found on this worker's PATH")
        path = Path(found)
    if path.is_dir():
        inside = python_in(path)
        if inside is None:
            raise process.ProcessFailed(f"--python {choice}: a folder with no bin/python in it")
        path = inside
    if not path.is_file() or not os.access(path, os.X_OK):
        raise process.ProcessFailed(f"--python {choice}: no Python there on this worker")
    # Not resolved: a virtualenv's bin/python is a symlink, and must run as itself.
    return str(path)


def run_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one script task: it is done when the script exits 0."""
    ctx = context.current()
    root = os.path.abspath(ctx.root)
    task_id = ctx.task_id
    script = farm_root.check_relative(payload["script"])
    if not farm_root.resolve(root, script).is_file():
        raise process.ProcessFailed(f"{script} does not exist under the farm root {root}")
    python = interpreter(payload.get("python"), root)
    args = list(payload.get("args", []))
    env = {
        **os.environ,
        "BUILDCAT_ROOT": root,
        "BUILDCAT_TASK_ID": task_id,
        "BUILDCAT_JOB_ID": task_id.rpartition(".")[0] or task_id,
    }
    print(f"buildcat: running: {shlex.join([python, script, *args])}")

    def on_progress(line: str) -> None:
        report = process.parse_progress_line(line)
        if report is not None:
            context.progress(*report)

    tail: deque[str] = deque(maxlen=process.TAIL_LINES)
    code = process.run(
        [python, script, *args],
        cwd=root,
        env=env,
        on_line=print,
        on_progress=on_progress,
        tail=tail,
    )
    if code != 0:
        raise process.failure(script, code, tail)
    return {"exit_code": code}
