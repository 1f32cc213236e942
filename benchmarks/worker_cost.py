"""What a worker costs per task, and how many small jobs drain against one big job.

    python benchmarks/worker_cost.py [--tasks N] [--jobs J] [--per-job P] [--workers K]

1. ``worker_cost``: one N-task no-op job through a server and K worker processes (one
   slot each): tasks per second, and CPU seconds per task of the server, of each worker
   agent and of each agent's child process (utime + stime from ``/proc/PID/stat``).
2. ``small_jobs``: J jobs of P no-op tasks against one job of J x P tasks, each queued
   whole before the workers start: the drain rate of each (first task started to last
   task finished, as the server recorded them), their ratio, and how many times a task
   was leased on average (the server's lease grants: its dispatch latency histogram's
   count, one per grant, a give-back and lease again counted twice); with ``--viewers
   V``, the small jobs once more with V dashboards' event streams open.

Linux only (``/proc``). The lead's ``benchmarks/run.py`` calls both functions.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common import EventStreams

import buildcat
from buildcat import auth, launch

NOOP = "buildcat.jobs.builtin:noop"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for thread in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found.extend(
                    int(p) for p in Path(f"/proc/{pid}/task/{thread}/children").read_text().split()
                )
    return found


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark: {what} did not happen within {timeout:g}s")
        time.sleep(0.02)


@contextlib.contextmanager
def server(root: Path) -> Iterator[tuple[buildcat.Client, int, int]]:
    process, port = launch.start_server(root, "--log-level", "warning", "--no-discovery")
    client = buildcat.connect("127.0.0.1", port, root)
    try:
        yield client, port, process.pid
    finally:
        client.close()
        launch.stop(process)


@contextlib.contextmanager
def worker_processes(
    client: buildcat.Client, port: int, root: Path, count: int
) -> Iterator[list[int]]:
    """``count`` worker processes (one slot each); yields their pids once all joined."""
    started = [
        launch.start_worker(
            port, root, "--name", f"cost-{n}", "--log-level", "warning", "--no-blender"
        )
        for n in range(count)
    ]
    try:
        wait_until(
            lambda: sum(1 for w in client.workers() if w["state"] != "offline") >= count,
            60,
            f"{count} workers joining",
        )
        yield [process.pid for process in started]
    finally:
        launch.stop_all(started)


def metric(port: int, root: Path, name: str) -> float:
    """One figure of the server's ``/metrics`` (the first line that starts with ``name``)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics",
        headers={"Authorization": auth.authorization(auth.load_token(root))},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.split()[-1])
    raise SystemExit(f"benchmark: the server's /metrics has no {name}")


def lease_grants(port: int, root: Path) -> int:
    """Lease grants so far: the dispatch latency histogram counts one per task leased."""
    return int(metric(port, root, "buildcat_dispatch_latency_seconds_count"))


def worker_cost(tasks: int = 20_000, workers: int = 2) -> dict[str, Any]:
    """Tasks/s of one ``tasks``-task no-op job on ``workers`` workers, and the CPU
    seconds per task of the server, each agent and each agent's child."""
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as folder:
        root = Path(folder)
        with (
            server(root) as (client, port, server_pid),
            worker_processes(client, port, root, workers) as agent_pids,
        ):
            client.map(NOOP, range(500)).wait(timeout=60)  # warm up (and size the prefetch)
            children = {pid: child_pids(pid) for pid in agent_pids}
            pids = [server_pid, *agent_pids, *(c for cs in children.values() for c in cs)]
            before = {pid: cpu_seconds(pid) for pid in pids}
            started = time.perf_counter()
            client.map(NOOP, range(tasks)).wait(timeout=1800)
            elapsed = time.perf_counter() - started
            used = {pid: (cpu_seconds(pid) - before[pid]) / tasks for pid in pids}
    return {
        "tasks": tasks,
        "workers": workers,
        "throughput": tasks / elapsed,
        "server_cpu_us": used[server_pid] * 1e6,
        "agent_cpu_us": [used[pid] * 1e6 for pid in agent_pids],
        "child_cpu_us": [[used[c] * 1e6 for c in children[pid]] for pid in agent_pids],
    }


