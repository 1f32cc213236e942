"""One 1,000,000-task no-op job through a farm with its default settings (journal and
snapshots on), and what it costs the server:

    python benchmarks/million.py [--tasks N] [--workers K]

- end-to-end throughput, submit to the last result;
- how long the submit took to be answered;
- the longest wait for a ``GET /ping`` sent every 50 ms during the whole run (a stalled
  event loop shows here), and the server's own measure of its loop's longest pause;
- the server's memory at its peak (VmHWM) and per task;
- a restart on the same state: from start to answering with the job done, and its memory.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import farm, memory_mb, percentile, wait_until

import buildcat
from buildcat import launch
from buildcat.root import state_dir

PING_EVERY = 0.05


class Pinger:
    """A ``GET /ping`` every 50 ms on a thread of its own; the time each took to answer."""

    def __init__(self, port: int, root: Path) -> None:
        self.client = buildcat.connect("127.0.0.1", port, root)
        self.waits: list[float] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> Pinger:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(60)
        self.client.close()

    def run(self) -> None:
        tick = time.monotonic()
        while not self.stopped.is_set():
            started = time.monotonic()
            self.client.ping()
            self.waits.append(time.monotonic() - started)
            tick += PING_EVERY
            self.stopped.wait(max(0.0, tick - time.monotonic()))
            tick = max(tick, time.monotonic() - PING_EVERY)  # a long wait does not pile up pings

    def figures(self) -> dict[str, Any]:
        waits = sorted(self.waits) or [0.0]
        return {
            "pings": len(waits),
            "ping_max_ms": waits[-1] * 1000,
            "ping_p99_ms": percentile(waits, 0.99) * 1000,
            "pings_over_100ms": sum(wait > 0.1 for wait in waits),
        }


def million(tasks: int = 1_000_000, workers: int = 2) -> dict[str, Any]:
    figures: dict[str, Any] = {"tasks": tasks, "workers": workers}
    with tempfile.TemporaryDirectory(prefix="bench-million-") as folder:
        root = Path(folder)
        with farm(root, workers, "--no-blender") as (client, port, pid):
            client.map("buildcat.jobs.builtin:noop", range(500)).wait(timeout=60)  # warm up
            with Pinger(port, root) as pinger:
                started = time.perf_counter()
                job = client.map("buildcat.jobs.builtin:noop", range(tasks))
                figures["submit_s"] = time.perf_counter() - started
                job.wait(timeout=3600)
                elapsed = time.perf_counter() - started
            figures.update(pinger.figures())
            figures["throughput"] = tasks / elapsed
            figures["seconds"] = elapsed
            figures["server_peak_mb"] = memory_mb(pid, "VmHWM")
            figures["server_rss_mb"] = memory_mb(pid, "VmRSS")
            figures["bytes_per_task"] = figures["server_peak_mb"] * 2**20 / tasks
            figures["loop_pause_max_ms"] = client.ping().get("loop_pause_max_ms")
            figures["snapshots"] = client.ping().get("snapshots")
            job_id = job.id
        figures.update(restart(root, job_id))
    return figures


def restart(root: Path, job_id: str) -> dict[str, Any]:
    """Start a server on the state the run left and time it until it answers with the job."""
    started = time.perf_counter()
    server, port = launch.start_server(
        root, "--log-level", "warning", "--no-discovery", timeout=600
    )
    try:
        client = buildcat.connect("127.0.0.1", port, root)
        state = wait_until(lambda: client.job(job_id).status()["state"], 600, "the restart")
        seconds = time.perf_counter() - started
        if state != "done":
            raise SystemExit(f"benchmark: after the restart the job is {state}, not done")
        client.close()
        return {
            "restart_s": seconds,
            "restart_rss_mb": memory_mb(server.pid, "VmRSS"),
            "state_mb": sum(f.stat().st_size for f in state_dir(root).glob("*.bin")) / 2**20,
        }
    finally:
        launch.stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(million(args.tasks, args.workers), indent=2))


if __name__ == "__main__":
    main()
