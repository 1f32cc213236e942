"""The job functions the RQ side of benchmarks/run.py enqueues (the same work as the farm's)."""

from __future__ import annotations

import time


def noop(_: object = None) -> None:
    return None


def started_at() -> float:
    return time.time()
