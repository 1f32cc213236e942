"""Big-results benchmark: the server's peak memory while many tasks return big results, and
while a client fetches them all.

One real server (journal on) and K worker processes; a job of N tasks, each returning
``size`` bytes. The server's peak RSS (``VmHWM``) is read once the job is done, reset
(``/proc/PID/clear_refs``), then read again after ``Job.results()`` fetched every result.
Run: ``python benchmarks/results.py [--tasks 300] [--size 1000000] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import buildcat
from buildcat import launch

#: The job function, written into the farm root (workers put the root on ``sys.path``).
JOB_MODULE = '''
def blob(index, size):
    """``size`` bytes, each the task's index: a reader can tell one result from another."""
    return bytes([index % 256]) * size
'''


def memory(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (the peak) of a process, in bytes."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            figures[name] = int(value.split()[0]) * 1024
    return figures


def reset_peak(pid: int) -> bool:
    """Start the process's peak RSS afresh (Linux: ``clear_refs`` 5); False where it cannot."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def big_results(tasks: int = 300, size: int = 1_000_000, workers: int = 2) -> dict[str, Any]:
    """Run ``tasks`` tasks returning ``size`` bytes each; the server's memory, in bytes."""
    with tempfile.TemporaryDirectory(prefix="buildcat-bench-") as folder:
        root = Path(folder)
        (root / "bench_results.py").write_text(JOB_MODULE)
        server, port = launch.start_server(root, "--log-level", "warning", "--no-discovery")
        agents = [
            launch.start_worker(port, root, "--name", f"bench-{n}", "--log-level", "warning")
            for n in range(workers)
        ]
        try:
            farm = buildcat.connect("127.0.0.1", port, root, timeout=300)
            deadline = time.monotonic() + 30
            while len(farm.workers()) < workers and time.monotonic() < deadline:
                time.sleep(0.05)
            idle = memory(server.pid)["VmRSS"]
            started = time.perf_counter()
            job = farm.submit_tasks(
                [{"payload": {"args": [n, size]}} for n in range(tasks)],
                name="big results",
                common={"function": "bench_results:blob"},
            )
            job.wait(timeout=600)
            run_seconds = time.perf_counter() - started
            during_run = memory(server.pid)["VmHWM"]
            after_run = memory(server.pid)["VmRSS"]
            separate = reset_peak(server.pid)
            started = time.perf_counter()
            results = job.results()
            fetch_seconds = time.perf_counter() - started
            during_fetch = memory(server.pid)["VmHWM"]
            whole = len(results) == tasks and all(
                isinstance(r, bytes) and len(r) == size and r[:1] == bytes([n % 256])
                for n, r in enumerate(results)
            )
            del results
            state = root / ".buildcat"
            journal = sum(p.stat().st_size for p in state.glob("journal*.bin"))
            snapshot = sum(p.stat().st_size for p in state.glob("snapshot*.bin"))
            on_disk = sum(
                p.stat().st_size for p in (state / "results").rglob("*") if p.is_file()
            ) if (state / "results").is_dir() else 0  # fmt: skip
        finally:
            launch.stop_all(agents)
            launch.stop(server)
    held = tasks * size
    peak = max(during_run, during_fetch)
    return {
        "tasks": tasks,
        "size": size,
        "workers": workers,
        "bytes_held": held,
        "server_rss_idle": idle,
        "server_rss_peak_run": during_run,
        "server_rss_after_run": after_run,
        "server_rss_peak_fetch": during_fetch,
        "fetch_peak_measured_alone": separate,
        "server_rss_peak": peak,
        "ratio": round(peak / held, 3),
        "run_seconds": round(run_seconds, 2),
        "fetch_seconds": round(fetch_seconds, 2),
        "results_whole": whole,
        "journal_bytes": journal,
        "snapshot_bytes": snapshot,
        "result_files_bytes": on_disk,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    figures = big_results(args.tasks, args.size, args.workers)
    mb = 1e6
    print(
        f"{args.tasks} tasks x {args.size:,} bytes, {args.workers} workers: "
        f"server RSS idle {figures['server_rss_idle'] / mb:.0f} MB, "
        f"peak while running {figures['server_rss_peak_run'] / mb:.0f} MB, "
        f"peak while fetching {figures['server_rss_peak_fetch'] / mb:.0f} MB "
        f"for {figures['bytes_held'] / mb:.0f} MB of results (ratio {figures['ratio']}); "
        f"journal {figures['journal_bytes'] / mb:.1f} MB, "
        f"result files {figures['result_files_bytes'] / mb:.1f} MB; "
        f"run {figures['run_seconds']} s, fetch {figures['fetch_seconds']} s, "
        f"results whole: {figures['results_whole']}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
