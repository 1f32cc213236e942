"""The HTTP face of the queue: aiohttp routes under /api/v1/ that call the scheduler.

Workers long-poll for tasks; a submit, a requeue or a finished dependency wakes them
through :meth:`Farm.dispatch`, which leases directly into the waiting requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import signal
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

import buildcat
from buildcat import auth, jobs, protocol
from buildcat.discovery import Advertiser, advertised_addresses
from buildcat.errors import FarmError, ProtocolError
from buildcat.root import state_dir
from buildcat.server import connections, snapshot
from buildcat.server import web as web_ui
from buildcat.server.journal import Journal, JournalError, recover
from buildcat.server.lock import StateLock
from buildcat.server.scheduler import (
    FINAL_JOB_STATES,
    Job,
    JobState,
    NotFound,
    Scheduler,
    SchedulerError,
    Task,
    TaskSpec,
    TaskState,
    Worker,
    requirement_met,
)

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60.0
MAX_TASKS_PER_JOB = 1_000_000
MAX_WANT = 1024


@dataclass(slots=True)
class ServerConfig:
    root: Path
    bind: str = "127.0.0.1"
    port: int = protocol.DEFAULT_PORT
    name: str = field(default_factory=socket.gethostname)
    lease_timeout: float = 30.0
    state_dir: Path | None = None
    journal: bool = True
    #: Journal events between snapshots (each snapshot starts the journal afresh).
    snapshot_every: int = 50_000
    #: Advertise the farm on the LAN with zeroconf.
    discovery: bool = True
    #: The farm secret; ``None`` reads (or creates) ``<root>/.buildcat/secret``.
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Set damage inside the journal aside and replay the rest, instead of refusing to start.
    salvage: bool = False
    #: Seconds a new connection has to bring a whole request header (then 401 or served).
    header_timeout: float = connections.DEFAULT_HEADER_TIMEOUT
    #: Seconds a member's connection may sit with no request before it is closed.
    idle_timeout: float = connections.DEFAULT_IDLE_TIMEOUT
    #: Connections one IP address may hold before showing the secret or the cookie.
    max_unauthenticated: int = connections.DEFAULT_PER_PEER


@dataclass(slots=True, eq=False)
class _Waiter:
    worker_id: str
    want: int
    future: asyncio.Future[list[Task]]


class Farm:
    """The server's state: one scheduler plus the requests waiting on it."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.secret = (
            auth.check_token(config.token, "--token/FARM_TOKEN")
            if config.token
            else auth.ensure_secret(config.root)
        )
        #: The salt of the dashboard's keys: read (or made) when the server starts serving.
        self.dashboard_salt = ""
        #: The port the server listens on (known once bound): names the dashboard cookie.
        self.port = config.port
        self.scheduler = Scheduler(lease_timeout=config.lease_timeout)
        self.waiters: deque[_Waiter] = deque()
        self.job_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.watchers: dict[str, asyncio.Future[None]] = {}
        self.started_at = time.time()
        #: Open dashboard event streams, and the event that tells them the farm changed.
        self.listeners = 0
        #: Set when the server starts shutting down: lease answers say so to the workers.
        self.stopping = False
        self.update_event = asyncio.Event()
        self._expiry_task: asyncio.Task[None] | None = None
        self.journal: Journal | None = None
        self.generation = 0
        self.snapshot_at = 0
        if config.journal:
            folder = config.state_dir or state_dir(config.root)
            self.snapshot_path = folder / "snapshot.bin"
            restored = snapshot.restore(self.scheduler, self.snapshot_path)
            self.generation = restored[0] if restored else 0
            recovery = recover(
                folder / "journal.bin", self.scheduler, self.generation, salvage=config.salvage
            )
            self.journal = recovery.journal
            self.scheduler.restarted(time.time())
            log.info(
                "journal: snapshot generation %d and %d event(s) replayed: %d job(s), %d worker(s)",
                self.generation,
                recovery.replayed,
                len(self.scheduler.jobs),
                len(self.scheduler.workers),
            )
            if recovery.set_aside or (restored and restored[1]):
                # Salvaged (the damaged journal must go) or an old snapshot without a checksum.
                self.write_snapshot()
            elif recovery.restart:
                self.journal.restart(self.generation)

    async def take_snapshot(self) -> None:
        """Write the whole queue to snapshot.bin and start the journal afresh."""
        if self.journal is None:
            return
        await self.journal.settle()
        # From here to the end nothing awaits: no request changes the queue meanwhile.
        self.write_snapshot()

    def write_snapshot(self) -> None:
        assert self.journal is not None
        started = time.perf_counter()
        generation = self.generation + 1
        size = self.journal.restart(
            generation, lambda: snapshot.write(self.snapshot_path, generation, self.scheduler)
        )
        self.generation = generation
        self.snapshot_at = self.journal.appended
        log.info(
            "journal: snapshot %d written (%d bytes, %.0f ms)",
            generation,
            size,
            (time.perf_counter() - started) * 1000,
        )

    def record(self, *event: Any) -> None:
        if self.journal is not None:
            self.journal.append(*event)

    async def commit(self) -> None:
        """Answer only once what the request changed is on disk."""
        if self.journal is not None:
            await self.journal.commit()

    # ---- waking ------------------------------------------------------------------------

    def after_change(self) -> None:
        """Hand ready tasks to waiting workers and wake waiters of finished jobs."""
        if self.waiters and self.scheduler.ready_total > 0:
            self.dispatch(time.time())
        for worker_id in self.scheduler.take_cancel_notices():
            watcher = self.watchers.pop(worker_id, None)
            if watcher is not None and not watcher.done():
                watcher.set_result(None)
        for job in self.scheduler.take_finished():
            log.info("job %s %s", job.id, job.state)
            for future in self.job_waiters.pop(job.id, []):
                if not future.done():
                    future.set_result(None)
        self.scheduler.take_changed()
        if self.listeners:
            self.update_event.set()
            self.update_event = asyncio.Event()

    def dispatch(self, now: float) -> None:
        unmatched: list[_Waiter] = []
        while self.waiters and self.scheduler.ready_total > 0:
            waiter = self.waiters.popleft()
            if waiter.future.done():
                continue
            try:
                tasks = self.scheduler.lease(waiter.worker_id, waiter.want, now)
            except SchedulerError:
                waiter.future.set_result([])
                continue
            if tasks:
                self.record("lease", now, waiter.worker_id, [task.id for task in tasks])
                waiter.future.set_result(tasks)
            else:
                unmatched.append(waiter)
        self.waiters.extendleft(reversed(unmatched))

    def release_waiters(self) -> int:
        """At shutdown, answer every long-poll at once so nothing waits for a timeout;
        returns how many lease requests were waiting."""
        self.stopping = True
        released = 0
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result([])
                released += 1
        for watcher in self.watchers.values():
            if not watcher.done():
                watcher.set_result(None)
        self.watchers.clear()
        for futures in self.job_waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)
        self.job_waiters.clear()
        return released

    async def expire_leases(self) -> None:
        interval = max(0.05, min(1.0, self.config.lease_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            returned = self.scheduler.expire(now)
            for worker_id, task_id, error in self.scheduler.timed_out:
                log.warning("task %s %s; stopped", task_id, error)
                self.record("fail", now, worker_id, task_id, error, "", "")
            self.scheduler.timed_out.clear()
            for task in returned:
                log.warning("lease of task %s ran out; back in the queue", task.id)
            if returned:
                self.record("requeue", now, [task.id for task in returned])
            self.after_change()
            journal = self.journal
            if (
                journal is not None
                and journal.appended - self.snapshot_at >= self.config.snapshot_every
            ):
                try:
                    await self.take_snapshot()
                except (OSError, FarmError) as exc:
                    log.error("could not write a snapshot: %s", exc)


# ---- request and response helpers ---------------------------------------------------------

FARM_KEY = web.AppKey("farm", Farm)


def _farm(request: web.Request) -> Farm:
    return request.app[FARM_KEY]


def _reply(request: web.Request, value: Any, status: int = 200) -> web.Response:
    accept = request.headers.get("Accept", "")
    content_type = protocol.MSGPACK if protocol.MSGPACK in accept else protocol.JSON
    try:
        body = protocol.encode(value, content_type)
    except ProtocolError as exc:
        raise web.HTTPInternalServerError(reason="cannot encode reply") from exc
    return web.Response(body=body, status=status, content_type=content_type)


def _error(request: web.Request, status: int, message: str) -> web.Response:
    return _reply(request, {"error": message}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    data = await request.read()
    if not data:
        return {}
    content_type = request.content_type
    if content_type not in (protocol.MSGPACK, protocol.JSON):
        raise ProtocolError(
            f"unsupported content type {content_type!r}: send {protocol.MSGPACK} or {protocol.JSON}"
        )
    value = protocol.decode(data, content_type)
    if not isinstance(value, dict):
        raise ProtocolError("the body must be a map")
    return value


_NUMBERS = {int, float, type(None)}


def _get(body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(key, default)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if set(kinds) <= _NUMBERS and set(kinds) & {int, float}:
        if value is None and type(None) in kinds:
            return value
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ProtocolError(f"{key!r} must be a number")
        return value
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ProtocolError(f"{key!r} must be a {names}")
    return value


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _query_float(request: web.Request, key: str, default: float) -> float:
    text = request.query.get(key)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ProtocolError(f"{key} must be a number of seconds") from None
    if not 0 <= value <= 24 * 3600:
        raise ProtocolError(f"{key} must be between 0 and 86400 seconds")
    return value


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every request carries the farm secret, or nothing runs (the body is not even read).

    The dashboard's cookie opens the routes it needs; the page itself is public."""
    secret = _farm(request).secret
    access = web_ui.access(request, _farm(request))
    guard = request.app.get(connections.GUARD_KEY)
    if access not in ("", "public") and guard is not None:
        guard.authenticated(request.protocol)  # no longer counts against its peer's cap
    if access == "dashboard":
        # The cookie reads and steers; whatever a job wrote, it never reads the secret.
        response = await handler(request)
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            response.body = auth.redact_bytes(response.body, secret)
        return response
    if not access:
        response = _error(
            request,
            401,
            "missing or wrong farm secret: send 'Authorization: Bearer' with the contents "
            "of ROOT/.buildcat/secret",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="buildcat"'
        return response
    return await handler(request)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except SchedulerError as exc:
        return _error(request, exc.status, str(exc))
    except JournalError as exc:
        log.error("%s", exc)
        return _error(request, 503, f"the server cannot record changes: {exc}")
    except FarmError as exc:
        return _error(request, 400, str(exc))
    except web.HTTPNotFound as exc:
        found = exc.reason != "Not Found"  # a route that says what it did not find
        reason = exc.reason if found else f"no such route: {request.method} {request.path}"
        return _error(request, 404, reason)
    except web.HTTPRequestEntityTooLarge:
        return _error(
            request,
            413,
            f"the request body is larger than {protocol.MAX_BODY_BYTES:,} bytes: split the job "
            "or put bulk data in files under the farm root",
        )
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return _error(request, 405, f"{request.method} is not allowed here (allowed: {allowed})")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(request, exc.status, exc.reason)
        raise


# ---- routes ---------------------------------------------------------------------------------

routes = web.RouteTableDef()
API = protocol.API_PREFIX


@routes.get(f"{API}/ping")
async def ping(request: web.Request) -> web.Response:
    farm = _farm(request)
    return _reply(
        request,
        {
            "name": farm.config.name,
            "version": buildcat.__version__,
            "api": protocol.API_VERSION,
            "started_at": farm.started_at,
            "lease_timeout": farm.config.lease_timeout,
            # Lease requests parked on the server right now (idle worker slots); a request
            # whose worker hung up stays in the queue until a dispatch, but is not counted.
            "waiting_workers": sum(not waiter.future.done() for waiter in farm.waiters),
        },
    )


_SUBMIT_KEY = re.compile(r"[A-Za-z0-9_-]{8,64}")


@routes.post(f"{API}/jobs")
async def submit(request: web.Request) -> web.Response:
    farm = _farm(request)
    body = await _body(request)
    # An idempotency key: the same submit sent again (its reply was lost) finds its job.
    key = _get(body, "key", str, "")
    if key and not _SUBMIT_KEY.fullmatch(key):
        raise ProtocolError("'key' must be 8 to 64 letters, digits, '-' or '_'")
    digest = (
        hashlib.sha256(protocol.pack({k: v for k, v in body.items() if k != "key"})).hexdigest()
        if key
        else ""
    )
    earlier = farm.scheduler.submitted(key, digest)
    if earlier is not None:
        log.info("job %s: the same submit again (key %s)", earlier.id, key)
        return _reply(request, {"id": earlier.id, "tasks": len(earlier.tasks), "again": True})
    kind = _get(body, "kind", str, "python")
    raw_tasks = _get(body, "tasks", list, [])
    common = _get(body, "common", dict, {})
    if not raw_tasks:
        raise ProtocolError("a job needs at least one task")
    if len(raw_tasks) > MAX_TASKS_PER_JOB:
        raise ProtocolError(f"a job may have at most {MAX_TASKS_PER_JOB} tasks")
    specs = []
    for index, raw in enumerate(raw_tasks):
        if not isinstance(raw, dict):
            raise ProtocolError(f"task {index} must be a map")
        payload = _get(raw, "payload", dict, {})
        depends = _get(raw, "depends", list, [])
        try:
            jobs.validate_payload(kind, {**common, **payload})
        except FarmError as exc:
            raise FarmError(f"task {index}: {exc}") from None
        specs.append(TaskSpec(payload=payload, depends=depends))
    requires = _get(body, "requires", list, [])
    if not all(isinstance(r, str) for r in requires):
        raise ProtocolError("'requires' must be a list of strings")
    max_attempts = body.get("max_attempts")
    if max_attempts is not None:
        max_attempts = _get(body, "max_attempts", int, None)
    meta = _get(body, "meta", dict, {})
    timeout = body.get("timeout")
    if timeout is not None:
        timeout = float(_get(body, "timeout", (int, float), None))
    job = farm.scheduler.submit(
        specs,
        time.time(),
        name=_get(body, "name", str, ""),
        kind=kind,
        priority=_get(body, "priority", int, 0),
        requires=requires,
        max_attempts=max_attempts,
        owner=_get(body, "owner", str, ""),
        meta={**meta, "common": common},
        timeout=timeout,
        key=key,
        digest=digest,
    )
    farm.record(
        "submit", job.created_at, job.id, [[t.payload, t.depends] for t in specs], job.name,
        kind, job.priority, job.requires, job.max_attempts, job.owner, job.meta, job.timeout,
        key, digest,
    )  # fmt: skip
    log.info("job %s submitted: %s, %d task(s)", job.id, job.name or kind, len(job.tasks))
    farm.after_change()  # workers may start on it while the journal is written
    await farm.commit()
    return _reply(request, {"id": job.id, "tasks": len(job.tasks)}, status=201)


@routes.get(f"{API}/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    scheduler = _farm(request).scheduler
    state = request.query.get("state")
    if state is not None and state not in set(JobState):
        raise ProtocolError(f"state must be one of {', '.join(JobState)}, not {state!r}")
    farm = _farm(request)
    views = [
        _job_view(farm, job.id)
        for job in scheduler.jobs.values()
        if state in (None, str(job.state))
    ]
    return _reply(request, {"jobs": views})


def _job_view(farm: Farm, job_id: str) -> dict[str, Any]:
    job = farm.scheduler.job(job_id)
    view = job.to_dict()
    view["meta"] = {k: v for k, v in view["meta"].items() if k != "common"}
    view["waiting"] = _unmet(farm, job) if job.state not in FINAL_JOB_STATES else ""
    if "frames" in job.meta:
        view["frames"] = _frame_counts(job)
    return view


def _frame_counts(job: Job) -> dict[str, int]:
    """Frames finished and in all, counting the tasks that write final frames (a tile or a
    sample split is a part of a frame: its stitch or merge task finishes the frame)."""
    done: set[Any] = set()
    every: set[Any] = set()
    for task in job.tasks:
        if task.dependents:
            continue
        payload = task.payload
        kwargs = payload.get("kwargs")
        frames = payload.get("frames") or (
            kwargs.get("frames") if isinstance(kwargs, dict) else None
        )
        if frames is None and "frame" in payload:
            frames = [payload["frame"]]
        if not isinstance(frames, list):
            continue
        hashable = [frame for frame in frames if isinstance(frame, int | str)]
        every.update(hashable)
        if task.state is TaskState.DONE:
            done.update(hashable)
    return {"done": len(done), "total": len(every)}


def _unmet(farm: Farm, job: Job) -> str:
    """Why nothing runs, when no online worker meets the job's requirements."""
    online = [w for w in farm.scheduler.workers.values() if w.online]
    able = [w for w in online if all(requirement_met(r, w.capabilities) for r in job.requires)]
    if able and all(w.name in job.blocked for w in able):
        blocked = ", ".join(sorted(w.name for w in able))
        return f"every worker that can run it is blocked ({blocked}): farm unblock {job.id}"
    if able or not job.requires:
        return ""
    needs = ", ".join(job.requires)
    if not online:
        return f"no worker is online; this job needs {needs}"
    names = sorted(r.partition(">=")[0].strip() for r in job.requires)

    def has(worker: Worker) -> str:
        held = [f"{n} {worker.capabilities[n]}".strip() for n in names if n in worker.capabilities]
        return ", ".join(held) or "none"

    seen = ", ".join(f"{w.name} ({has(w)})" for w in online[:5])
    return f"no online worker meets {needs}: {seen}"


@routes.get(f"{API}/jobs/{{job}}")
async def job_status(request: web.Request) -> web.Response:
    return _reply(request, _job_view(_farm(request), request.match_info["job"]))


@routes.get(f"{API}/jobs/{{job}}/wait")
async def job_wait(request: web.Request) -> web.Response:
    """Long-poll: answers when the job ends or after ``timeout`` seconds, with its status."""
    farm = _farm(request)
    job = farm.scheduler.job(request.match_info["job"])
    timeout = min(_query_float(request, "timeout", 30.0), MAX_WAIT_SECONDS)
    if job.state not in FINAL_JOB_STATES and timeout > 0:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        farm.job_waiters.setdefault(job.id, []).append(future)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            waiters = farm.job_waiters.get(job.id)
            if waiters and future in waiters:
                waiters.remove(future)
    return _reply(request, _job_view(farm, job.id))


@routes.get(f"{API}/jobs/{{job}}/tasks")
async def job_tasks(request: web.Request) -> web.Response:
    job = _farm(request).scheduler.job(request.match_info["job"])
    return _reply(request, {"tasks": [task.to_dict() for task in job.tasks]})


@routes.get(f"{API}/jobs/{{job}}/results")
async def job_results(request: web.Request) -> web.Response:
    job = _farm(request).scheduler.job(request.match_info["job"])
    return _reply(
        request,
        {"id": job.id, "state": str(job.state), "results": [t.result for t in job.tasks]},
    )


@routes.post(f"{API}/jobs/{{job}}/{{action:cancel|pause|resume|retry|unblock}}")
async def job_action(request: web.Request) -> web.Response:
    farm = _farm(request)
    job_id = request.match_info["job"]
    action = request.match_info["action"]
    body = await _body(request)
    if action == "cancel":
        farm.scheduler.cancel(job_id, time.time())
    elif action == "pause":
        farm.scheduler.pause(job_id)
    elif action == "resume":
        farm.scheduler.resume(job_id)
    elif action == "retry":
        farm.scheduler.retry(job_id, time.time())
    else:
        worker = body.get("worker")
        if worker is not None and not isinstance(worker, str):
            raise ProtocolError("'worker' must be a worker name")
        farm.scheduler.unblock(job_id, worker)
    farm.record(action, time.time(), job_id, body.get("worker"))
    log.info("job %s: %s", job_id, action)
    farm.after_change()
    await farm.commit()
    return _reply(request, _job_view(farm, job_id))


@routes.post(f"{API}/jobs/{{job}}/priority")
async def job_priority(request: web.Request) -> web.Response:
    """Move a job up or down the queue: ``{"priority": N}``, higher runs first."""
    farm = _farm(request)
    job_id = request.match_info["job"]
    body = await _body(request)
    priority = _get(body, "priority", int, None)
    if not -1_000_000 <= priority <= 1_000_000:
        raise ProtocolError("'priority' must be between -1000000 and 1000000")
    farm.scheduler.set_priority(job_id, priority)
    farm.record("priority", time.time(), job_id, priority)
    log.info("job %s: priority %d", job_id, priority)
    farm.after_change()
    await farm.commit()
    return _reply(request, _job_view(farm, job_id))


@routes.get(f"{API}/tasks/{{task}}")
async def task_detail(request: web.Request) -> web.Response:
    task = _farm(request).scheduler.task(request.match_info["task"])
    return _reply(request, task.to_dict(with_result=True))


@routes.post(f"{API}/workers")
async def register(request: web.Request) -> web.Response:
    farm = _farm(request)
    body = await _body(request)
    capabilities = _get(body, "capabilities", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in capabilities.items()):
        raise ProtocolError("'capabilities' must map names to version strings")
    slots = _get(body, "slots", int, 1)
    if not 1 <= slots <= 1024:
        raise ProtocolError("'slots' must be between 1 and 1024")
    worker = farm.scheduler.register(
        name=_get(body, "name", str, "worker")[:200],
        slots=slots,
        capabilities=capabilities,
        now=time.time(),
        info=_get(body, "info", dict, {}),
    )
    farm.record(
        "register", worker.registered_at, worker.id, worker.name, worker.slots,
        worker.capabilities, worker.info,
    )  # fmt: skip
    await farm.commit()
    log.info("worker %s (%s) joined with %d slot(s)", worker.name, worker.id, worker.slots)
    return _reply(
        request,
        {"id": worker.id, "lease_timeout": farm.config.lease_timeout, "name": farm.config.name},
        status=201,
    )


@routes.get(f"{API}/workers")
async def list_workers(request: web.Request) -> web.Response:
    workers = _farm(request).scheduler.workers.values()
    return _reply(request, {"workers": [worker.to_dict() for worker in workers]})


def _task_message(farm: Farm, task: Task) -> dict[str, Any]:
    common = task.job.meta.get("common") or {}
    return {
        "id": task.id,
        "job": task.job.id,
        "kind": task.job.kind,
        "attempt": task.attempts,
        "payload": {**common, **task.payload} if common else task.payload,
    }


@routes.post(f"{API}/workers/{{worker}}/lease")
async def lease(request: web.Request) -> web.Response:
    """Long-poll for up to ``want`` tasks, waiting at most ``wait`` seconds for one."""
    farm = _farm(request)
    worker_id = request.match_info["worker"]
    body = await _body(request)
    want = _get(body, "want", int, 1)
    wait = float(_get(body, "wait", (int, float), 0))
    if not 0 <= want <= MAX_WANT:
        raise ProtocolError(f"'want' must be between 0 and {MAX_WANT}")
    wait = min(max(wait, 0.0), MAX_WAIT_SECONDS)
    now = time.time()
    tasks = farm.scheduler.lease(worker_id, want, now)
    if tasks:
        farm.record("lease", now, worker_id, [task.id for task in tasks])
        farm.after_change()
    elif want > 0 and wait > 0:
        future: asyncio.Future[list[Task]] = asyncio.get_running_loop().create_future()
        farm.waiters.append(_Waiter(worker_id, want, future))
        try:
            tasks = await asyncio.wait_for(asyncio.shield(future), wait)
        except TimeoutError:
            tasks = []
        except asyncio.CancelledError:
            # The worker went away mid-poll: whatever was just leased to it goes back.
            if future.done() and not future.cancelled() and future.result():
                ids = [task.id for task in future.result()]
                with contextlib.suppress(SchedulerError):
                    farm.scheduler.release(worker_id, ids, time.time())
                    farm.record("release", time.time(), worker_id, ids)
                farm.after_change()
            raise
        finally:
            if not future.done():
                future.cancel()
    reply: dict[str, Any] = {"tasks": [_task_message(farm, task) for task in tasks]}
    if farm.stopping:
        reply["stopping"] = True  # the worker need not wonder why the next call fails
    return _reply(request, reply)


@routes.post(f"{API}/workers/{{worker}}/report")
async def report(request: web.Request) -> web.Response:
    """Results, failures, progress and given-back tasks in one message; answers cancellations.

    The whole message is checked before any of it is applied. Entries for tasks the server
    does not know (it restarted, the job is gone) are discarded and listed as such.
    """
    farm = _farm(request)
    worker_id = request.match_info["worker"]
    body = await _body(request)
    done = []
    for item in _get(body, "done", list, []):
        if not isinstance(item, dict):
            raise ProtocolError("each 'done' entry must be a map")
        ok = item.get("ok", False) is True
        seconds = _get(item, "seconds", (int, float, type(None)), None)
        started_at = _get(item, "started_at", (int, float, type(None)), None)
        done.append(
            (
                _get(item, "id", str, ""),
                ok,
                item.get("result"),
                # A task that prints the secret (an environment dump) never stores it.
                auth.redact(_get(item, "error", str, "" if ok else "task failed"), farm.secret),
                auth.redact(_get(item, "traceback", str, ""), farm.secret),
                auth.redact(_get(item, "log", str, ""), farm.secret),
                (
                    float(started_at) if _finite(started_at) else None,
                    float(seconds) if _finite(seconds) and 0 <= seconds < 1e9 else None,
                ),
            )
        )
    progress = []
    for item in _get(body, "progress", list, []):
        if not isinstance(item, dict):
            raise ProtocolError("each 'progress' entry must be a map")
        progress.append(
            (
                _get(item, "id", str, ""),
                float(_get(item, "fraction", (int, float), 0.0)),
                _get(item, "message", str, ""),
            )
        )
    released = _get(body, "release", list, [])
    if not all(isinstance(task_id, str) for task_id in released):
        raise ProtocolError("'release' must be a list of task ids")

    scheduler = farm.scheduler
    now = time.time()
    scheduler.touch(worker_id, now)
    accepted: list[str] = []
    discarded: list[str] = []
    for task_id, ok, result, error, traceback, log_text, timing in done:
        try:
            if ok:
                recorded = scheduler.complete(worker_id, task_id, result, now, log_text, *timing)
                if recorded:
                    farm.record("complete", now, worker_id, task_id, result, log_text, *timing)
            else:
                recorded = scheduler.fail(
                    worker_id, task_id, error, traceback, now, log_text, True, *timing
                )
                if recorded:
                    farm.record(
                        "fail", now, worker_id, task_id, error, traceback, log_text, *timing
                    )
                    log.warning("task %s failed on %s: %s", task_id, worker_id, error)
        except NotFound:
            recorded = False
        (accepted if recorded else discarded).append(task_id)
    for task_id, fraction, message in progress:
        with contextlib.suppress(NotFound):
            scheduler.progress(worker_id, task_id, fraction, message)
    if released:
        scheduler.release(worker_id, released, now)
        farm.record("release", now, worker_id, released)
    farm.after_change()
    if done or released:
        await farm.commit()  # the worker forgets what we acknowledge
    return _reply(
        request,
        {
            "accepted": accepted,
            "discarded": discarded,
            "cancel": scheduler.take_cancellations(worker_id),
        },
    )


@routes.post(f"{API}/workers/{{worker}}/watch")
async def watch(request: web.Request) -> web.Response:
    """Long-poll for cancellations (answers at once when there are some); a heartbeat too."""
    farm = _farm(request)
    worker_id = request.match_info["worker"]
    body = await _body(request)
    wait = min(max(float(_get(body, "wait", (int, float), 0)), 0.0), MAX_WAIT_SECONDS)
    worker = farm.scheduler.touch(worker_id, time.time())
    if not worker.to_cancel and wait > 0:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        previous = farm.watchers.pop(worker_id, None)
        if previous is not None and not previous.done():
            previous.set_result(None)
        farm.watchers[worker_id] = future
        try:
            await asyncio.wait_for(future, wait)
        except TimeoutError:
            pass
        finally:
            if farm.watchers.get(worker_id) is future:
                del farm.watchers[worker_id]
        with contextlib.suppress(SchedulerError):
            farm.scheduler.touch(worker_id, time.time())
    try:
        cancels = farm.scheduler.take_cancellations(worker_id)
    except SchedulerError:
        cancels = []
    return _reply(request, {"cancel": cancels})


@routes.delete(f"{API}/workers/{{worker}}")
async def unregister(request: web.Request) -> web.Response:
    farm = _farm(request)
    now = time.time()
    returned = farm.scheduler.unregister(request.match_info["worker"], now)
    farm.record("unregister", now, request.match_info["worker"])
    await farm.commit()
    log.info(
        "worker %s left; %d task(s) back in the queue", request.match_info["worker"], len(returned)
    )
    farm.after_change()
    return _reply(request, {"returned": [task.id for task in returned]})


# ---- application ----------------------------------------------------------------------------


def create_app(config: ServerConfig) -> web.Application:
    """Build the application (tests can use it without sockets)."""
    app = web.Application(
        middlewares=[connections.connection_middleware, errors_middleware, auth_middleware],
        client_max_size=protocol.MAX_BODY_BYTES,
    )
    app[connections.GUARD_KEY] = connections.ConnectionGuard(
        config.header_timeout, config.idle_timeout, config.max_unauthenticated
    )
    farm = Farm(config)
    app[FARM_KEY] = farm
    app.add_routes(routes)
    web_ui.add_routes(app)

    async def start_background(app: web.Application) -> None:
        farm._expiry_task = asyncio.create_task(farm.expire_leases())

    async def stop_background(app: web.Application) -> None:
        farm.release_waiters()
        if farm.journal is not None:
            farm.journal.close()
        if farm._expiry_task is not None:
            farm._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await farm._expiry_task

    app.on_startup.append(start_background)
    app.on_shutdown.append(stop_background)
    return app


def prepare_root(config: ServerConfig) -> Path:
    """Check the root exists and is writable; create the state folder in it."""
    if not config.root.is_dir():
        raise FarmError(f"farm root {config.root} does not exist or is not a folder")
    folder = config.state_dir or state_dir(config.root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FarmError(f"cannot create the state folder {folder}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise FarmError(f"the state folder {folder} is not writable")
    with contextlib.suppress(OSError):  # task logs are private; older releases left it 0755
        (state_dir(config.root) / "logs").chmod(0o700)
    return folder


async def serve(config: ServerConfig, ready: Callable[[str, int, str], None] | None = None) -> None:
    """Run the server until SIGTERM or SIGINT; ``ready`` is told the bound address and
    the dashboard's login link."""
    folder = prepare_root(config)
    # Held from before the journal is read until the server is gone: one server per folder.
    holder = (
        StateLock.acquire(folder, port=config.port, bind=config.bind) if config.journal else None
    )
    try:
        await _serve(config, ready, holder)
    finally:
        if holder is not None:
            holder.release()


async def _serve(
    config: ServerConfig, ready: Callable[[str, int, str], None] | None, holder: StateLock | None
) -> None:
    context = None
    fingerprint = None
    if config.tls_cert is not None and config.tls_key is not None:
        context = auth.server_ssl_context(config.tls_cert, config.tls_key)
        fingerprint = auth.certificate_fingerprint(config.tls_cert)
    before, after = connections.raise_open_files_limit()
    if after > before:
        log.info("open-files limit raised from %d to %d", before, after)
    connections.install_repeat_filter()
    app = create_app(config)
    app[FARM_KEY].dashboard_salt = web_ui.load_dashboard_salt(config.root)
    try:  # members read the farm's TLS from here, never from the advert
        auth.write_tls_record(config.root, fingerprint)
    except FarmError as exc:
        log.warning("%s: members fall back to what the advert or address says of TLS", exc)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=5,
        keepalive_timeout=config.idle_timeout,
    )
    await runner.setup()
    guard = app[connections.GUARD_KEY]
    assert runner.server is not None
    guard.install(runner.server)
    site = web.TCPSite(
        runner, config.bind, config.port, backlog=4096, reuse_address=True, ssl_context=context
    )
    try:
        await site.start()
    except OSError as exc:
        await guard.close()
        await runner.cleanup()
        raise FarmError(f"cannot listen on {config.bind}:{config.port}: {exc.strerror}") from None
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    port = sockets[0].getsockname()[1] if sockets else config.port
    app[FARM_KEY].port = port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    journal = app[FARM_KEY].journal
    if holder is not None and journal is not None:
        holder.update(port)

        def lost(reason: str) -> None:  # told from the lock's thread
            loop.call_soon_threadsafe(journal.refuse, reason)

        holder.on_lost = lost
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    advertiser: Advertiser | None = None
    advertising: asyncio.Task[None] | None = None
    if config.discovery:
        advertiser = Advertiser(
            config.name,
            config.bind,
            port,
            tls=context is not None,
            version=buildcat.__version__,
            farm_id=auth.farm_id(app[FARM_KEY].secret),
        )
        advertising = asyncio.create_task(advertiser.start())
    if ready is not None:
        host = config.bind
        if host in ("", "0.0.0.0", "::"):
            addresses = advertiser.addresses if advertiser else advertised_addresses(host)
            host = (addresses or ["127.0.0.1"])[0]
        scheme = "https" if context is not None else "http"
        ready(config.bind, port, web_ui.dashboard_url(scheme, host, port, app[FARM_KEY]))
    try:
        await stop.wait()
    finally:
        released = app[FARM_KEY].release_waiters()
        log.info("shutting down: answered %d waiting lease request(s)", released)
        if advertiser is not None and advertising is not None:
            if not advertising.done():
                advertising.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await advertising
            await advertiser.close()
        await guard.close()
        await runner.cleanup()
