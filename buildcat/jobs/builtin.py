"""Built-in job functions: the no-ops the benchmarks use and worker-info."""

from __future__ import annotations

import os
import platform
import socket
import time
from typing import Any

from buildcat.jobs import context


def noop(*args: Any, **kwargs: Any) -> None:
    """Does nothing: measures what the farm itself costs per task."""


def started_at(*args: Any, **kwargs: Any) -> float:
    """Returns the wall-clock time the task started, for submit->start latency."""
    return time.time()


def sleep(seconds: float, result: Any = None) -> Any:
    """Sleeps, reporting progress each tenth: a stand-in for real work in tests and demos."""
    steps = 10
    for step in range(steps):
        time.sleep(seconds / steps)
        context.progress((step + 1) / steps, f"slept {(step + 1) * seconds / steps:.1f}s")
    return result


def worker_info() -> dict[str, Any]:
    """The worker's host name, platform, Python version, root path and slots."""
    ctx = context.current()
    return {
        "worker": ctx.worker_name,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "root": os.path.abspath(ctx.root),
        "slots": ctx.slots,
        "pid": os.getpid(),
    }
