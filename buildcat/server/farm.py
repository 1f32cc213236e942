"""The server's state: the scheduler, the journal and the requests waiting on them.

:class:`Farm` is what every route works on (``request.app[FARM_KEY]``); the routes live
in :mod:`buildcat.server.app` (the API) and :mod:`buildcat.server.web` (the dashboard).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from aiohttp import web

from buildcat import auth, protocol
from buildcat.errors import FarmError
from buildcat.root import state_dir
from buildcat.server import connections, feed, heap, notices, outputs, snapshot, stalls
from buildcat.server.journal import Journal, recover
from buildcat.server.journal import encode as journal_record
from buildcat.server.notifier import Notifier
from buildcat.server.scheduler import (
    FINAL_JOB_STATES,
    SAME_VERSION_KINDS,
    Conflict,
    Job,
    Scheduler,
    SchedulerError,
    Task,
    Worker,
    requirement_met,
    split_requirement,
)
from buildcat.server.tokens import TOKENS_FILE, TokenTable

log = logging.getLogger(__name__)

#: At shutdown, how long a snapshot being written in the background may take to finish.
SNAPSHOT_GRACE = 10.0

T = TypeVar("T")

#: Parked lease requests served in one go before the event loop runs others.
DISPATCH_PIECE = 500


@dataclass(slots=True)
class ServerConfig:
    root: Path
    bind: str = "127.0.0.1"
    port: int = protocol.DEFAULT_PORT
    name: str = field(default_factory=socket.gethostname)
    lease_timeout: float = 30.0
    state_dir: Path | None = None
    journal: bool = True
    #: Journal events between snapshots (each snapshot starts the journal afresh), at the
    #: least: a snapshot also waits for as many events as the last one held tasks, so
    #: what snapshots cost grows with the work, not with its square.
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
    #: URLs told of every job's end (``--notify``), besides each job's own.
    notify: list[str] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class Waiter:
    worker_id: str
    want: int
    future: asyncio.Future[list[Task]]
    can_send: Callable[[Task], bool] | None = None


class Farm:
    """The server's state: one scheduler plus the requests waiting on it."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.secret = (
            auth.check_token(config.token, "--token/FARM_TOKEN")
            if config.token
            else auth.ensure_secret(config.root)
        )
        #: People's named tokens (``farm token add``), beside the journal.
        self.tokens = TokenTable.load(
            (config.state_dir or state_dir(config.root)) / TOKENS_FILE if config.journal else None
        )
        #: The salt of the dashboard's keys: read (or made) when the server starts serving.
        self.dashboard_salt = ""
        #: The port the server listens on (known once bound): names the dashboard cookie.
        self.port = config.port
        self.scheduler = Scheduler(lease_timeout=config.lease_timeout)
        self.waiters: deque[Waiter] = deque()
        self._dispatching = False
        #: Requests being answered before parked workers are served (see hold_dispatch).
        self.dispatch_held = 0
        self.compact_waiters_at = 64
        self.job_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.watchers: dict[str, asyncio.Future[None]] = {}
        #: Submits being written to the journal: their job ids, and by idempotency key.
        self.reserved_ids: set[str] = set()
        self.submitting: dict[str, asyncio.Future[Job]] = {}
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
        #: The snapshot being written in the background, and how many were written.
        self.snapshot_task: asyncio.Task[None] | None = None
        self.snapshot_child: snapshot.Child | None = None
        self.snapshot_given_up = False  # at shutdown: the one being written is killed
        self.snapshots = 0
        #: Tasks the last snapshot (or the start) held: the next waits for as many events.
        self.snapshot_tasks = 0
        #: A snapshot is worth taking at once (given snapshot_every events since the last):
        #: a job of at least heap.BIG_JOB tasks ended, or the start replayed a long journal.
        self.snapshot_soon = False
        #: The longest the event loop was late for its 50 ms tick (seconds), since start.
        self.loop_pause_max = 0.0
        self.watchdog = stalls.Watchdog()
        #: The frame files each unfinished render job writes (rebuilt from the jobs below).
        self.outputs = outputs.OutputClaims()
        #: Sends the job-end notices the scheduler owes; the feed of events for scripts.
        self.notifier = Notifier(self)
        self.feed = feed.Feed()
        if config.journal:
            with heap.building():  # no collection walks the queue while it is rebuilt
                self._restore(config)
        self.notify_unfinished()

    def _restore(self, config: ServerConfig) -> None:
        """The queue from the snapshot and the journal after it."""
        folder = config.state_dir or state_dir(config.root)
        self.snapshot_path = folder / "snapshot.bin"
        for unfinished in snapshot.child_files(folder):  # its server was killed
            with contextlib.suppress(OSError):
                unfinished.unlink()
        restored = snapshot.restore(self.scheduler, self.snapshot_path)
        self.generation = restored.generation if restored else 0
        recovery = recover(
            folder / "journal.bin",
            self.scheduler,
            self.generation,
            salvage=config.salvage,
            after=restored.after if restored else None,
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
        if recovery.set_aside or (restored and restored.legacy):
            # Salvaged (the damaged journal must go) or an old snapshot without a checksum.
            self.write_snapshot()
        elif recovery.rebase is not None:
            # A snapshot written while the server ran, its journal not yet restarted.
            self.journal.rebase_now(self.generation, recovery.rebase)
        elif recovery.restart:
            self.journal.restart(self.generation)
        for job in self.scheduler.jobs.values():
            if job.state not in FINAL_JOB_STATES:
                self.outputs.claim(job.id, self.job_outputs(job))
        self.snapshot_tasks = self.tasks_held()
        # The events replayed are the journal's since the snapshot; a long journal costs
        # every later start as much again: snapshot soon.
        self.snapshot_at = self.journal.appended - recovery.replayed
        self.snapshot_soon = recovery.replayed >= config.snapshot_every
        heap.settle()  # what the start loaded lives long: out of the collector's walks

    def notify_unfinished(self) -> None:
        """The server's ``--notify`` URLs apply to the jobs it finds unfinished too: each
        such job gets them (journaled, ahead of whatever the job does next)."""
        if not self.config.notify:
            return
        now = time.time()
        for job in self.scheduler.jobs.values():
            if job.state in FINAL_JOB_STATES or not isinstance(job.meta, dict):
                continue
            urls = list(job.meta.get(notices.META_KEY) or [])
            missing = [url for url in self.config.notify if url not in urls]
            if missing:
                job.meta[notices.META_KEY] = urls + missing
                self.record("notify", now, job.id, job.meta[notices.META_KEY])

    def job_outputs(self, job: Job) -> dict[outputs.Pattern, list[int]]:
        """The frames a job writes, by output pattern (see :mod:`buildcat.server.outputs`)."""
        common = job.meta.get("common") or {}
        if not outputs.claims(job.kind, common) and not any(b"kind" in t.packed for t in job.tasks):
            return {}  # no task names a kind of its own: none is decoded to look
        return outputs.claimed_frames(
            job.kind, ((t.payload, t.depends) for t in job.tasks), job.meta.get("common") or {}
        )

    def output_writer(self, job_id: str) -> bool:
        """The job is unfinished (or being submitted): its frame files are still its own."""
        job = self.scheduler.jobs.get(job_id)
        if job is None:
            return job_id in self.reserved_ids
        return job.state not in FINAL_JOB_STATES

    def check_outputs(
        self,
        claims: dict[outputs.Pattern, list[int]],
        job_id: str = "",
        runs_after: Collection[str] = (),
    ) -> None:
        """Refuse (409) a job that would write frames an unfinished other job writes; the
        jobs it runs after (``after``) do not count: they will have ended before it starts."""
        clash = self.outputs.conflict(claims, self.output_writer, job_id, set(runs_after))
        if clash is not None:
            other, path = clash
            raise Conflict(
                f"job {other} is unfinished and writes {path} too: wait for it or cancel it, "
                "or give this job another --output"
            )

    def snapshot_due(self) -> bool:
        """Enough has been journaled since the last snapshot: ``snapshot_every`` events, and
        as many as the last snapshot held tasks (a snapshot costs what the queue holds, so
        each is paid for by as much work as it writes), or sooner when :attr:`snapshot_soon`."""
        journal = self.journal
        if journal is None or self.snapshot_task is not None:
            return False
        since = journal.appended - self.snapshot_at
        if since < self.config.snapshot_every:
            return False
        # A big job's end: its whole run is in the journal, which a restart would replay.
        return self.snapshot_soon or since >= self.snapshot_tasks

    def tasks_held(self) -> int:
        return sum(len(job.tasks) for job in self.scheduler.jobs.values())

    def start_snapshot(self) -> None:
        """Take a snapshot in the background (one at a time)."""
        if self.snapshot_task is None:
            self.snapshot_task = asyncio.create_task(self._snapshot_in_background())

    async def _snapshot_in_background(self) -> None:
        try:
            await self.take_snapshot()
        except (OSError, FarmError) as exc:
            if self.snapshot_given_up:
                log.info("journal: the snapshot being written was given up at shutdown")
            else:
                log.error("could not write a snapshot: %s", exc)
        finally:
            self.snapshot_task = None

    async def take_snapshot(self) -> None:
        """Write the whole queue to snapshot.bin and start the journal afresh. Where the
        platform forks, a child writes it while the server goes on (see
        :mod:`buildcat.server.snapshot`); elsewhere it is written on the event loop."""
        journal = self.journal
        if journal is None:
            return
        await journal.settle()
        # From here to the fork nothing awaits: no request changes the queue meanwhile.
        if not snapshot.CAN_FORK:
            self.write_snapshot()
            return
        started = time.perf_counter()
        generation, offset = self.generation + 1, journal.size
        child = snapshot.write_in_child(
            self.snapshot_path, generation, self.scheduler, (journal.generation, offset)
        )
        forked = time.perf_counter() - started
        self.snapshot_child, self.snapshot_at = child, journal.appended
        self.snapshot_tasks, self.snapshot_soon = self.tasks_held(), False
        try:
            size = await asyncio.to_thread(child.wait)
        finally:
            self.snapshot_child = None
        # Snapshot `generation` is in place; it holds the journal up to `offset`.
        self.generation = generation
        self.snapshots += 1
        await journal.rebase(generation, offset)
        log.info(
            "journal: snapshot %d written (%d bytes, %.0f ms, in the background; the fork "
            "took %.1f ms)",
            generation,
            size,
            (time.perf_counter() - started) * 1000,
            forked * 1000,
        )

    async def stop_snapshot(self, grace: float = SNAPSHOT_GRACE) -> None:
        """At shutdown: a snapshot being written gets ``grace`` seconds to finish (the next
        start reads it instead of replaying the journal), then is given up (the one before
        it and the journal hold everything). One that is due (a big job just ended, say)
        is started first, on the same terms."""
        if snapshot.CAN_FORK and self.snapshot_due():
            self.start_snapshot()
        if self.snapshot_task is not None:
            await asyncio.wait([self.snapshot_task], timeout=grace)
        if self.snapshot_child is not None:
            self.snapshot_given_up = True
            self.snapshot_child.kill()
        if self.snapshot_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.snapshot_task

    async def watch_loop(self) -> None:
        """Measure how late the event loop is for a 50 ms tick: its longest pause."""
        tick = 0.05
        self.watchdog.start()
        while True:
            started = time.perf_counter()
            self.watchdog.beat = time.monotonic()
            await asyncio.sleep(tick)
            late = time.perf_counter() - started - tick
            if late > self.loop_pause_max:
                self.loop_pause_max = late

    def write_snapshot(self) -> None:
        assert self.journal is not None
        started = time.perf_counter()
        self.snapshot_tasks, self.snapshot_soon = self.tasks_held(), False
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

    async def change(self, event: tuple[Any, ...], apply: Callable[[], T]) -> T:
        """Journal first, change second: encode ``event`` (ProtocolError, a 400), wait until
        it is on disk (JournalError, a 503), and only then ``apply`` it, so a refused request
        changes nothing. ``apply`` runs the moment the event is durable, in journal order,
        even when the request is gone by then; what it raises (the queue moved on since the
        request was checked: replay skips the event the same way) is raised here."""
        return await self.change_all([event], apply)

    async def change_all(self, events: list[tuple[Any, ...]], apply: Callable[[], T]) -> T:
        """:meth:`change` for a request that makes several events (all or none)."""
        if self.journal is None:
            result = apply()
            self.after_change()
            return result
        records = [journal_record(list(event)) for event in events]  # all encode, or none
        return await self.change_records(records, apply, events[0][0])

    async def change_records(
        self, records: list[bytes], apply: Callable[[], T], kind: str = "submit"
    ) -> T:
        """:meth:`change_all` for events encoded already (``journal.encode``)."""
        if self.journal is None:
            result = apply()
            self.after_change()
            return result
        outcome: list[tuple[bool, Any]] = []

        def then() -> None:
            try:
                outcome.append((True, apply()))
            except SchedulerError as exc:
                outcome.append((False, exc))
            except Exception as exc:
                log.exception("applying %s failed", kind)
                outcome.append((False, exc))
            self.after_change()

        for record in records:
            self.journal.append_record(record)
        await self.journal.commit(then)
        ok, value = outcome[0]
        if not ok:
            raise value
        return cast(T, value)

    def new_job_id(self) -> str:
        while True:
            job_id = secrets.token_hex(4)
            if job_id not in self.scheduler.jobs and job_id not in self.reserved_ids:
                return job_id

    # ---- waking ------------------------------------------------------------------------

    def after_change(self) -> None:
        """Hand ready tasks to waiting workers (soon: see :meth:`dispatch_soon`) and wake
        waiters of finished jobs."""
        if self.waiters and self.scheduler.ready_total > 0 and not self.dispatch_held:
            self.dispatch_soon()
        for worker_id in self.scheduler.take_cancel_notices():
            watcher = self.watchers.pop(worker_id, None)
            if watcher is not None and not watcher.done():
                watcher.set_result(None)
        for job in self.scheduler.take_finished():
            if len(job.tasks) >= heap.BIG_JOB:
                heap.settle()  # its results are final
                self.snapshot_soon = True
            log.info("job %s %s", job.id, job.state)
            self.outputs.release(job.id)
            if job.kind == "blender":
                self.sweep_render_leftovers(job)
            for future in self.job_waiters.pop(job.id, []):
                if not future.done():
                    future.set_result(None)
        changed = self.scheduler.take_changed()
        self.feed.observe(self.scheduler, changed)
        self.notifier.wake()
        if self.listeners:
            self.update_event.set()
            self.update_event = asyncio.Event()

    def sweep_render_leftovers(self, job: Job) -> None:
        """A render job ended: its staging folders and empty parts folders go (in a thread:
        the root may be a slow network share)."""
        from buildcat.jobs import blender as blender_jobs

        payloads = [task.payload for task in job.tasks]

        def sweep() -> None:
            try:
                swept = blender_jobs.sweep_job_leftovers(self.config.root, job.id, payloads)
            except Exception:  # never let housekeeping reach the server's loop
                log.exception("job %s: sweeping its leftover folders failed", job.id)
                return
            if swept:
                log.info("job %s: removed %d leftover folder(s)", job.id, len(swept))

        # No loop (a replay at start): nothing to sweep now; the folders wait for the next
        # run of the job, or a worker's own sweep.
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().run_in_executor(None, sweep)

    def live_waiters(self) -> list[Waiter]:
        """Parked lease requests still waiting; finished ones are dropped from the queue
        here too, so an idle farm's queue does not grow by one entry per long-poll."""
        live = [waiter for waiter in self.waiters if not waiter.future.done()]
        if len(live) < len(self.waiters):
            self.waiters = deque(live)
        return live

    @contextlib.contextmanager
    def hold_dispatch(self) -> Iterator[None]:
        """Parked workers are served once this request's answer is on its way: a submit
        that wakes 10,000 of them is answered first. Held only while its change is being
        written (milliseconds), never while a big submit is taken in."""
        self.dispatch_held += 1
        try:
            yield
        finally:
            self.dispatch_held -= 1
            if self.waiters and self.scheduler.ready_total > 0 and not self.dispatch_held:
                self.dispatch_soon()

    def dispatch_soon(self) -> None:
        """Dispatch once the request that made work ready is answered (a submit that wakes
        10,000 parked workers answers first), :data:`DISPATCH_PIECE` waiters at a time."""
        if self._dispatching:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test driving the farm by hand): at once
            self.dispatch(time.time())
            return
        self._dispatching = True
        loop.call_soon(self._dispatch_piece)

    def _dispatch_piece(self) -> None:
        self._dispatching = False
        if self.dispatch(time.time(), DISPATCH_PIECE):
            self.dispatch_soon()

    def dispatch(self, now: float, most: int = 0) -> bool:
        """Lease ready tasks to parked workers, in the order they asked; with ``most``, to
        that many at most. True when some were left for the next piece."""
        unmatched: list[Waiter] = []
        served = 0
        while self.waiters and self.scheduler.ready_total > 0:
            if most and served >= most:
                self.waiters.extendleft(reversed(unmatched))
                return True
            served += 1
            waiter = self.waiters.popleft()
            if waiter.future.done():
                continue
            try:
                tasks = self.scheduler.lease(waiter.worker_id, waiter.want, now, waiter.can_send)
            except SchedulerError:
                waiter.future.set_result([])
                continue
            if tasks:
                self.record("lease", now, waiter.worker_id, [task.id for task in tasks])
                waiter.future.set_result(tasks)
            else:
                unmatched.append(waiter)
        self.waiters.extendleft(reversed(unmatched))
        return False

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
        self.feed.close()
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
            if self.snapshot_due():
                self.start_snapshot()


