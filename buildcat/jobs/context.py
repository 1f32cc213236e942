"""What a running job function can ask of its worker: the root, progress reports."""

from __future__ import annotations

import os
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


_current = TaskContext(root=os.environ.get("BUILDCAT_ROOT", os.getcwd()))


def current() -> TaskContext:
    """The context of the task running in this process."""
    return _current


def set_current(ctx: TaskContext) -> None:
    global _current
    _current = ctx


def progress(fraction: float, message: str = "") -> None:
    """Report how far the running task is (0..1); shown by ``farm status`` and ``farm wait``."""
    _current.report(fraction, message)


def path(relative: str) -> Path:
    """Resolve a root-relative path on the worker running this task."""
    return _current.path(relative)
