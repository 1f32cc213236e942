"""The farm's events for scripts: ``GET /api/v1/events/feed``, one JSON object per line.

The dashboard's stream (:mod:`buildcat.server.web`) sends whole overviews; this one says
what happened: a job submitted, started, paused, resumed, retried, ended or deleted, a
worker that joined or left. Events are worked out from the jobs each change touched (the
same changes that wake the dashboard), only while someone listens. A reader that falls
too far behind is told so and dropped: it never holds the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

import buildcat
from buildcat.server.scheduler import FINAL_JOB_STATES, Job, Scheduler

log = logging.getLogger(__name__)

#: Lines one reader may have waiting before it is dropped as too slow.
MAX_BACKLOG = 10_000
#: An empty line this often, so a reader can tell a quiet farm from a dead connection.
HEARTBEAT_SECONDS = 15.0
CONTENT_TYPE = "application/x-ndjson"


@dataclass(slots=True, eq=False)
class Reader:
    lines: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(MAX_BACKLOG))
    lost: bool = False


@dataclass(slots=True, frozen=True)
class _Seen:
    state: str
    started_at: float | None
    finished_at: float | None
    paused: bool


class Feed:
    """Every open feed of one server, and what they were last told of each job and worker."""

    def __init__(self) -> None:
        self.readers: set[Reader] = set()
        self._jobs: dict[str, _Seen] = {}
        self._workers: dict[str, bool] = {}
        self.closed = False

    def join(self, scheduler: Scheduler) -> Reader:
        if not self.readers:  # the state as it is now: only what happens from here is told
            self._jobs = {job.id: _seen(job) for job in scheduler.jobs.values()}
            self._workers = {w.id: w.online for w in scheduler.workers.values()}
        reader = Reader()
        self.readers.add(reader)
        return reader

    def leave(self, reader: Reader) -> None:
        self.readers.discard(reader)
        if not self.readers:
            self._jobs, self._workers = {}, {}

    def close(self) -> None:
        """The server stops: every feed ends."""
        self.closed = True
        for reader in self.readers:
            with contextlib.suppress(asyncio.QueueFull):
                reader.lines.put_nowait(None)

    def observe(self, scheduler: Scheduler, changed: set[str]) -> None:
        """Tell the readers what the jobs in ``changed`` (and the workers) did."""
        if not self.readers:
            return
        now = time.time()
        jobs = scheduler.jobs
        for job_id in sorted(changed, key=lambda j: jobs[j].seq if j in jobs else 0):
            job = jobs.get(job_id)
            if job is not None:
                self._job_events(job, now)
            elif self._jobs.pop(job_id, None) is not None:  # deleted (farm delete)
                self.publish({"event": "job.deleted", "time": now, "job": {"id": job_id}})
        workers = scheduler.workers
        for worker_id, worker in workers.items():
            was = self._workers.get(worker_id)
            if worker.online and not was:
                self._worker_event("worker.joined", worker, now)
            elif was and not worker.online:
                self._worker_event("worker.left", worker, now)
            self._workers[worker_id] = worker.online
        for gone in [w for w in self._workers if w not in workers]:
            if self._workers.pop(gone):
                self.publish({"event": "worker.left", "time": now, "worker": {"id": gone}})

    def _job_events(self, job: Job, now: float) -> None:
        before = self._jobs.get(job.id)
        after = _seen(job)
        if before == after:
            return
        self._jobs[job.id] = after
        names = []
        final = job.state in FINAL_JOB_STATES
        if before is None:
            names.append("job.submitted")
        elif before.state in {str(s) for s in FINAL_JOB_STATES} and not final:
            names.append("job.retried")
        if job.started_at is not None and (before is None or before.started_at is None):
            names.append("job.started")
        if before is not None and after.paused != before.paused and not final:
            names.append("job.paused" if after.paused else "job.resumed")
        ended_again = before is None or (before.state, before.finished_at) != (
            after.state,
            after.finished_at,
        )
        if final and ended_again:
            names.append(f"job.{job.state}")
        if names:
            summary = job.summary()
            for name in names:
                self.publish({"event": name, "time": now, "job": summary})

    def _worker_event(self, name: str, worker: Any, now: float) -> None:
        view = {"id": worker.id, "name": worker.name, "slots": worker.slots}
        self.publish({"event": name, "time": now, "worker": view})

    def publish(self, event: dict[str, Any]) -> None:
        line = (json.dumps(event, separators=(",", ":"), default=str) + "\n").encode()
        for reader in self.readers:
            if reader.lost:
                continue
            try:
                reader.lines.put_nowait(line)
            except asyncio.QueueFull:
                reader.lost = True
                with contextlib.suppress(asyncio.QueueEmpty):
                    reader.lines.get_nowait()  # room for the end of the stream
                reader.lines.put_nowait(None)


def _seen(job: Job) -> _Seen:
    return _Seen(str(job.state), job.started_at, job.finished_at, job.paused)


async def stream(
    request: web.Request,
    feed: Feed,
    scheduler: Scheduler,
    farm_name: str,
    redact: Callable[[bytes], bytes],
) -> web.StreamResponse:
    """``GET /api/v1/events/feed`` (routed by the app): a ``hello`` line, then one line per
    event, each passed through ``redact`` (the farm's secret never leaves in an event)."""
    if feed.closed:
        raise web.HTTPServiceUnavailable(reason="the server is stopping")
    response = web.StreamResponse(
        headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    reader = feed.join(scheduler)
    try:
        hello = {
            "event": "hello", "time": time.time(), "farm": farm_name,
            "version": buildcat.__version__,
        }  # fmt: skip
        await response.write((json.dumps(hello) + "\n").encode())
        while True:
            try:
                line = await asyncio.wait_for(reader.lines.get(), HEARTBEAT_SECONDS)
            except TimeoutError:
                await response.write(b"\n")
                continue
            if line is None:
                if reader.lost:
                    lost = {
                        "event": "lost", "time": time.time(),
                        "reason": f"this reader fell more than {MAX_BACKLOG} events behind",
                    }  # fmt: skip
                    await response.write((json.dumps(lost) + "\n").encode())
                break
            await response.write(redact(line))
    except ConnectionResetError:
        return response
    finally:
        feed.leave(reader)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response
