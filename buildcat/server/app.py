"""The HTTP face of the queue: aiohttp routes under /api/v1/ that call the scheduler.

Workers long-poll for tasks; a submit, a requeue or a finished dependency wakes them
through :meth:`Farm.dispatch`, which leases directly into the waiting requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

import buildcat
from buildcat import auth, jobs, platform, protocol
from buildcat.discovery import Advertiser, advertised_addresses
from buildcat.errors import FarmError, ProtocolError
from buildcat.root import state_dir
from buildcat.server import (
    connections,
    feed,
    heap,
    jobroutes,
    notices,
    outputs,
    people,
    resultstore,
    rights,
    submits,
    taskfiles,
    views,
    workerroutes,
    workerset,
)
from buildcat.server import jobtypes as jobtypes_routes
from buildcat.server import record as server_record
from buildcat.server import web as web_ui
from buildcat.server.farm import (
    FARM_KEY,
    ROLE_KEY,
    VIA_KEY,
    WHO_KEY,
    Caller,
    Farm,
    ServerConfig,
    Waiter,
    farm_of,
    who_of,
)
from buildcat.server.journal import JournalError
from buildcat.server.lock import StateLock
from buildcat.server.replies import read_body, reply_type, respond, respond_error, respond_exact
from buildcat.server.scheduler import (
    FINAL_JOB_STATES,
    LOG_TAIL_CHARS,
    Job,
    NotFound,
    SchedulerError,
    Task,
    TaskSpec,
    build_tasks,
    check_depends,
    pack_payload,
    requirement_problem,
)

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60.0
MAX_TASKS_PER_JOB = 1_000_000
MAX_WANT = 1024
#: A lease names at most this many job ids and kinds of work it prefetches.
MAX_PREFETCH_KEYS = 256
#: Bounds of request fields (docs/http-api.md): what is journaled stays small.
MAX_PRIORITY = 1_000_000
MAX_ATTEMPTS = 1000
MAX_NAME = 256
MAX_JOB_NAME = 1024
MAX_REQUIRES = 64
MAX_CAPABILITIES = 256
MAX_INFO_BYTES = 64 * 1024
MAX_ERROR_CHARS = 4096
MAX_TRACEBACK_CHARS = 65_536
#: What a job id in a request may look like (ids are ours: short, plain).
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
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
    try:
        return isinstance(value, int | float) and math.isfinite(value)
    except OverflowError:  # an int no float holds
        return False


def _bounded(body: dict[str, Any], key: str, default: Any, low: int, high: int) -> Any:
    """An optional integer field that must lie between ``low`` and ``high``."""
    value = _get(body, key, (int, type(None)), default)
    if value is None:
        return None
    if isinstance(value, float) or not low <= value <= high:
        raise ProtocolError(f"{key!r} must be a whole number between {low} and {high}")
    return value


def _text(body: dict[str, Any], key: str, default: str, limit: int = MAX_NAME) -> str:
    """A free-text field, refused (not cut) beyond ``limit`` characters: the journal keeps
    every accepted change whole."""
    value = _get(body, key, str, default)
    if len(value) > limit:
        raise ProtocolError(f"{key!r} is longer than {limit} characters")
    return str(value)


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
    """Every request carries the farm secret, a named token or the dashboard's cookie, or
    nothing runs (the body is not even read); what it may do is its role's (rights.py).

    The page itself is public."""
    farm = farm_of(request)
    secret = farm.secret
    caller = web_ui.access(request, farm)
    if caller == "public":
        return await handler(request)
    if not isinstance(caller, Caller):
        response = respond_error(
            request,
            401,
            "missing or wrong farm secret: send 'Authorization: Bearer' with the contents "
            "of ROOT/.buildcat/secret (or a named token that is not revoked)",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="buildcat"'
        return response
    guard = request.app.get(connections.GUARD_KEY)
    if guard is not None:
        guard.authenticated(request.protocol)  # no longer counts against its peer's cap
    request[WHO_KEY], request[ROLE_KEY], request[VIA_KEY] = caller.name, caller.role, caller.via
    if caller.via == "secret":
        return await handler(request)
    wanted = rights.classify(request.method, request.path)
    owner = None
    if wanted.job:
        job = farm.scheduler.jobs.get(wanted.job)
        owner = job.owner if job is not None else None  # none: the route says so (404)
    problem = rights.refusal(caller.role, caller.name, False, wanted, owner)
    if problem:
        return respond_error(request, 403, problem)
    # A cookie or a named token reads and steers; whatever a job wrote, it never reads
    # the secret.
    answer = await handler(request)
    if isinstance(answer, web.Response) and isinstance(answer.body, bytes):
        answer.body = auth.redact_bytes(answer.body, secret)
    return answer


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except SchedulerError as exc:
        return respond_error(request, exc.status, str(exc))
    except JournalError as exc:
        log.error("%s", exc)
        return respond_error(request, 503, f"the server cannot record changes: {exc}")
    except FarmError as exc:
        return respond_error(request, 400, str(exc))
    except web.HTTPNotFound as exc:
        found = exc.reason != "Not Found"  # a route that says what it did not find
        reason = exc.reason if found else f"no such route: {request.method} {request.path}"
        return respond_error(request, 404, reason)
    except web.HTTPRequestEntityTooLarge:
        return respond_error(
            request,
            413,
            f"the request body is larger than {protocol.MAX_BODY_BYTES:,} bytes: split the job "
            "or put bulk data in files under the farm root",
        )
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return respond_error(
            request, 405, f"{request.method} is not allowed here (allowed: {allowed})"
        )
    except web.HTTPException as exc:
        if exc.status >= 400:
            return respond_error(request, exc.status, exc.reason)
        raise


# ---- routes ---------------------------------------------------------------------------------

routes = web.RouteTableDef()
API = protocol.API_PREFIX


@routes.get(f"{API}/ping")
async def ping(request: web.Request) -> web.Response:
    farm = farm_of(request)
    waiting = farm.live_waiters()
    return respond(
        request,
        {
            "name": farm.config.name,
            "version": buildcat.__version__,
            "api": protocol.API_VERSION,
            "started_at": farm.started_at,
            "lease_timeout": farm.config.lease_timeout,
            # Workers with a lease request parked on the server right now, each counted
            # once however many requests it has parked; and those requests.
            "waiting_workers": len({waiter.worker_id for waiter in waiting}),
            "waiting_requests": len(waiting),
            # How the server keeps up: its event loop's longest pause since it started,
            # and the snapshots it wrote in the background.
            "loop_pause_max_ms": round(farm.loop_pause_max * 1000, 1),
            "snapshots": farm.snapshots,
        },
    )


_SUBMIT_KEY = re.compile(r"[A-Za-z0-9_-]{8,64}")
#: JOB.INDEX: what a worker may name in a report (job ids are ours: short, plain).
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\.[0-9]{1,9}")


def _task_id(item: dict[str, Any]) -> str:
    task_id = _get(item, "id", str, "")
    if not _TASK_ID.fullmatch(task_id):
        raise ProtocolError(f"{task_id[:80]!r} is not a task id (JOB.N)")
    return str(task_id)


@routes.post(f"{API}/jobs")
async def submit(request: web.Request) -> web.Response:
    # A big body makes millions of objects: no collection walks them while it is taken in.
    big = (request.content_length or 0) >= submits.BIG_BODY
    with heap.building() if big else contextlib.nullcontext():
        return await _submit(request)


async def _submit(request: web.Request) -> web.Response:
    farm = farm_of(request)
    # In pieces (server/submits.py): a million tasks never hold the event loop long.
    if request.can_read_body and request.content_type == protocol.MSGPACK:
        body = await submits.decode_body(await request.read())
    else:
        body = await read_body(request)
    # An idempotency key: the same submit sent again (its reply was lost) finds its job.
    key = _get(body, "key", str, "")
    if key and not _SUBMIT_KEY.fullmatch(key):
        raise ProtocolError("'key' must be 8 to 64 letters, digits, '-' or '_'")
    digest = await submits.digest(body) if key else ""
    while key in farm.submitting:  # the same submit, still being written: wait for it
        with contextlib.suppress(Exception):
            await asyncio.shield(farm.submitting[key])
    earlier = farm.scheduler.submitted(key, digest)
    if earlier is not None:
        log.info("job %s: the same submit again (key %s)", earlier.id, key)
        return respond(request, {"id": earlier.id, "tasks": len(earlier.tasks), "again": True})
    kind = _text(body, "kind", "python")
    raw_tasks = _get(body, "tasks", list, [])
    common = _get(body, "common", dict, {})
    if not raw_tasks:
        raise ProtocolError("a job needs at least one task")
    if len(raw_tasks) > MAX_TASKS_PER_JOB:
        raise ProtocolError(f"a job may have at most {MAX_TASKS_PER_JOB} tasks")
    specs = []
    pacer = submits.Pacer()
    kinds_named = False  # a task naming its own kind (a render's stitch, say)
    for index, raw in enumerate(raw_tasks):
        if not isinstance(raw, dict):
            raise ProtocolError(f"task {index} must be a map")
        payload = _get(raw, "payload", dict, {})
        depends = _get(raw, "depends", list, [])
        try:
            jobs.validate_payload(kind, {**common, **payload})
        except FarmError as exc:
            raise FarmError(f"task {index}: {exc}") from None
        if depends:
            check_depends(index, depends)
        kinds_named = kinds_named or "kind" in payload
        # Its maps go now, its payload packed (~50 bytes, not ~280): a million of them.
        specs.append(TaskSpec(payload=pack_payload(payload), depends=depends))
        raw_tasks[index] = None
        await pacer.tick()
    requires = _get(body, "requires", list, [])
    if len(requires) > MAX_REQUIRES or not all(
        isinstance(r, str) and len(r) <= MAX_NAME for r in requires
    ):
        raise ProtocolError(
            f"'requires' must be a list of at most {MAX_REQUIRES} strings of at most "
            f"{MAX_NAME} characters"
        )
    for requirement in requires:
        problem = requirement_problem(requirement)
        if problem:
            raise ProtocolError(problem)
    max_attempts = _bounded(body, "max_attempts", None, 1, MAX_ATTEMPTS)
    meta = _get(body, "meta", dict, {})
    protocol.check_finite(meta, "meta")
    timeout = body.get("timeout")
    if timeout is not None:
        timeout = float(_get(body, "timeout", (int, float), None))
        if not math.isfinite(timeout):
            raise ProtocolError("'timeout' must be a finite number of seconds")
    priority = _bounded(body, "priority", 0, -MAX_PRIORITY, MAX_PRIORITY)
    name = _text(body, "name", "", MAX_JOB_NAME)
    owner = _text(body, "owner", "")
    if request.get(VIA_KEY) == "token":  # a person's own token: the job is theirs
        owner = who_of(request)
    after, after_any = _after(body)
    scheduler = farm.scheduler
    claimed = (
        outputs.claimed_frames(kind, ((t.decoded(), t.depends) for t in specs), common)
        if kinds_named or outputs.claims(kind, common)
        else {}  # a million Python tasks claim no frames: not looked at again
    )
    farm.check_outputs(claimed, runs_after=after)
    now = time.time()
    meta = {**meta, "common": common}
    meta.pop(notices.META_KEY, None)
    notify = [*protocol.check_urls(body.get("notify"))]
    notify += [url for url in farm.config.notify if url not in notify]
    if notify:  # journaled with the job: its end owes each a notice, across restarts
        meta[notices.META_KEY] = notify
    requires = sorted(set(requires))
    job_id = farm.new_job_id()
    farm.reserved_ids.add(job_id)
    try:
        # The job and its tasks are made (a piece at a time) and encoded before anything
        # changes; once its record is on disk it is only queued.
        job = scheduler.new_job(
            specs, now, name=name, kind=kind, priority=priority, requires=requires,
            max_attempts=max_attempts, owner=owner, meta=meta, job_id=job_id,
            timeout=timeout, key=key, digest=digest, after=after, after_any=after_any,
            depends_checked=True,
        )  # fmt: skip
        for _ in build_tasks(job, specs, now, submits.PIECE):
            await pacer.tick()
        event = [
            "submit", now, job_id, None, name, kind, priority, requires, job.max_attempts,
            owner, meta, timeout, key, digest, after, after_any,
        ]  # fmt: skip
        tasks = (submits.task_item(t.packed(), t.depends) for t in specs)
        record = await submits.encode_event(event, 3, tasks, len(specs), packed=True)
        # Other requests went on meanwhile: the same submit sent again goes first, and
        # the frames this job writes are checked again.
        while key in farm.submitting:
            with contextlib.suppress(Exception):
                await asyncio.shield(farm.submitting[key])
        earlier = farm.scheduler.submitted(key, digest)
        if earlier is None:
            farm.check_outputs(claimed, runs_after=after)
    except BaseException:
        farm.reserved_ids.discard(job_id)
        raise
    if earlier is not None:
        farm.reserved_ids.discard(job_id)
        return respond(request, {"id": earlier.id, "tasks": len(earlier.tasks), "again": True})

    def apply() -> Job:
        return scheduler.add_job(job, now)

    # Written first, queued once on disk; the request going away does not stop it halfway.
    pending = asyncio.ensure_future(farm.change_records([record], apply))
    farm.outputs.claim(job_id, claimed)  # at once: a submit meanwhile sees these frames taken
    if key:
        farm.submitting[key] = pending

    def done(_: asyncio.Future[Job]) -> None:
        farm.reserved_ids.discard(job_id)
        if farm.submitting.get(key) is pending:
            del farm.submitting[key]
        # retrieved: the request (if still there) reports it
        if pending.cancelled() or pending.exception() is not None:
            farm.outputs.release(job_id)

    pending.add_done_callback(done)
    with farm.hold_dispatch():  # ends with the answer: workers are woken after it
        await asyncio.shield(pending)
    if len(specs) >= heap.BIG_JOB:
        heap.settle()
    log.info("job %s submitted: %s, %d task(s)", job.id, job.name or kind, len(job.tasks))
    return respond(request, {"id": job.id, "tasks": len(job.tasks)}, status=201)


def _after(body: dict[str, Any]) -> tuple[list[str], bool]:
    """The jobs a submit runs after (``"after": [ids]``, each once, in order) and whether it
    runs whatever their outcome (``"after_any"``); the scheduler checks that they exist."""
    after = _get(body, "after", list, [])
    after_any = _get(body, "after_any", bool, False)
    if not all(isinstance(job_id, str) and _JOB_ID.fullmatch(job_id) for job_id in after):
        raise ProtocolError("'after' must be a list of job ids")
    return list(dict.fromkeys(after)), after_any


@routes.get(f"{API}/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    """Jobs, filtered and in pages (``docs/http-api.md``): the cost follows the page asked
    for, plus one pass over the jobs' fields to filter and count them."""
    farm = farm_of(request)
    query = views.JobQuery.parse(request.query)
    return respond(request, views.job_page(farm, query))