# ---- request and response helpers ---------------------------------------------------------

FARM_KEY = web.AppKey("farm", Farm)


def farm_of(request: web.Request) -> Farm:
    return request.app[FARM_KEY]


#: Where the auth middleware puts who sent a request (a named token's name; with the farm
#: secret, the person its ``X-Buildcat-User`` header names, else "admin"), their role,
#: and what they sent: ``"secret"``, ``"token"`` (a named token) or ``"dashboard"``.
WHO_KEY = "buildcat.who"
ROLE_KEY = "buildcat.role"
VIA_KEY = "buildcat.via"


@dataclass(slots=True, frozen=True)
class Caller:
    name: str
    role: str
    via: str


def who_of(request: web.Request) -> str:
    """Who sent the request, for a job's owner and its history ("" when unknown)."""
    return str(request.get(WHO_KEY, ""))


def caller_of(request: web.Request) -> Caller:
    return Caller(who_of(request), str(request.get(ROLE_KEY, "")), str(request.get(VIA_KEY, "")))


#: Per list of jobs: the online workers, and those that can serve each kind of need.
Able = dict[Any, list[Worker]]


def unmet(farm: Farm, job: Job, able_by_need: Able | None = None) -> str:
    """Why nothing runs: the jobs it waits for (``after``), or no online worker meets the
    job's requirements (or has the Blender version the job holds). ``able_by_need``
    (one per list of jobs) keeps the workers found for each set of needs, so a list of
    jobs looks at each worker once per distinct need, not once per job."""
    scheduler = farm.scheduler
    if job.waiting_for:
        return scheduler.waiting_reason(job)
    found = {} if able_by_need is None else able_by_need
    if "online" not in found:
        found["online"] = [w for w in scheduler.workers.values() if w.online]
    online = found["online"]
    need = (tuple(job.requires), job.kind, job.blender_version)
    if need not in found:
        found[need] = [w for w in online if scheduler.can_serve(job, w)]
    able = found[need]
    if able and all(w.name in job.blocked for w in able):
        blocked = ", ".join(sorted(w.name for w in able))
        return f"every worker that can run it is blocked ({blocked}): farm unblock {job.id}"
    now = time.time()
    unblocked = [w for w in able if w.name not in job.blocked]
    if unblocked and not any(scheduler.takes_work(w, now) for w in unblocked):
        return _not_taking(scheduler, job, unblocked, now)
    held = job.blender_version if job.kind in SAME_VERSION_KINDS else ""
    if able or not (job.requires or held):
        return ""
    needs = ", ".join(job.requires)
    if held:
        version = f"Blender {held}, the version this job renders every task with"
        needs = f"{needs} and {version}" if needs else version
    if not online:
        return f"no worker is online; this job needs {needs}"
    wanted = {split_requirement(r)[0] for r in job.requires}
    names = sorted(wanted | {SAME_VERSION_KINDS[job.kind]} if held else wanted)

    def has(worker: Worker) -> str:
        shown = [f"{n} {worker.capabilities[n]}".strip() for n in names if n in worker.capabilities]
        return ", ".join(shown) or "none"

    seen = ", ".join(f"{w.name} ({has(w)})" for w in online[:5])
    tags = {split_requirement(r)[0] for r in job.requires if not split_requirement(r)[1]}
    missing = [n for n in sorted(tags) if not any(n in w.capabilities for w in online)]
    if missing:
        return (
            f"no online worker has {', '.join(missing)} (this job requires {needs}; "
            f"farm worker --tags {missing[0]} gives a worker a tag): {seen}"
        )
    meets = [w for w in online if all(requirement_met(r, w.capabilities) for r in job.requires)]
    if held and meets:
        return f"no online worker has Blender {held}, the version this job renders with: {seen}"
    return f"no online worker meets {needs}: {seen}"