def _drain(root: Path, submit: Callable[[buildcat.Client], list[str]], workers: int,
           tasks: int, viewers: int = 0) -> dict[str, Any]:  # fmt: skip
    """Queue the jobs ``submit`` makes, then start the workers: how fast they drain,
    with ``viewers`` dashboards' event streams open all the while."""
    with server(root) as (client, port, _):
        job_ids = set(submit(client))
        grants_before = lease_grants(port, root)

        def drained() -> bool:
            time.sleep(0.2)  # each look costs the server a pass over every job
            return metric(port, root, 'buildcat_tasks{state="done"}') >= tasks

        streams = EventStreams(port, auth.load_token(root), viewers) if viewers else None
        with contextlib.ExitStack() as stack:
            if streams is not None:
                stack.enter_context(streams)
            with worker_processes(client, port, root, workers):
                wait_until(drained, 1800, "the jobs finishing")
                received = streams.bytes_received() if streams is not None else 0
                views = [job for job in client.jobs() if job["id"] in job_ids]
                grants = lease_grants(port, root) - grants_before
    first = min(job["started_at"] for job in views)
    last = max(job["finished_at"] for job in views)
    return {
        "rate": tasks / (last - first),
        "leases_per_task": grants / tasks,
        "stream_mb": received / 2**20,
    }


def small_jobs(
    jobs: int = 10_000, per_job: int = 4, workers: int = 2, viewers: int = 0
) -> dict[str, Any]:
    """``jobs`` jobs of ``per_job`` no-op tasks against one job of as many tasks, each
    queued whole before the workers join: drain rates, ratio, leases per task; and with
    ``viewers`` dashboards open, the small jobs again."""
    tasks = jobs * per_job

    def many(client: buildcat.Client) -> list[str]:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            # One client per thread: a client holds one connection.
            local: dict[int, buildcat.Client] = {}

            def one(n: int) -> str:
                me = threading.get_ident()
                if me not in local:
                    local[me] = buildcat.connect(client.host, client.port, client.root)
                return local[me].map(NOOP, range(per_job), name=f"small-{n}").id

            ids = list(pool.map(one, range(jobs)))
            for each in local.values():
                each.close()
        return ids

    def one_big(client: buildcat.Client) -> list[str]:
        return [client.map(NOOP, range(tasks), name="big").id]

    with tempfile.TemporaryDirectory(prefix="bench-small-") as folder:
        small = _drain(Path(folder), many, workers, tasks)
    with tempfile.TemporaryDirectory(prefix="bench-big-") as folder:
        big = _drain(Path(folder), one_big, workers, tasks)
    watched: dict[str, Any] = {}
    if viewers:
        with tempfile.TemporaryDirectory(prefix="bench-watched-") as folder:
            watched = _drain(Path(folder), many, workers, tasks, viewers)
    return {
        "jobs": jobs,
        "per_job": per_job,
        "workers": workers,
        "small_rate": small["rate"],
        "big_rate": big["rate"],
        "ratio": small["rate"] / big["rate"],
        "small_leases_per_task": small["leases_per_task"],
        "big_leases_per_task": big["leases_per_task"],
        **(
            {
                "viewers": viewers,
                "watched_rate": watched["rate"],
                "watched_ratio": watched["rate"] / small["rate"],
                "watched_stream_mb": watched["stream_mb"],
            }
            if watched
            else {}
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--per-job", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--viewers", type=int, default=0, help="dashboards open, small jobs")
    parser.add_argument("--skip", default="", help="cost,small: parts to leave out")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    figures: dict[str, Any] = {}
    if "cost" not in skip:
        cost = figures["worker_cost"] = worker_cost(args.tasks, args.workers)
        print(f"no-op throughput ({cost['tasks']:,} tasks, {cost['workers']} workers): "
              f"{cost['throughput']:,.0f} tasks/s")  # fmt: skip
        print(f"CPU per task: server {cost['server_cpu_us']:.0f} us")
        for n, (agent, child) in enumerate(
            zip(cost["agent_cpu_us"], cost["child_cpu_us"], strict=True)
        ):
            children = ", ".join(f"{c:.0f}" for c in child)
            print(f"  worker {n}: agent {agent:.0f} us, child {children} us")
    if "small" not in skip:
        small = small_jobs(args.jobs, args.per_job, args.workers, args.viewers)
        figures["small_jobs"] = small
        print(f"{small['jobs']:,} jobs x {small['per_job']} tasks: {small['small_rate']:,.0f} "
              f"tasks/s, {small['small_leases_per_task']:.2f} leases a task")  # fmt: skip
        print(f"one {small['jobs'] * small['per_job']:,}-task job: {small['big_rate']:,.0f} "
              f"tasks/s, {small['big_leases_per_task']:.2f} leases a task")  # fmt: skip
        print(f"small jobs / big job: {small['ratio']:.2f}x")
        if args.viewers:
            print(f"the small jobs with {args.viewers} dashboards open: "
                  f"{small['watched_rate']:,.0f} tasks/s, {small['watched_ratio']:.2f}x "
                  f"({small['watched_stream_mb']:.1f} MB sent)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