@routes.get(f"{API}/jobs/{{job}}")
async def job_status(request: web.Request) -> web.Response:
    return respond(request, views.job_view(farm_of(request), request.match_info["job"]))


@routes.get(f"{API}/jobs/{{job}}/wait")
async def job_wait(request: web.Request) -> web.Response:
    """Long-poll: answers when the job ends or after ``timeout`` seconds, with its status."""
    farm = farm_of(request)
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
    return respond(request, views.job_view(farm, job.id))


@routes.post(f"{API}/jobs/{{job}}/{{action:cancel|pause|resume|retry|unblock}}")
async def job_action(request: web.Request) -> web.Response:
    farm = farm_of(request)
    job_id = request.match_info["job"]
    action = request.match_info["action"]
    body = await read_body(request)
    worker = body.get("worker")
    if worker is not None and (not isinstance(worker, str) or len(worker) > MAX_NAME):
        raise ProtocolError(f"'worker' must be a worker name of at most {MAX_NAME} characters")
    scheduler = farm.scheduler
    job = scheduler.job(job_id)
    now = time.time()
    unblocked = sorted(job.blocked)
    apply: Callable[[], Any]
    if action == "cancel":
        apply = lambda: scheduler.cancel(job_id, now)  # noqa: E731
    elif action == "pause":
        apply = lambda: scheduler.pause(job_id)  # noqa: E731
    elif action == "resume":
        apply = lambda: scheduler.resume(job_id)  # noqa: E731
    elif action == "retry":
        scheduler.check_retry(job)
        claimed = farm.job_outputs(job)
        farm.check_outputs(claimed, job_id, runs_after=job.after)

        def apply() -> Job:
            retried = scheduler.retry(job_id, now)
            farm.outputs.claim(job_id, claimed)
            return retried
    else:
        scheduler.check_unblock(job, worker)
        unblocked = [worker] if worker is not None else unblocked
        apply = lambda: scheduler.unblock(job_id, worker)  # noqa: E731
    by = who_of(request)
    extra = {"worker": worker} if action == "unblock" and worker is not None else {}

    def steer() -> Any:
        result = apply()
        scheduler.note(job_id, now, action, by, **extra)
        return result

    # Only unblock needs a worker; no other action journals what the body holds. Who did
    # it is a fifth field (older journals have four: replayed as by nobody known).
    await farm.change((action, now, job_id, worker if action == "unblock" else None, by), steer)
    log.info("job %s: %s%s", job_id, action, f" by {by}" if by else "")
    view = views.job_view(farm, job_id)
    if action in ("retry", "unblock"):
        view["unblocked"] = unblocked
    return respond(request, view)


