"""buildcat against its peers, in one run on this machine: prints a table, writes JSON.

    python benchmarks/run.py [--quick] [--json FILE] [--skip SECTION,...]

1. No-op tasks through `farm` (server + K worker processes) and the same workload on
   RQ + Redis (Debian's redis-server, started and stopped here; RQ's no-fork
   SimpleWorker, K processes): throughput submit -> last result, and submit -> start
   latency on an idle queue (p50/p99).
2. Scale: 10,000 simulated workers (one asyncio load generator, one connection each)
   long-poll one server; a 10,000-task job arrives; when is the submit answered, when
   does each worker get its task, and how much memory does the server hold.
3. Dashboards: the same no-op throughput with no event stream open and with 20 open
   (a dashboard each), while a paused 200,000-task job waits in the queue.
4. Blender: a 24-frame 64x64 Cycles scene (16 samples) rendered by the farm with one
   worker and chunk size 1, against one `blender -b scene.blend -a` on the same file;
   and the farm again with Blender started per task (BUILDCAT_BLENDER_WARM=0).
5. One 1,000,000-task no-op job with the default settings (million.py): throughput, the
   longest wait of a ping sent every 50 ms, the server's memory peak, a restart.
6. CPU per task of the server, each worker agent and each agent's child; 10,000 jobs of
   4 tasks against one 40,000-task job, leases per task, and the small jobs again with
   20 dashboards open (worker_cost.py).
7. 300 tasks returning 1 MB each: the server's memory against the bytes it holds
   (results.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    EventStreams,
    cpu_seconds,
    farm,
    free_port,
    memory_mb,
    percentile,
    wait_until,
)
from million import million
from results import big_results
from worker_cost import small_jobs, worker_cost

import buildcat
from buildcat import auth, launch, protocol
from buildcat.blender import build_demo_scene, find_blender

HERE = Path(__file__).resolve().parent
SCALE_WORKERS = 10_000
DASHBOARDS = 20
BACKLOG_TASKS = 200_000


# ---- 1. no-op tasks: farm and RQ ----------------------------------------------------------


def farm_noop(tasks: int, workers: int, rounds: int, samples: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-farm-") as folder,
        farm(Path(folder), workers, "--no-blender") as (client, _, _),
    ):
        client.map("buildcat.jobs.builtin:noop", range(500)).wait(timeout=60)  # warm up
        rates = []
        for _ in range(rounds):
            started = time.perf_counter()
            client.map("buildcat.jobs.builtin:noop", range(tasks)).wait(timeout=600)
            rates.append(tasks / (time.perf_counter() - started))
        latencies = []
        for _ in range(samples):
            submitted = time.time()
            job = client.submit("buildcat.jobs.builtin:started_at")
            job.wait(timeout=60)
            latencies.append((job.results()[0] - submitted) * 1000)
    return {
        "throughput": statistics.median(rates),
        "rounds": [round(rate) for rate in rates],
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
    }


def rq_noop(tasks: int, workers: int, rounds: int, samples: int) -> dict[str, Any]:
    try:
        import redis
        from rq import Queue
    except ImportError:
        raise SystemExit("benchmark: RQ is missing: pip install -e '.[bench]'") from None
    server_binary = shutil.which("redis-server")
    if server_binary is None:
        raise SystemExit("benchmark: redis-server is missing: sudo apt-get install redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as folder:
        redis_server = subprocess.Popen(
            [
                server_binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                folder,
            ],
            stdout=subprocess.DEVNULL,
        )
        connection = redis.Redis(host="127.0.0.1", port=port)
        wait_until(lambda: _redis_up(connection), 30, "redis-server starting")
        url = f"redis://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        rq_workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rq.cli",
                    "worker",
                    "--url",
                    url,
                    "--worker-class",
                    "rq.worker.SimpleWorker",
                    "--quiet",
                    "bench",
                ],
                env=env,
                cwd=HERE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        try:
            from rq import Worker

            wait_until(
                lambda: len(Worker.all(connection=connection)) >= workers, 60, "RQ workers joining"
            )
            queue = Queue("bench", connection=connection)
            rates = []
            for _ in range(rounds):
                finished = queue.finished_job_registry
                before = finished.count
                started = time.perf_counter()
                with connection.pipeline() as pipe:
                    queue.enqueue_many(
                        [Queue.prepare_data("rq_jobs.noop", result_ttl=600) for _ in range(tasks)],
                        pipeline=pipe,
                    )
                    pipe.execute()
                wait_until(
                    lambda f=finished, b=before: f.count - b >= tasks, 900, "the RQ round finishing"
                )
                rates.append(tasks / (time.perf_counter() - started))
            latencies = []
            for _ in range(samples):
                submitted = time.time()
                job = queue.enqueue("rq_jobs.started_at")
                wait_until(
                    lambda j=job: j.get_status(refresh=True) == "finished",
                    60,
                    "an RQ job finishing",
                )
                latencies.append((float(job.return_value()) - submitted) * 1000)
        finally:
            for process in rq_workers:
                launch.end(process, signal.SIGINT, 10)
            connection.close()
            launch.end(redis_server, signal.SIGTERM, 10)
    return {
        "throughput": statistics.median(rates),
        "rounds": [round(rate) for rate in rates],
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
    }


def _redis_up(connection: Any) -> bool:
    try:
        return bool(connection.ping())
    except Exception:
        return False


# ---- 2. 2,000 workers long-polling one server ----------------------------------------------


def scale(workers: int) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 2 * workers + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # the server inherits it
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        root = Path(folder)
        # Every simulated worker comes from 127.0.0.1, where a real fleet comes from as
        # many addresses: the per-address cap on connections still opening would close them.
        server, port = launch.start_server(
            root,
            "--log-level",
            "warning",
            "--no-discovery",
            "--lease-timeout",
            "120",
            "--max-unauthenticated",
            str(workers + 1024),
        )
        try:
            token = auth.load_token(root)
            figures = asyncio.run(_scale(port, token, workers))
            figures["server_rss_mb"] = memory_mb(server.pid, "VmRSS")
            figures["server_peak_mb"] = memory_mb(server.pid, "VmHWM")
        finally:
            launch.stop(server)
    return figures


class _Connection(asyncio.Protocol):
    """One simulated worker's keep-alive HTTP/1.1 connection, one request at a time. Bare
    asyncio, not aiohttp's client: the 10,000 workers share one process and two cores with
    the server, and aiohttp's client spent more CPU per request (~270 us) than the server
    it measures, so the figures were the load generator's."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        lines = bytes(self.buffer[:end]).split(b"\r\n")
        fields = dict(line.lower().split(b":", 1) for line in lines[1:] if b":" in line)
        if b"content-length" not in fields:
            self.waiter.set_exception(RuntimeError(f"benchmark: no length: {lines[0]!r}"))
            return
        length = int(fields[b"content-length"])
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        self.waiter.set_result((int(lines[0].split()[1]), body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("benchmark: the server closed it"))

    async def call(self, method: str, path: str, body: Any) -> Any:
        assert self.transport is not None
        data = protocol.pack(body) if body is not None else b""
        self.waiter = asyncio.get_running_loop().create_future()
        request = f"{method} {protocol.API_PREFIX}{path} HTTP/1.1\r\n".encode()
        self.transport.write(request + self.head + b"Content-Length: %d\r\n\r\n" % len(data) + data)
        status, payload = await self.waiter
        if status >= 400:
            raise SystemExit(f"benchmark: {path}: HTTP {status}")
        return protocol.unpack(payload, trusted=True)


async def _scale(port: int, token: str, count: int) -> dict[str, Any]:
    head = (
        f"Host: 127.0.0.1\r\nAuthorization: {auth.authorization(token)}\r\n"
        f"Content-Type: {protocol.MSGPACK}\r\nAccept: {protocol.MSGPACK}\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(100)

    async def connect() -> _Connection:
        async with gate:
            _, connection = await loop.create_connection(
                lambda: _Connection(head), "127.0.0.1", port
            )
            return connection

    async def register(connection: _Connection, n: int) -> str:
        async with gate:
            reply = await connection.call("POST", "/workers", {"name": f"sim-{n}", "slots": 1})
            return str(reply["id"])

    started = time.perf_counter()
    connections = await asyncio.gather(*(connect() for _ in range(count)))
    ids = await asyncio.gather(*(register(c, n) for n, c in enumerate(connections)))
    registered = time.perf_counter() - started
    received: dict[str, float] = {}

    async def poll(connection: _Connection, worker_id: str) -> None:
        while True:
            reply = await connection.call(
                "POST", f"/workers/{worker_id}/lease", {"want": 1, "wait": 60}
            )
            tasks = reply.get("tasks", [])
            if tasks:
                now = time.perf_counter()
                for task in tasks:
                    received[task["id"]] = now
                done = [{"id": task["id"], "ok": True, "result": None} for task in tasks]
                await connection.call("POST", f"/workers/{worker_id}/report", {"done": done})
                return

    pollers = [asyncio.create_task(poll(c, w)) for c, w in zip(connections, ids, strict=True)]
    control = await connect()
    deadline = time.monotonic() + 120
    while int((await control.call("GET", "/ping", None))["waiting_workers"]) < count:
        if time.monotonic() > deadline:
            raise SystemExit("benchmark: the simulated workers never all parked")
        await asyncio.sleep(0.05)
    body = {
        "tasks": [{"payload": {"function": "buildcat.jobs.builtin:noop"}}] * count,
        "name": "scale",
    }
    submitted_at = time.perf_counter()
    await control.call("POST", "/jobs", body)
    answered = time.perf_counter() - submitted_at
    await asyncio.wait_for(asyncio.gather(*pollers), 120)
    for connection in (*connections, control):
        assert connection.transport is not None
        connection.transport.close()
    latencies = [(at - submitted_at) * 1000 for at in received.values()]
    return {
        "workers": count,
        "register_s": registered,
        "dispatch_p50_ms": percentile(latencies, 0.5),
        "dispatch_p99_ms": percentile(latencies, 0.99),
        "dispatch_all_ms": max(latencies),
        "submit_answered_ms": answered * 1000,
    }


# ---- 3. open dashboards ----------------------------------------------------------------------


def dashboards(tasks: int, workers: int, rounds: int, viewers: int, backlog: int) -> dict[str, Any]:
    """No-op throughput with 0 and with ``viewers`` event streams open, in one run, with a
    paused ``backlog``-task job queued (what each update has to describe)."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-dash-") as folder,
        # No snapshot of the big queue in the middle of a round: its pause is not the
        # dashboards' cost (README, restart figures), and it would land in one phase only.
        farm(
            Path(folder), workers, "--no-blender", server_args=("--snapshot-every", "100000000")
        ) as (client, port, server_pid),
    ):
        # No worker meets it, so none starts it before the pause.
        waiting = client.map(
            "buildcat.jobs.builtin:noop", range(backlog), requires=["bench-nobody"], name="backlog"
        )
        waiting.pause()
        client.map("buildcat.jobs.builtin:noop", range(500)).wait(timeout=60)  # warm up

        def rate(cpu: list[float]) -> float:
            """Tasks per second; appends the server's CPU microseconds per task to ``cpu``
            (a figure other load on the machine leaves alone)."""
            used = cpu_seconds(server_pid)
            started = time.perf_counter()
            client.map("buildcat.jobs.builtin:noop", range(tasks)).wait(timeout=1800)
            elapsed = time.perf_counter() - started
            cpu.append((cpu_seconds(server_pid) - used) / tasks * 1e6)
            return tasks / elapsed

        closed, opened, received = [], [], 0
        cpu_closed: list[float] = []
        cpu_opened: list[float] = []
        for _ in range(rounds):  # alternating, so a drift of the machine hits both alike
            closed.append(rate(cpu_closed))
            with EventStreams(port, auth.load_token(Path(folder)), viewers) as streams:
                opened.append(rate(cpu_opened))
                received += streams.bytes_received()
    alone, watched = statistics.median(closed), statistics.median(opened)
    return {
        "viewers": viewers,
        "backlog": backlog,
        "throughput_0": alone,
        "throughput_open": watched,
        "ratio": watched / alone,
        "rounds_0": [round(r) for r in closed],
        "rounds_open": [round(r) for r in opened],
        "server_cpu_us_0": statistics.median(cpu_closed),
        "server_cpu_us_open": statistics.median(cpu_opened),
        "stream_mb": received / 2**20,
    }


# ---- 4. Blender ------------------------------------------------------------------------------


def blender_runs(cold: bool) -> dict[str, Any]:
    binary = shutil.which("blender")
    if binary is None:
        raise SystemExit("benchmark: Debian's blender is missing: sudo apt-get install blender")
    install = find_blender(binary)
    assert install is not None
    figures: dict[str, Any] = {"blender": install.describe()}
    with tempfile.TemporaryDirectory(prefix="bench-blender-") as folder:
        root = Path(folder)
        (root / "shots").mkdir()
        scene = root / "shots" / "spin.blend"
        build_demo_scene(install, scene, frames=24, resolution=64, samples=16)

        started = time.perf_counter()
        subprocess.run(
            [
                binary,
                "-b",
                str(scene),
                "-o",
                str(root / "plain" / "frame_####"),
                "-F",
                "PNG",
                "-a",
                "--",
                "--cycles-device",
                "CPU",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        figures["plain_s"] = time.perf_counter() - started
        assert len(list((root / "plain").glob("*.png"))) == 24

        runs = [("warm_s", {})]
        if cold:
            runs.append(("cold_s", {"BUILDCAT_BLENDER_WARM": "0"}))
        for key, env in runs:
            with farm(root, 1, "--blender", binary, env=env) as (client, _, _):
                started = time.perf_counter()
                job = client.render("shots/spin.blend", "1-24", chunk=1, output=f"{key}/f_####")
                job.wait(timeout=900)
                figures[key] = time.perf_counter() - started
            assert len(list((root / key).glob("*.png"))) == 24
    return figures


# ---- the table -------------------------------------------------------------------------------


def machine() -> str:
    cores = os.cpu_count() or 0
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.node()}: {cores} cores, {memory:.0f} GiB, {platform.machine()}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=10_000, help="no-op tasks per round")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, both sides")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--scale-workers", type=int, default=SCALE_WORKERS)
    parser.add_argument("--dashboards", type=int, default=DASHBOARDS, help="open event streams")
    parser.add_argument("--backlog", type=int, default=BACKLOG_TASKS, help="paused job's tasks")
    parser.add_argument("--million", type=int, default=1_000_000, help="tasks of the big job")
    parser.add_argument("--big-results", type=int, default=300, help="tasks returning 1 MB")
    parser.add_argument("--cost-tasks", type=int, default=20_000, help="no-op tasks, CPU per task")
    parser.add_argument("--small-jobs", type=int, default=10_000, help="jobs of 4 tasks")
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated: rq, scale, dashboards, blender, cold, million, results, cost, small",
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs, no cold Blender")
    parser.add_argument("--json", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    if args.quick:
        args.tasks, args.rounds, args.latency_samples = 2_000, 1, 100
        args.backlog = min(args.backlog, 20_000)
        args.million = min(args.million, 20_000)
        args.scale_workers = min(args.scale_workers, 2_000)
        args.big_results = min(args.big_results, 30)
        args.cost_tasks, args.small_jobs = min(args.cost_tasks, 2_000), min(args.small_jobs, 200)
        skip.add("cold")

    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "buildcat": buildcat.__version__,
        "settings": {
            "tasks": args.tasks,
            "workers": args.workers,
            "rounds": args.rounds,
            "latency_samples": args.latency_samples,
        },
    }
    print(f"buildcat {buildcat.__version__} benchmark, {results['date']}")
    print(f"machine: {results['machine']}\n")

    print("no-op tasks through farm ...", file=sys.stderr)
    results["farm"] = farm_noop(args.tasks, args.workers, args.rounds, args.latency_samples)
    if "rq" not in skip:
        print("no-op tasks through RQ + Redis ...", file=sys.stderr)
        results["rq"] = rq_noop(args.tasks, args.workers, args.rounds, args.latency_samples)
    if "scale" not in skip:
        print(f"{args.scale_workers} simulated workers ...", file=sys.stderr)
        results["scale"] = scale(args.scale_workers)
    if "dashboards" not in skip:
        print(f"no-op tasks with 0 and {args.dashboards} dashboards open ...", file=sys.stderr)
        results["dashboards"] = dashboards(
            args.tasks, args.workers, args.rounds, args.dashboards, args.backlog
        )
    if "blender" not in skip:
        print("Blender, 24 frames ...", file=sys.stderr)
        results["blender"] = blender_runs(cold="cold" not in skip)
    if "million" not in skip:
        print(f"one {args.million:,}-task job, pinged every 50 ms ...", file=sys.stderr)
        results["million"] = million(args.million, args.workers)
        print(f"the same {args.million:,}-task job, journal only ...", file=sys.stderr)
        results["million_journal"] = million(args.million, args.workers, journal_only=True)
    if "cost" not in skip:
        print(f"CPU per task, {args.cost_tasks:,} no-op tasks ...", file=sys.stderr)
        results["cost"] = worker_cost(args.cost_tasks, args.workers)
    if "small" not in skip:
        print(f"{args.small_jobs:,} jobs of 4 tasks against one big job ...", file=sys.stderr)
        results["small"] = small_jobs(args.small_jobs, 4, args.workers, args.dashboards)
    if "results" not in skip:
        print(f"{args.big_results} tasks returning 1 MB each ...", file=sys.stderr)
        results["results"] = big_results(args.big_results, 1_000_000, args.workers)

    rows = table(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())
        if number == 0:
            print("  ".join("-" * width for width in widths))
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {args.json}")


def table(results: dict[str, Any]) -> list[list[str]]:
    settings = results["settings"]
    farm_, rq = results["farm"], results.get("rq")
    rows = [["measure", "buildcat", "peer", "ratio", "target", "verdict"]]
    name = f"no-op throughput ({settings['tasks']:,} tasks, {settings['workers']} workers)"
    if rq:
        ratio = farm_["throughput"] / rq["throughput"]
        rows.append(
            [
                name,
                f"{farm_['throughput']:,.0f}/s",
                f"{rq['throughput']:,.0f}/s (RQ)",
                f"{ratio:.1f}x",
                ">= 5,000/s and >= 10x RQ",
                verdict(farm_["throughput"] >= 5000 and ratio >= 10),
            ]
        )
        ratio = farm_["p50_ms"] / rq["p50_ms"]
        rows.append(
            [
                "submit->start p50, idle",
                f"{farm_['p50_ms']:.2f} ms",
                f"{rq['p50_ms']:.2f} ms (RQ)",
                f"{ratio:.2f}x",
                "<= 0.5x RQ",
                verdict(ratio <= 0.5),
            ]
        )
        rows.append(
            [
                "submit->start p99, idle",
                f"{farm_['p99_ms']:.2f} ms",
                f"{rq['p99_ms']:.2f} ms (RQ)",
                f"{farm_['p99_ms'] / rq['p99_ms']:.2f}x",
                "",
                "",
            ]
        )
    else:
        rows.append(
            [
                name,
                f"{farm_['throughput']:,.0f}/s",
                "-",
                "-",
                ">= 5,000/s",
                verdict(farm_["throughput"] >= 5000),
            ]
        )
        rows.append(
            [
                "submit->start p50 / p99, idle",
                f"{farm_['p50_ms']:.2f} / {farm_['p99_ms']:.2f} ms",
                "-",
                "-",
                "",
                "",
            ]
        )
    scale_ = results.get("scale")
    if scale_:
        count = scale_["workers"]
        rows.append(
            [
                f"{count:,} workers: {count:,}-task job, dispatch p50",
                f"{scale_['dispatch_p50_ms']:.0f} ms",
                "",
                "",
                "",
                "",
            ]
        )
        rows.append(
            [
                f"{count:,} workers: dispatch p99 (all: {scale_['dispatch_all_ms']:.0f} ms)",
                f"{scale_['dispatch_p99_ms']:.0f} ms",
                "",
                "",
                "<= 1,000 ms",
                verdict(scale_["dispatch_p99_ms"] <= 1000),
            ]
        )
        rows.append(
            [
                f"{count:,} workers: server memory (peak)",
                f"{scale_['server_rss_mb']:.0f} MB ({scale_['server_peak_mb']:.0f})",
                "",
                "",
                "<= 250 MB",
                verdict(scale_["server_peak_mb"] <= 250),
            ]
        )
        rows.append(
            [
                f"{count:,} workers: the submit answered after",
                f"{scale_['submit_answered_ms']:.0f} ms",
                "",
                "",
                "<= 50 ms",
                verdict(scale_["submit_answered_ms"] <= 50),
            ]
        )
    dash = results.get("dashboards")
    if dash:
        backlog = f"{dash['backlog']:,}-task paused job queued"
        rows.append(
            [
                f"no-op throughput, 0 dashboards open ({backlog})",
                f"{dash['throughput_0']:,.0f}/s",
                "",
                "",
                "",
                "",
            ]
        )
        rows.append(
            [
                f"  same, {dash['viewers']} dashboards open",
                f"{dash['throughput_open']:,.0f}/s",
                "",
                f"{dash['ratio']:.2f}x",
                ">= 0.9x",
                verdict(dash["ratio"] >= 0.9),
            ]
        )
        rows.append(
            [
                "  server CPU per task, 0 / "
                f"{dash['viewers']} dashboards open ({dash['stream_mb']:.1f} MB sent)",
                f"{dash['server_cpu_us_0']:.0f} / {dash['server_cpu_us_open']:.0f} µs",
                "",
                f"{dash['server_cpu_us_open'] / dash['server_cpu_us_0']:.2f}x",
                "",
                "",
            ]
        )
    rows += million_rows(results.get("million"), results.get("million_journal"))
    rows += worker_rows(results.get("cost"), results.get("small"))
    big = results.get("results")
    if big:
        rows.append(
            [
                f"{big['tasks']:,} results of 1 MB: server memory peak / bytes held",
                f"{big['server_rss_peak'] / 2**20:.0f} MB / {big['bytes_held'] / 2**20:.0f} MB",
                "",
                f"{big['ratio']:.2f}x",
                "<= 1.5x",
                verdict(big["ratio"] <= 1.5),
            ]
        )
    blender = results.get("blender")
    if blender:
        ratio = blender["warm_s"] / blender["plain_s"]
        rows.append(
            [
                "Blender 24 frames, chunk 1, 1 worker",
                f"{blender['warm_s']:.1f} s",
                f"{blender['plain_s']:.1f} s (blender -a)",
                f"{ratio:.2f}x",
                "<= 1.1x",
                verdict(ratio <= 1.1),
            ]
        )
        if "cold_s" in blender:
            rows.append(
                [
                    "  same, Blender started per task",
                    f"{blender['cold_s']:.1f} s",
                    "",
                    f"{blender['cold_s'] / blender['plain_s']:.2f}x",
                    "",
                    "",
                ]
            )
    return rows


def million_rows(
    big: dict[str, Any] | None, journal: dict[str, Any] | None = None
) -> list[list[str]]:
    """The 1,000,000-task job's rows (issue 17's targets); ``journal``: the same job on a
    server that never snapshots."""
    if not big:
        return []
    rows = _million_rows(big)
    if journal:
        rows += [
            [
                "same job, journal only (no snapshot): throughput",
                f"{journal['throughput']:,.0f}/s",
                "",
                "",
                "",
                "",
            ],
            [
                f"  its restart, replaying the journal ({journal['state_mb']:.0f} MB on disk)",
                f"{journal['restart_s']:.1f} s",
                f"{big['restart_s']:.1f} s (from the snapshot)",
                f"{big['restart_s'] / journal['restart_s']:.2f}x",
                "snapshot faster",
                verdict(big["restart_s"] < journal["restart_s"]),
            ],
        ]
    return rows


def _million_rows(big: dict[str, Any]) -> list[list[str]]:
    tasks = f"{big['tasks']:,}"
    return [
        [
            f"{tasks}-task job: throughput, submit to last result",
            f"{big['throughput']:,.0f}/s",
            "",
            "",
            ">= 7,000/s",
            verdict(big["throughput"] >= 7000),
        ],
        [
            f"  longest ping wait (every 50 ms, {big['pings']:,} pings); server's own",
            f"{big['ping_max_ms']:.0f} ms; {big['loop_pause_max_ms']:.0f} ms",
            "",
            "",
            "<= 100 ms",
            verdict(big["ping_max_ms"] <= 100),
        ],
        [
            f"  the submit answered after ({big['snapshots']} snapshots in the background)",
            f"{big['submit_s']:.1f} s",
            "",
            "",
            "",
            "",
        ],
        [
            "  server memory peak",
            f"{big['server_peak_mb']:.0f} MB ({big['bytes_per_task']:.0f} B a task)",
            "",
            "",
            "<= 800 MB",
            verdict(big["server_peak_mb"] <= 800),
        ],
        [
            "  the farm stopped after (its server writing the snapshot the job's end made due)",
            f"{big['stop_s']:.1f} s",
            "",
            "",
            "",
            "",
        ],
        [
            f"  restart from its state ({big['state_mb']:.0f} MB on disk)",
            f"{big['restart_s']:.1f} s",
            "",
            "",
            "<= 5 s",
            verdict(big["restart_s"] <= 5),
        ],
    ]


def worker_rows(cost: dict[str, Any] | None, small: dict[str, Any] | None) -> list[list[str]]:
    """CPU per task per process, and many small jobs against one big one (issue 17)."""
    rows = []
    if cost:
        agents = "/".join(f"{us:.0f}" for us in cost["agent_cpu_us"])
        children = "/".join(f"{us:.0f}" for each in cost["child_cpu_us"] for us in each)
        rows += [
            [
                f"no-op throughput ({cost['tasks']:,} tasks, {cost['workers']} worker processes)",
                f"{cost['throughput']:,.0f}/s",
                "",
                "",
                ">= 10,000/s",
                verdict(cost["throughput"] >= 10_000),
            ],
            [
                "  CPU per task: server; each agent; each agent's child",
                f"{cost['server_cpu_us']:.0f}; {agents}; {children} µs",
                "",
                "",
                "",
                "",
            ],
        ]
    if small:
        tasks = small["jobs"] * small["per_job"]
        rows += [
            [
                f"{small['jobs']:,} jobs of {small['per_job']} tasks, drained",
                f"{small['small_rate']:,.0f}/s ({small['small_leases_per_task']:.2f} leases/task)",
                f"{small['big_rate']:,.0f}/s (one {tasks:,}-task job)",
                f"{small['ratio']:.2f}x",
                ">= 0.5x",
                verdict(small["ratio"] >= 0.5),
            ]
        ]
        if "watched_rate" in small:
            rows.append(
                [
                    f"  same, {small['viewers']} dashboards open "
                    f"({small['watched_stream_mb']:.1f} MB sent)",
                    f"{small['watched_rate']:,.0f}/s",
                    f"{small['small_rate']:,.0f}/s (none open)",
                    f"{small['watched_ratio']:.2f}x",
                    ">= 0.9x",
                    verdict(small["watched_ratio"] >= 0.9),
                ]
            )
    return rows


if __name__ == "__main__":
    main()