def _not_taking(scheduler: Scheduler, job: Job, workers: list[Worker], now: float) -> str:
    """Every online worker that could run the job takes no work now: which are disabled,
    draining or asleep (until when, on their own clocks)."""
    groups: dict[str, list[str]] = {}
    for worker in sorted(workers, key=lambda w: w.name):
        settings = scheduler.worker_settings.get(worker.name)
        if settings is None or (worker.nimby and settings.takes_work(now)):
            if worker.nimby:
                groups.setdefault("in use by someone (--nimby)", []).append(worker.name)
            continue
        if not settings.enabled:
            groups.setdefault("disabled", []).append(worker.name)
        elif settings.draining:
            groups.setdefault("draining", []).append(worker.name)
        else:
            parsed = settings.schedule()
            wakes = settings.span(now)[1]
            when = ""
            if parsed is not None and wakes is not None:
                local = datetime.datetime.fromtimestamp(wakes, parsed.zone)
                when = f" until {local:%a %H:%M} {parsed.timezone}"
            groups.setdefault(f"asleep{when}", []).append(worker.name)
    said = "; ".join(f"{state} ({', '.join(names)})" for state, names in groups.items())
    steered = "disabled" in groups or "draining" in groups
    hint = "; farm worker-enable NAME lets one take work again" if steered else ""
    if job.requires:
        return f"the only workers with {', '.join(job.requires)} are {said}{hint}"
    return f"every online worker is {said}{hint}"