@routes.post(f"{API}/jobs/{{job}}/priority")
async def job_priority(request: web.Request) -> web.Response:
    """Move a job up or down the queue: ``{"priority": N}``, higher runs first."""
    farm = farm_of(request)
    job_id = request.match_info["job"]
    body = await read_body(request)
    if body.get("priority") is None:
        raise ProtocolError("'priority' must be a number")
    priority = _bounded(body, "priority", None, -MAX_PRIORITY, MAX_PRIORITY)
    scheduler = farm.scheduler
    scheduler.check_priority(scheduler.job(job_id))
    now, by = time.time(), who_of(request)

    def apply() -> Job:
        job = scheduler.set_priority(job_id, priority)
        scheduler.note(job_id, now, "priority", by, priority=priority)
        return job

    # Who did it is a fourth field (older journals have three).
    await farm.change(("priority", now, job_id, priority, by), apply)
    log.info("job %s: priority %d%s", job_id, priority, f" by {by}" if by else "")
    return respond(request, views.job_view(farm, job_id))


@routes.get(f"{API}/tasks/{{task}}")
async def task_detail(request: web.Request) -> web.Response:
    """A task's view with its result and log tail (a result kept in a file is read; one
    that cannot be is ``null``, and ``result_error`` says why)."""
    task = farm_of(request).scheduler.task(request.match_info["task"])
    view = task.to_dict(with_result=True)
    view["result"], problem = await resultstore.task_result(resultstore.store_of(request), task)
    if problem:
        view["result_error"] = problem
    return respond(request, view)


