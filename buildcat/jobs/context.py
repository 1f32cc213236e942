"""What a running job function can ask of its worker: the root, progress reports."""

from __future__ import annotations

import contextlib
import math
import os
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class TaskCancelled(BaseException):
    """Raised inside a running job function when its task is cancelled.

    A BaseException, so ``except Exception`` in job code does not swallow it; catch it
    to clean up, then re-raise."""


@dataclass(slots=True)
class TaskContext:
    root: str
    worker_name: str = ""
    slots: int = 1
    task_id: str = ""
    report: Callable[[float, str], None] = field(default=lambda fraction, message: None)

    def path(self, relative: str) -> Path:
        """A root-relative path resolved on this worker (refusing escapes)."""
        from buildcat.root import resolve

        return resolve(self.root, relative)


#: Names the pipe (``FD:INODE``) on which a program a task runs (``farm submit script``)
#: reports progress: one ``FRACTION MESSAGE`` line per report (jobs/process.py reads it).
PROGRESS_FD_VARIABLE = "BUILDCAT_PROGRESS_FD"


def _no_report(fraction: float, message: str) -> None:
    pass


def _inherited_report() -> Callable[[float, str], None]:
    """How ``progress()`` reports in a program a task started: on the pipe it was given,
    if this process really holds it (a grandchild may inherit the variable alone)."""
    number, _, inode = os.environ.get(PROGRESS_FD_VARIABLE, "").partition(":")
    try:
        descriptor = int(number)
        found = os.fstat(descriptor)
    except (ValueError, OSError):
        return _no_report
    if not stat.S_ISFIFO(found.st_mode) or str(found.st_ino) != inode:
        return _no_report

    def report(fraction: float, message: str) -> None:
        line = f"{fraction!r} {message}".replace("\n", " ").replace("\r", " ") + "\n"
        with contextlib.suppress(OSError):
            os.write(descriptor, line.encode("utf-8", "replace"))

    return report


_current = TaskContext(
    root=os.environ.get("BUILDCAT_ROOT", os.getcwd()),
    task_id=os.environ.get("BUILDCAT_TASK_ID", ""),
    report=_inherited_report(),
)


def current() -> TaskContext:
    """The context of the task running in this process."""
    return _current


def set_current(ctx: TaskContext) -> None:
    global _current
    _current = ctx


#: A progress message longer than this is cut (it is shown on one line).
MAX_PROGRESS_MESSAGE = 200


def progress(fraction: float, message: str = "") -> None:
    """Report how far the running task is (0..1); shown by ``farm status`` and ``farm wait``.

    ``fraction`` is any real number (``numpy.float32`` included), clamped to 0..1; a
    string or another non-number raises TypeError. ``message`` is turned into text with
    ``str()``. A value that still cannot be sent (NaN) is dropped with a warning in the
    task log: progress never fails a task for the worker's sake."""
    checked = checked_progress(fraction, message)
    if checked is not None:
        _current.report(*checked)


def checked_progress(fraction: object, message: object = "") -> tuple[float, str] | None:
    """``(fraction, message)`` as they travel, or ``None`` (dropped, with a warning)."""
    if isinstance(fraction, (str, bytes, bytearray)) or not hasattr(type(fraction), "__float__"):
        raise TypeError(
            "buildcat.progress() takes a number from 0 to 1 as its fraction, not "
            f"{type(fraction).__name__} {_short(fraction)}"
        )
    try:
        value = float(fraction)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"buildcat.progress() could not read {_short(fraction)} as a number: {exc}"
        ) from None
    if not math.isfinite(value):
        _warn(f"progress {_short(fraction)} is not a number from 0 to 1; not reported")
        return None
    if not isinstance(message, str):
        try:
            message = str(message)
        except Exception as exc:
            _warn(f"progress message of type {type(message).__name__} has no text ({exc})")
            message = ""
    # Text that is not valid Unicode (lone surrogates) cannot be encoded: replace it.
    text = message[:MAX_PROGRESS_MESSAGE].encode("utf-8", "replace").decode("utf-8")
    return min(1.0, max(0.0, value)), text


def _short(value: object) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _warn(text: str) -> None:
    # During a task, stderr is the task's log.
    with contextlib.suppress(Exception):
        print(f"buildcat: warning: {text}", file=sys.stderr)


#: Processes a job keeps running between tasks on purpose (a warm Blender): the child
#: ends everything else a task leaves behind.
_kept_processes: set[int] = set()
_kept_guard = threading.Lock()  # a warm Blender is closed from its reaper thread


def keep_process(pid: int) -> None:
    """Let a process outlive the task that started it (it serves later tasks)."""
    with _kept_guard:
        _kept_processes.add(pid)


def release_process(pid: int) -> None:
    with _kept_guard:
        _kept_processes.discard(pid)


def kept_processes() -> frozenset[int]:
    with _kept_guard:
        return frozenset(_kept_processes)


def path(relative: str) -> Path:
    """Resolve a root-relative path on the worker running this task."""
    return _current.path(relative)
