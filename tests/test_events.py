"""The dashboard's event stream: one overview per update for every viewer together, made
from what changed rather than from every task, and never stopped by one job's data."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from types import SimpleNamespace
from typing import Any

import aiohttp

from buildcat.server.scheduler import Scheduler, TaskSpec
from buildcat.server.web import Overview
from tests.conftest import Farm, secret_header


class Stream:
    """One open ``GET /api/v1/events``: keeps the latest ``update`` it received."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.latest: dict[str, Any] | None = None
        self.updates = 0
        self._task = asyncio.create_task(self._read(session, url))

    async def _read(self, session: aiohttp.ClientSession, url: str) -> None:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
            assert response.status == 200
            data: list[str] = []
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("data: "):
                    data.append(line[len("data: ") :])
                elif not line and data:
                    self.latest = json.loads("\n".join(data))  # strict: NaN would fail here
                    self.updates += 1
                    data = []

    def job_state(self, job_id: str) -> str | None:
        for job in (self.latest or {}).get("jobs", []):
            if job["id"] == job_id:
                return str(job["state"])
        return None

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


async def metric(session: aiohttp.ClientSession, base: str, name: str) -> float:
    async with session.get(f"{base}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"/metrics has no {name}")


def test_every_open_stream_shares_one_overview_per_update(farm: Farm) -> None:
    viewers, changes = 8, 8
    base = f"http://127.0.0.1:{farm.port}"
    events = f"{base}/api/v1/events"

    async def scenario() -> None:
        async with aiohttp.ClientSession(headers=secret_header(farm.root)) as session:
            body = {"tasks": [{"payload": {"function": "farm_jobs:square", "args": [n]}}
                              for n in range(3)], "name": "watched"}  # fmt: skip
            async with session.post(f"{base}/api/v1/jobs", json=body) as response:
                assert response.status == 201
                job_id = (await response.json())["id"]
            streams = [Stream(session, events) for _ in range(viewers)]
            await until(lambda: all(s.job_state(job_id) == "queued" for s in streams))
            assert await metric(session, base, "buildcat_dashboard_streams") == viewers
            before = await metric(session, base, "buildcat_dashboard_overviews_total")
            started = time.monotonic()
            for change in range(changes):
                action, shown = ("pause", "paused") if change % 2 == 0 else ("resume", "queued")
                async with session.post(f"{base}/api/v1/jobs/{job_id}/{action}", json={}) as r:
                    assert r.status == 200
                # Every viewer sees every change before the next one is made.
                await until(lambda s=shown: all(x.job_state(job_id) == s for x in streams))
            elapsed = time.monotonic() - started
            made = await metric(session, base, "buildcat_dashboard_overviews_total") - before
            # One overview per change for all 8 viewers (one stream each would make 64),
            # plus at most one a second for the lease checks that wake the stream too.
            assert made <= changes + elapsed + 2, (made, elapsed)
            for stream in streams:
                await stream.close()
            # The last viewer gone, a new one gets the current state at once.
            late = Stream(session, events)
            await until(lambda: late.job_state(job_id) == "queued")
            await late.close()

    asyncio.run(scenario())


class CountedTasks(list[Any]):
    """A job's task list that fails the test if someone walks through all of it."""

    walks = 0

    def __iter__(self) -> Any:
        CountedTasks.walks += 1
        return super().__iter__()


def test_the_overview_follows_new_results_without_walking_every_task() -> None:
    scheduler = Scheduler()
    frames = [TaskSpec({"function": "f", "frames": [n]}) for n in range(2_000)]
    big = scheduler.submit(frames, 0.0, name="frames", meta={"frames": "1-2000"})
    worker = scheduler.register("w", 4, {}, 0.0)
    farm = SimpleNamespace(scheduler=scheduler, config=SimpleNamespace(name="t"))
    overview = Overview()

    def finish(count: int, now: float) -> None:
        for task in scheduler.lease(worker.id, count, now):
            scheduler.complete(worker.id, task.id, {"outputs": [f"f{task.index}.png"]}, now)

    finish(4, 1.0)
    first = json.loads(overview.document(farm))  # type: ignore[arg-type]
    assert first["jobs"][0]["frames"] == {"done": 4, "total": 2_000}
    big.tasks = CountedTasks(big.tasks)
    for step in range(3):
        finish(4, 2.0 + step)
        [task] = scheduler.lease(worker.id, 1, 2.5 + step)
        scheduler.progress(worker.id, task.id, 0.5, "")
        view = json.loads(overview.document(farm))["jobs"][0]  # type: ignore[arg-type]
        done = 4 + 5 * step + 4
        assert view["frames"] == {"done": done, "total": 2_000}
        assert view["tasks"]["done"] == done and view["thumbnail"] is True
        assert abs(view["progress"] - (done + 0.5) / 2_000) < 1e-9
        scheduler.complete(worker.id, task.id, {"outputs": ["x.exr"]}, 3.0 + step)
    assert CountedTasks.walks == 0


def test_a_worker_holding_many_tasks_lists_the_first_twenty_and_counts_the_rest() -> None:
    scheduler = Scheduler()
    job = scheduler.submit([TaskSpec({"function": "f"}) for _ in range(30)], 0.0)
    worker = scheduler.register("w", 2, {}, 0.0)
    scheduler.lease(worker.id, 30, 0.0)  # prefetched: a worker of short tasks holds many
    farm = SimpleNamespace(scheduler=scheduler, config=SimpleNamespace(name="t"))
    [shown] = json.loads(Overview().document(farm))["workers"]  # type: ignore[arg-type]
    assert shown["holding"] == 30
    assert [task["id"] for task in shown["current"]] == [f"{job.id}.{n}" for n in range(20)]