@routes.post(f"{API}/workers")
async def register(request: web.Request) -> web.Response:
    farm = farm_of(request)
    body = await read_body(request)
    capabilities = _get(body, "capabilities", dict, {})
    if len(capabilities) > MAX_CAPABILITIES or not all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_NAME and len(v) <= MAX_NAME
        for k, v in capabilities.items()
    ):
        raise ProtocolError(
            f"'capabilities' must map at most {MAX_CAPABILITIES} names to version strings "
            f"(each at most {MAX_NAME} characters)"
        )
    slots = _get(body, "slots", int, 1)
    if not 1 <= slots <= 1024:
        raise ProtocolError("'slots' must be between 1 and 1024")
    info = _get(body, "info", dict, {})
    protocol.check_finite(info, "info")
    if len(protocol.pack(info)) > MAX_INFO_BYTES:
        raise ProtocolError(f"'info' is larger than {MAX_INFO_BYTES} bytes")
    name = _get(body, "name", str, "worker")[:200]
    settings_event = _register_schedule(farm, name, body)
    now = time.time()
    worker_id = f"w-{secrets.token_hex(4)}"
    while worker_id in farm.scheduler.workers:
        worker_id = f"w-{secrets.token_hex(4)}"
    events: list[tuple[Any, ...]] = [("register", now, worker_id, name, slots, capabilities, info)]
    if settings_event is not None:
        events.append(("worker-set", now, name, settings_event, workerset.REGISTER, name))

    def apply() -> Any:
        registered = farm.scheduler.register(
            name, slots, capabilities, now, info=info, worker_id=worker_id
        )
        if settings_event is not None:
            workerset.apply(farm.scheduler.worker_settings, name, settings_event,
                            workerset.REGISTER)  # fmt: skip
        return registered

    worker = await farm.change_all(events, apply)
    if settings_event is not None:
        request.app[workerroutes.SLEEPER_KEY].set()
    log.info("worker %s (%s) joined with %d slot(s)", worker.name, worker.id, worker.slots)
    return respond(
        request,
        {"id": worker.id, "lease_timeout": farm.config.lease_timeout, "name": farm.config.name},
        status=201,
    )


