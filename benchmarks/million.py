"""One 1,000,000-task no-op job through a farm with its default settings (journal and
snapshots on), and what it costs the server:

    python benchmarks/million.py [--tasks N] [--workers K]

- end-to-end throughput, submit to the last result;
- how long the submit took to be answered;
- the longest wait for a ``GET /ping`` sent every 50 ms during the whole run (a stalled
  event loop shows here), and the server's own measure of its loop's longest pause;
- the server's memory at its peak (VmHWM) and per task;
- how long the farm took to stop (the server first writes the snapshot the job's end
  made due, so that the next start need not replay the journal);
- a restart on the same state: from start to answering with the job done, and its memory.

``--journal-only`` runs it on a server that never snapshots, so that its restart replays
the whole journal: what a snapshot saves a restart.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
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
    """A ``GET /ping`` every 50 ms from a process of its own (this one's submit holds its
    own interpreter while it packs the job); the time each took to answer."""

    def __init__(self, port: int, root: Path) -> None:
        self.port, self.root = port, root
        self.process: subprocess.Popen[str] | None = None
        self.waits: list[float] = []

    def __enter__(self) -> Pinger:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--ping", str(self.port), str(self.root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        out, _ = self.process.communicate("", timeout=120)  # stdin closed: it stops
        self.waits = json.loads(out)

    def figures(self) -> dict[str, Any]:
        waits = sorted(self.waits) or [0.0]
        return {
            "pings": len(waits),
            "ping_max_ms": waits[-1] * 1000,
            "ping_p99_ms": percentile(waits, 0.99) * 1000,
            "pings_over_100ms": sum(wait > 0.1 for wait in waits),
        }


def ping_until_stdin_closes(port: int, root: Path) -> None:
    """The pinging process: prints the waits (JSON) once its stdin is closed."""
    client = buildcat.connect("127.0.0.1", port, root)
    stopped = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stopped.set()), daemon=True).start()
    waits, tick = [], time.monotonic()
    while not stopped.is_set():
        started = time.monotonic()
        client.ping()
        waits.append(time.monotonic() - started)
        tick += PING_EVERY
        stopped.wait(max(0.0, tick - time.monotonic()))
        tick = max(tick, time.monotonic() - PING_EVERY)  # a long wait does not pile up pings
    client.close()
    print(json.dumps(waits))


#: ``--snapshot-every`` above any job's events: the server writes no snapshot at all,
#: and a restart replays the whole journal (the state a snapshot replaces).
NO_SNAPSHOTS = ("--snapshot-every", str(10**12))


def million(tasks: int = 1_000_000, workers: int = 2, journal_only: bool = False) -> dict[str, Any]:
    """The job through a farm with the default settings, or with ``journal_only`` a farm
    that never snapshots (then the restart replays the journal the snapshot replaces)."""
    figures: dict[str, Any] = {"tasks": tasks, "workers": workers}
    server_args = NO_SNAPSHOTS if journal_only else ()
    with tempfile.TemporaryDirectory(prefix="bench-million-") as folder:
        root = Path(folder)
        with farm(root, workers, "--no-blender", server_args=server_args) as (client, port, pid):
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
            stopping = time.perf_counter()
        # The server writes the snapshot the job's end made due before it exits.
        figures["stop_s"] = time.perf_counter() - stopping
        figures["state_files"] = sorted(p.name for p in state_dir(root).iterdir())
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
    parser.add_argument("--journal-only", action="store_true", help="a farm that never snapshots")
    parser.add_argument("--ping", nargs=2, metavar=("PORT", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ping:
        ping_until_stdin_closes(int(args.ping[0]), Path(args.ping[1]))
        return
    print(json.dumps(million(args.tasks, args.workers, args.journal_only), indent=2))


if __name__ == "__main__":
    main()
