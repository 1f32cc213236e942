"""What the benchmarks share: a farm on loopback, percentiles, waiting, /proc readings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

import buildcat
from buildcat import auth, launch, protocol


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark: {what} did not happen within {timeout:g}s")
        time.sleep(0.01)


@contextlib.contextmanager
def farm(
    root: Path,
    workers: int,
    *worker_args: str,
    env: dict[str, str] | None = None,
    server_args: tuple[str, ...] = (),
) -> Iterator[tuple[buildcat.Client, int, int]]:
    """A server and ``workers`` worker processes on loopback; yields (client, port, pid)."""
    server, port = launch.start_server(
        root, "--log-level", "warning", "--no-discovery", *server_args
    )
    previous = dict(os.environ)
    os.environ.update(env or {})
    try:
        processes = [
            launch.start_worker(
                port, root, "--name", f"bench-{n}", "--log-level", "warning", *worker_args
            )
            for n in range(workers)
        ]
    finally:
        os.environ.clear()
        os.environ.update(previous)
    client = buildcat.connect("127.0.0.1", port, root)
    try:
        wait_until(lambda: len(client.workers()) >= workers, 60, f"{workers} workers joining")
        yield client, port, server.pid
    finally:
        client.close()
        launch.stop_all(processes)
        launch.stop(server)


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class EventStreams:
    """``count`` dashboards' event streams, read (and thrown away) on a thread of their own."""

    def __init__(self, port: int, token: str, count: int) -> None:
        self.url = f"http://127.0.0.1:{port}{protocol.API_PREFIX}/events"
        self.headers = {"Authorization": auth.authorization(token)}
        self.count = count
        self.updates = [0] * count
        self.received = [0] * count
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.future: Any = None

    def __enter__(self) -> EventStreams:
        self.thread.start()
        self.future = asyncio.run_coroutine_threadsafe(self._read_all(), self.loop)
        wait_until(lambda: all(self.updates) or self.future.done(), 120, "dashboards connecting")
        if self.future.done():
            self.future.result()  # raises what stopped them
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()

    def bytes_received(self) -> int:
        return sum(self.received)

    async def _stop(self) -> None:
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _read_all(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(headers=self.headers, timeout=timeout) as session:
            await asyncio.gather(*(self._read(session, n) for n in range(self.count)))

    async def _read(self, session: aiohttp.ClientSession, number: int) -> None:
        async with session.get(self.url) as response:
            if response.status != 200:
                raise SystemExit(f"benchmark: the event stream answered HTTP {response.status}")
            async for line in response.content:
                self.received[number] += len(line)
                if line.startswith(b"event: update"):
                    self.updates[number] += 1