def _register_schedule(farm: Farm, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The ``worker-set`` change a register makes: the schedule the worker was started
    with (``farm worker --schedule``), or clearing the one an earlier start of it gave;
    None when nothing changes. A schedule an admin set wins (server/workerset.py)."""
    wanted = body.get("schedule")
    settings = farm.scheduler.worker_settings.get(name)
    if wanted is None:
        if settings is not None and settings.schedule_by == workerset.REGISTER:
            return {"schedule": None}
        return None
    if not isinstance(wanted, dict):
        raise ProtocolError("'schedule' must be a map: {spec, timezone, give_back}")
    return workerset.check_changes({"schedule": wanted})


@routes.get(f"{API}/workers")
async def list_workers(request: web.Request) -> web.Response:
    """Every worker by name: its view (``views.worker_view``) and the ids of all it holds."""
    scheduler = farm_of(request).scheduler
    listed = views.workers_view(scheduler)
    held = {w.id: sorted(task.id for task in w.leased) for w in scheduler.workers.values()}
    for view in listed:
        view["tasks"] = held.get(view["id"], [])
    return respond(request, {"workers": listed})


def _task_message(farm: Farm, task: Task) -> dict[str, Any]:
    common = task.job.meta.get("common") or {}
    payload = {**common, **task.payload} if common else task.payload
    return {
        "id": task.id,
        "job": task.job.id,
        "kind": jobs.task_kind(task.job.kind, payload),
        "attempt": task.attempts,
        "payload": payload,
    }


@routes.post(f"{API}/workers/{{worker}}/lease")
async def lease(request: web.Request) -> web.Response:
    """Long-poll for up to ``want`` tasks, waiting at most ``wait`` seconds for one."""
    farm = farm_of(request)
    worker_id = request.match_info["worker"]
    body = await read_body(request)
    want = _get(body, "want", int, 1)
    wait = float(_get(body, "wait", (int, float), 0))
    if not 0 <= want <= MAX_WANT:
        raise ProtocolError(f"'want' must be between 0 and {MAX_WANT}")
    wait = min(max(wait, 0.0), MAX_WAIT_SECONDS)
    prefetch = _get(body, "prefetch", list, [])
    if len(prefetch) > MAX_PREFETCH_KEYS or not all(
        isinstance(key, str) and 0 < len(key) <= 512 for key in prefetch
    ):
        raise ProtocolError(
            f"'prefetch' must be a list of at most {MAX_PREFETCH_KEYS} job ids or kinds of work"
        )
    others = _get(body, "others", (int, type(None)), None)
    if others is not None and not 0 <= others <= MAX_WANT:
        raise ProtocolError(f"'others' must be between 0 and {MAX_WANT}")
    worker = farm.scheduler.workers.get(worker_id)
    if worker is not None:  # an unknown worker hears so from lease()
        worker.prefetch, worker.others = frozenset(prefetch), others
    now = time.time()
    # Workers read msgpack, which carries every payload; a JSON reader (curl, a script) is
    # not handed a task JSON cannot carry (bytes map keys): it stays queued, untouched.
    unsendable: list[str] = []

    def can_send(task: Task) -> bool:
        try:
            protocol.encode(_task_message(farm, task), protocol.JSON)
        except ProtocolError as exc:
            unsendable.append(f"{task.id} ({exc})")
            return False
        return True

    sendable = None if reply_type(request) == protocol.MSGPACK else can_send
    tasks = farm.scheduler.lease(worker_id, want, now, sendable)
    if tasks:
        farm.record("lease", now, worker_id, [task.id for task in tasks])
        farm.after_change()
    elif want > 0 and wait > 0 and not unsendable:
        future: asyncio.Future[list[Task]] = asyncio.get_running_loop().create_future()
        if len(farm.waiters) >= farm.compact_waiters_at:  # amortised: drop finished ones
            farm.compact_waiters_at = max(64, 2 * len(farm.live_waiters()))
        farm.waiters.append(Waiter(worker_id, want, future, sendable))
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
    if not tasks and unsendable:
        return respond_error(
            request,
            406,
            f"task {unsendable[0]} cannot be sent as JSON: ask for {protocol.MSGPACK}, "
            "as workers do",
        )
    reply: dict[str, Any] = {"tasks": [_task_message(farm, task) for task in tasks]}
    if farm.stopping:
        reply["stopping"] = True  # the worker need not wonder why the next call fails
    try:
        return respond_exact(request, reply)
    except ProtocolError as exc:
        # Never leased to a worker that was not told: they go back, their attempts unspent.
        ids = [task.id for task in tasks]
        with contextlib.suppress(SchedulerError):
            farm.scheduler.release(worker_id, ids, time.time())
            farm.record("release", time.time(), worker_id, ids)
        farm.after_change()
        return respond_error(
            request,
            406,
            f"the task(s) {', '.join(ids)} cannot be sent in the format asked for ({exc}): "
            f"ask for {protocol.MSGPACK}, as workers do",
        )


@routes.post(f"{API}/workers/{{worker}}/report")
async def report(request: web.Request) -> web.Response:
    """Results, failures, progress and given-back tasks in one message; answers cancellations.

    The whole message is checked before any of it is applied. Entries for tasks the server
    does not know (it restarted, the job is gone) are discarded and listed as such.
    """
    farm = farm_of(request)
    worker_id = request.match_info["worker"]
    body = await read_body(request)
    done = []
    for item in _get(body, "done", list, []):
        if not isinstance(item, dict):
            raise ProtocolError("each 'done' entry must be a map")
        ok = item.get("ok", False) is True
        seconds = _get(item, "seconds", (int, float, type(None)), None)
        started_at = _get(item, "started_at", (int, float, type(None)), None)
        done.append(
            (
                _task_id(item),
                ok,
                item.get("result"),
                # What is journaled stays bounded (a task's log keeps its tail anyway), and a
                # task that prints the secret (an environment dump) never stores it.
                auth.redact(_get(item, "error", str, "" if ok else "task failed"), farm.secret)[
                    :MAX_ERROR_CHARS
                ],
                auth.redact(_get(item, "traceback", str, ""), farm.secret)[-MAX_TRACEBACK_CHARS:],
                auth.redact(_get(item, "log", str, ""), farm.secret)[-LOG_TAIL_CHARS:],
                (
                    float(started_at) if _finite(started_at) else None,
                    float(seconds) if _finite(seconds) and 0 <= seconds < 1e9 else None,
                ),
                not ok and item.get("job_fault", False) is True,
            )
        )
    progress = []
    for item in _get(body, "progress", list, []):
        if not isinstance(item, dict):
            raise ProtocolError("each 'progress' entry must be a map")
        fraction = _get(item, "fraction", (int, float), 0.0)
        progress.append(
            (
                _task_id(item),
                float(fraction) if _finite(fraction) else None,  # NaN never reaches a view
                _get(item, "message", str, ""),
            )
        )
    released = _get(body, "release", list, [])
    if not all(isinstance(task_id, str) and _TASK_ID.fullmatch(task_id) for task_id in released):
        raise ProtocolError("'release' must be a list of task ids")
    nimby = _get(body, "nimby", (str, type(None)), None)

    scheduler = farm.scheduler
    now = time.time()
    reporter = scheduler.touch(worker_id, now)  # a heartbeat, whatever else happens
    if nimby is not None and reporter.nimby != nimby[:MAX_NAME]:
        # The worker's live state (--nimby): kept in memory, sent with every heartbeat.
        reporter.nimby = nimby[:MAX_NAME]
        log.info("worker %s: %s", reporter.name,
                 f"stays away: {reporter.nimby}" if nimby else "takes work again")  # fmt: skip
        farm.after_change()  # one that takes work again is served a parked long-poll
    for task_id, fraction, message in progress:  # kept in memory only: never journaled
        with contextlib.suppress(NotFound):
            scheduler.progress(worker_id, task_id, fraction, message)
    # What would be recorded is journaled first and applied once on disk (Farm.change): a
    # refused report (503) leaves every task as it was, for the worker to report again.
    events: list[tuple[Any, ...]] = []
    entries: list[
        tuple[str, bool, Any, str, str, str, tuple[float | None, float | None], bool]
    ] = []
    discarded: list[str] = []
    store = resultstore.store_of(request)
    to_write: list[tuple[str, bytes]] = []
    for task_id, ok, result, error, traceback, log_text, timing, job_fault in done:
        try:
            counts = (
                scheduler.can_complete(task_id) if ok else scheduler.can_fail(worker_id, task_id)
            )
        except NotFound:
            counts = False
        if not counts:
            discarded.append(task_id)
            continue
        if ok:
            result, packed = store.plan(task_id, result)
            if packed is not None:
                to_write.append((task_id, packed))
        entries.append((task_id, ok, result, error, traceback, log_text, timing, job_fault))
    written: dict[str, resultstore.Kept] = {}
    if to_write:
        # Big results go to files first (in a thread), so the journal, the snapshot and the
        # task records hold only references; a refused write changes nothing (503).
        try:
            kept = await asyncio.get_running_loop().run_in_executor(None, store.write_all, to_write)
        except OSError as exc:
            log.error("cannot write result files under %s: %s", store.folder, exc)
            return respond_error(
                request, 503, f"the server cannot store results now ({exc.strerror or exc})"
            )
        written = {task_id: item for (task_id, _), item in zip(to_write, kept, strict=True)}
        del to_write  # the packed bytes: the files hold them now
        entries = [
            (task_id, ok, written[task_id].recorded if task_id in written else result, *rest)
            for task_id, ok, result, *rest in entries
        ]
    for task_id, ok, result, error, traceback, log_text, timing, job_fault in entries:
        if ok:
            events.append(("complete", now, worker_id, task_id, result, log_text, *timing))
        else:
            # A job fault is journaled as an eighth field (older journals have seven).
            fault = (True,) if job_fault else ()
            events.append(
                ("fail", now, worker_id, task_id, error, traceback, log_text, *timing, *fault)
            )
    if released:
        events.append(("release", now, worker_id, released))

    def apply() -> tuple[list[str], list[str]]:
        accepted: list[str] = []
        late: list[str] = []
        for task_id, ok, result, error, traceback, log_text, timing, job_fault in entries:
            try:
                if ok:
                    recorded = scheduler.complete(
                        worker_id, task_id, result, now, log_text, *timing
                    )
                else:
                    recorded = scheduler.fail(
                        worker_id, task_id, error, traceback, now, log_text, True, *timing,
                        job_fault=job_fault,
                    )  # fmt: skip
                    if recorded:
                        log.warning(
                            "task %s failed on %s%s: %s",
                            task_id,
                            worker_id,
                            " (the job's own fault: the job fails)" if job_fault else "",
                            error,
                        )
            except NotFound:
                recorded = False
            (accepted if recorded else late).append(task_id)
        if released:
            with contextlib.suppress(NotFound):  # the worker left meanwhile: nothing it held
                scheduler.release(worker_id, released, now)
        return accepted, late

    if events:
        accepted, late = await farm.change_all(events, apply)
    else:
        accepted, late = [], []
    unused = [written[task_id].path for task_id in late if task_id in written]
    if unused:  # files of results that were not recorded (another report's came first)
        asyncio.get_running_loop().run_in_executor(None, store.remove_files, unused)
    try:
        cancel = scheduler.take_cancellations(worker_id)
    except NotFound:
        cancel = []
    return respond(request, {"accepted": accepted, "discarded": discarded + late, "cancel": cancel})


@routes.post(f"{API}/workers/{{worker}}/watch")
async def watch(request: web.Request) -> web.Response:
    """Long-poll for cancellations (answers at once when there are some); a heartbeat too."""
    farm = farm_of(request)
    worker_id = request.match_info["worker"]
    body = await read_body(request)
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
    return respond(request, {"cancel": cancels})


@routes.delete(f"{API}/workers/{{worker}}")
async def unregister(request: web.Request) -> web.Response:
    farm = farm_of(request)
    worker_id = request.match_info["worker"]
    farm.scheduler.worker(worker_id)  # an unknown worker: 404, nothing journaled
    now = time.time()
    returned = await farm.change(
        ("unregister", now, worker_id), lambda: farm.scheduler.unregister(worker_id, now)
    )
    log.info("worker %s left; %d task(s) back in the queue", worker_id, len(returned))
    return respond(request, {"returned": [task.id for task in returned]})


# ---- application ----------------------------------------------------------------------------


async def pending_notices(request: web.Request) -> web.Response:
    """The job-end notices not yet delivered (or given up), oldest job end first."""
    owed = farm_of(request).scheduler.notices.pending.values()
    return respond(request, [n.to_dict() for n in sorted(owed, key=lambda n: n.ended_at)])


async def events_feed(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/events/feed``: the farm's events, one JSON object per line."""
    farm = farm_of(request)
    return await feed.stream(
        request, farm.feed, farm.scheduler, str(farm.config.name),
        lambda line: auth.redact_bytes(line, farm.secret),
    )  # fmt: skip


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
    app.router.add_get(f"{API}/events/feed", events_feed)
    app.router.add_get(f"{API}/notices", pending_notices)
    jobtypes_routes.add_routes(app, config.root)
    jobroutes.add_routes(app)
    taskfiles.add_routes(app)  # the task table in pages, logs in pieces, frames
    people.add_routes(app)  # named tokens, whoami
    workerroutes.add_routes(app)  # drain, disable, enable, requeue, forget, schedule
    store = resultstore.ResultStore(
        (config.state_dir or state_dir(config.root)) / "results", enabled=config.journal
    )
    resultstore.add_routes(app, store)  # big results in files, streamed to the client
    sleeper: list[asyncio.Task[None]] = []

    async def start_background(app: web.Application) -> None:
        farm._expiry_task = asyncio.create_task(farm.expire_leases())
        sleeper.append(asyncio.create_task(farm.watch_loop()))
        sleeper.append(
            asyncio.create_task(workerroutes.run_schedules(farm, app[workerroutes.SLEEPER_KEY]))
        )
        if farm.journal is not None and farm.journal.buffer:  # what the start recorded
            try:
                await farm.journal.commit()
            except JournalError as exc:
                log.error("%s", exc)
        farm.notifier.start()
        # Result files of jobs deleted while a server stopped before removing them.
        known = set(farm.scheduler.jobs)
        swept = await asyncio.get_running_loop().run_in_executor(None, store.sweep, known)
        if swept:
            log.info("removed the result files of %d deleted job(s)", swept)

    async def stop_background(app: web.Application) -> None:
        for task in sleeper:  # first: it journals (a schedule's end gives tasks back)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        farm.release_waiters()
        await farm.notifier.stop()
        await farm.stop_snapshot()
        farm.watchdog.stop()
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
    if holder is not None:  # members with no --host find the server through the root
        server_record.publish(
            holder, root=config.root, farm=config.name, farm_id=auth.farm_id(app[FARM_KEY].secret),
            bind=config.bind, port=port, tls_fingerprint=fingerprint, version=buildcat.__version__,
        )  # fmt: skip
    # SIGTERM, SIGINT; Ctrl-C, Ctrl-Break on Windows
    platform.on_stop_signals(loop, lambda _signum: stop.set())
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
