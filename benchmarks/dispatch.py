"""Dispatch benchmark: N no-op tasks through a real server and K worker processes.

Prints end-to-end throughput (submit to last result) and submit->start latency on an
idle farm (p50/p99), taken apart: an HTTP round trip (ping), the submit's answer (its
journal fsync in it), and the time from that answer to the task's start in the child.
Run: ``python benchmarks/dispatch.py [--tasks N] [--workers K] [--no-journal]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import buildcat
from buildcat import launch


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument(
        "--no-journal", action="store_true", help="Run the server without its journal."
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="buildcat-bench-") as folder:
        root = Path(folder)
        extra = ["--no-journal"] if args.no_journal else []
        server, port = launch.start_server(root, "--log-level", "warning", "--no-discovery", *extra)
        workers = [
            launch.start_worker(port, root, "--name", f"bench-{n}", "--log-level", "warning")
            for n in range(args.workers)
        ]
        try:
            farm = buildcat.connect("127.0.0.1", port, root)
            deadline = time.monotonic() + 30
            while len(farm.workers()) < args.workers and time.monotonic() < deadline:
                time.sleep(0.05)
            farm.map("buildcat.jobs.builtin:noop", range(200)).wait(timeout=60)  # warm up

            rates = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                job = farm.map("buildcat.jobs.builtin:noop", range(args.tasks))
                job.wait(timeout=600)
                rates.append(args.tasks / (time.perf_counter() - started))

            latencies, pings, answers, after_answer = [], [], [], []
            for _ in range(args.latency_samples):
                pinged = time.perf_counter()
                farm.ping()
                pings.append((time.perf_counter() - pinged) * 1000)
                submitted = time.time()
                job = farm.submit("buildcat.jobs.builtin:started_at")
                answered = time.time()
                job.wait(timeout=60)
                started = job.results()[0]
                latencies.append((started - submitted) * 1000)
                answers.append((answered - submitted) * 1000)
                after_answer.append((started - answered) * 1000)
            farm.close()
        finally:
            launch.stop_all(workers)
            launch.stop(server)

    figures = {
        "machine": f"{platform.node()} {platform.machine()}, {platform.python_version()}",
        "tasks": args.tasks,
        "workers": args.workers,
        "journal": not args.no_journal,
        "throughput_tasks_per_s": round(statistics.median(rates)),
        "throughput_rounds": [round(rate) for rate in rates],
        "latency_p50_ms": round(percentile(latencies, 0.50), 2),
        "latency_p99_ms": round(percentile(latencies, 0.99), 2),
        # Where the submit->start time goes (p50s): an HTTP round trip to the server, the
        # submit's own round trip (its journal fsync in it), its answer to the task's start.
        "ping_p50_ms": round(percentile(pings, 0.50), 2),
        "submit_answered_p50_ms": round(percentile(answers, 0.50), 2),
        "answer_to_start_p50_ms": round(percentile(after_answer, 0.50), 2),
    }
    journal = "no journal" if args.no_journal else "journal on"
    print(
        f"no-op tasks:            {args.tasks} x {args.rounds} rounds, {args.workers} workers, "
        f"{journal}"
    )
    print(
        f"throughput (median):    {figures['throughput_tasks_per_s']} tasks/s "
        f"(rounds: {figures['throughput_rounds']})"
    )
    print(
        f"submit->start latency:  p50 {figures['latency_p50_ms']} ms, "
        f"p99 {figures['latency_p99_ms']} ms ({args.latency_samples} samples, idle farm)"
    )
    print(
        f"  of which (p50s):      ping {figures['ping_p50_ms']} ms; the submit answered after "
        f"{figures['submit_answered_p50_ms']} ms; its answer to the task's start "
        f"{figures['answer_to_start_p50_ms']} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
