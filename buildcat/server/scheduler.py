"""The task queue: jobs, tasks, workers and leases, as a synchronous class with no I/O.

Time is always passed in (``now``), so every rule here can be tested without sockets or
clocks. The HTTP layer (``server.app``) translates requests into these calls and wakes
waiting workers when :attr:`Scheduler.ready_total` says there is work.
"""

from __future__ import annotations

import bisect
import math
import secrets
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from buildcat.errors import FarmError
from buildcat.jobs import work_of
from buildcat.server.histogram import DISPATCH_BUCKETS, DURATION_BUCKETS, Histogram
from buildcat.server.notices import Notices
from buildcat.server.workerset import WorkerSettings

DEFAULT_LEASE_TIMEOUT = 30.0
DEFAULT_MAX_ATTEMPTS = 3
#: A worker that fails this many tasks of one job is blocked from that job.
DEFAULT_BLOCK_AFTER = 3
LOG_TAIL_CHARS = 16_384
#: Workers that left stay listed (``offline``) until this many have left after them, or
#: the server restarts: a farm whose workers come and go under new names (``host-pid``)
#: keeps a bounded list.
DEPARTED_WORKERS_KEPT = 100
#: A job may wait for at most this many other jobs (``after``).
MAX_AFTER = 256
#: A job failed because a job it waited for failed keeps that job's reason, cut to this.
MAX_AFTER_ERROR = 4096
#: Jobs of these kinds run every task on one version of the named capability: the version
#: of the first worker that leases one of their tasks (one Blender for a whole shot).
SAME_VERSION_KINDS = {"blender": "blender"}
#: Steps (a task's ``step``) of tasks that use up what the tasks they wait for wrote: a
#: Blender stitch or merge deletes its parts once the frame is whole, so running one again
#: runs its parts again too (``Scheduler.rerun_chain``).
CONSUMING_STEPS = {"blender": frozenset({"stitch", "merge"})}


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskState(StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WorkerState(StrEnum):
    IDLE = "idle"
    BUSY = "busy"
    OFFLINE = "offline"


FINAL_JOB_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
FINAL_TASK_STATES = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})


class SchedulerError(FarmError):
    """A request the queue refuses (unknown id, bad task graph); the HTTP layer sends 4xx."""

    status = 400


class NotFound(SchedulerError):
    status = 404


class Conflict(SchedulerError):
    status = 409


@dataclass(slots=True)
class TaskSpec:
    """One task of a job as submitted: what to run (a map, or that map already packed by
    :func:`pack_payload`) and which earlier tasks it waits for."""

    payload: dict[str, Any] | bytes
    depends: list[int] = field(default_factory=list)

    def packed(self) -> bytes:
        payload = self.payload
        return payload if isinstance(payload, bytes) else pack_payload(payload)

    def decoded(self) -> dict[str, Any]:
        payload = self.payload
        if isinstance(payload, bytes):
            return msgpack.unpackb(payload, raw=False, strict_map_key=False)
        return payload


@dataclass(slots=True, eq=False)
class Task:
    """One task of a job. A million of them may be queued at once, so what most tasks never
    use costs nothing: no dependencies and no failures are one shared empty tuple and
    frozenset, not an empty list and set each (see docs/scaling.md)."""

    job: Job
    index: int
    #: What it runs, msgpack-packed: a ~50-byte string held instead of a ~280-byte map
    #: and its members (read it as :attr:`payload`).
    packed: bytes
    depends: tuple[int, ...] = ()
    dependents: tuple[int, ...] = ()
    pending_deps: int = 0
    state: TaskState = TaskState.QUEUED
    worker: str | None = None
    attempts: int = 0
    failures: int = 0
    #: The names of the workers it failed on (replaced, never changed in place).
    failed_on: frozenset[str] = frozenset()
    lease_expires_at: float = 0.0
    leased_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: str = ""
    traceback: str = ""
    log: str = ""
    progress: float = 0.0
    progress_message: str = ""
    #: When the task last became ready to run (for the dispatch latency).
    ready_at: float = 0.0
    #: The name of the worker that ran (or runs) it, kept after the worker leaves.
    worker_name: str = ""
    #: When the worker started it and how long it ran, as the worker reported.
    started_at: float | None = None
    seconds: float | None = None

    @property
    def id(self) -> str:
        return f"{self.job.id}.{self.index}"

    @property
    def payload(self) -> dict[str, Any]:
        """What it runs, decoded afresh each time (changing the copy changes nothing)."""
        return msgpack.unpackb(self.packed, raw=False, strict_map_key=False)

    def to_dict(self, with_result: bool = False) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": self.id,
            "index": self.index,
            "state": str(self.state),
            "worker": self.worker,
            "worker_name": self.worker_name,
            "attempts": self.attempts,
            "failures": self.failures,
            "depends": self.depends,
            "progress": self.progress,
            "progress_message": self.progress_message,
            "leased_at": self.leased_at,
            "finished_at": self.finished_at,
            "started_at": self.started_at,
            "seconds": self.seconds,
            "error": self.error,
            "traceback": self.traceback,
            "label": self.payload.get("label", ""),
        }
        if with_result:
            view["result"] = self.result
            view["log"] = self.log
        return view


@dataclass(slots=True, eq=False)
class Job:
    id: str
    seq: int
    name: str
    kind: str
    priority: int
    requires: list[str]
    max_attempts: int
    created_at: float
    owner: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    tasks: list[Task] = field(default_factory=list)
    ready: deque[int] = field(default_factory=deque)
    state: JobState = JobState.QUEUED
    paused: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    error: str = ""
    traceback: str = ""
    timeout: float | None = None
    blocked: set[str] = field(default_factory=set)
    failures_by_worker: dict[str, int] = field(default_factory=dict)
    #: The client's idempotency key for the submit that made the job, and a digest of
    #: that request: the same submit sent again finds this job instead of making another.
    submit_key: str = ""
    submit_digest: str = ""
    #: Indices of the tasks in the order they finished done (a task done stays done), so
    #: a reader can follow new results without scanning every task. ``requeue_task``
    #: makes done tasks undone: it puts a new array here, so a reader that kept the old
    #: one (``is not``) knows to start over.
    done_order: array[int] = field(default_factory=lambda: array("L"))
    #: The exact Blender version (as workers report it, "4.5.15") every task of a render job
    #: runs on: the first worker's to lease one of its tasks; "" until then.
    blender_version: str = ""
    #: Jobs this one runs after (``--after``): none of its tasks is ready until they are
    #: done, and it fails when one fails or is cancelled, unless ``after_any`` (then it
    #: runs once they have all ended, whatever their state).
    after: list[str] = field(default_factory=list)
    after_any: bool = False
    #: Those of ``after`` that have not ended yet: while any is left the job is queued but
    #: out of the dispatch list, its tasks in no ready queue.
    waiting_for: set[str] = field(default_factory=set)
    #: Archived jobs are kept but left out of the default lists (``farm archive``).
    archived: bool = False
    #: Who steered the job and how, oldest first: ``{"at", "action", "by"}`` each.
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def order_key(self) -> tuple[int, int]:
        """Higher priority first, then first come first served."""
        return (-self.priority, self.seq)

    def count(self, state: TaskState, delta: int) -> None:
        self.counts[state] = self.counts.get(state, 0) + delta

    def summary(self) -> dict[str, Any]:
        """The short view of the job that event feeds and job-end notices carry."""
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "state": str(self.state),
            "error": self.error,
            "owner": self.owner,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "total": len(self.tasks),
            "tasks": {str(state): count for state, count in self.counts.items() if count},
        }

    def to_dict(self, running_progress: float | None = None) -> dict[str, Any]:
        """``running_progress``: the summed progress of the leased tasks, when the caller
        knows it (:meth:`Scheduler.running_progress`); otherwise every task is looked at."""
        total = len(self.tasks)
        done = self.counts.get(TaskState.DONE, 0)
        if running_progress is None:
            running_progress = sum(t.progress for t in self.tasks if t.state is TaskState.LEASED)
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "state": str(self.state),
            "priority": self.priority,
            "requires": self.requires,
            "owner": self.owner,
            "max_attempts": self.max_attempts,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "total": total,
            "tasks": {str(state): self.counts.get(state, 0) for state in TaskState},
            "progress": (done + running_progress) / total if total else 1.0,
            "error": self.error,
            "traceback": self.traceback,
            "meta": self.meta,
            "timeout": self.timeout,
            "blocked": sorted(self.blocked),
            "blender_version": self.blender_version,
            "after": self.after,
            "after_any": self.after_any,
            "waiting_for": sorted(self.waiting_for),
            "archived": self.archived,
            "history": self.history,
        }


@dataclass(slots=True, eq=False)
class Worker:
    id: str
    name: str
    slots: int
    capabilities: dict[str, str]
    info: dict[str, Any]
    registered_at: float
    last_seen: float
    leased: set[Task] = field(default_factory=set)
    to_cancel: set[str] = field(default_factory=set)
    online: bool = True
    tasks_done: int = 0
    tasks_failed: int = 0
    #: Why a ``--nimby`` worker stays away now, as it last reported ("" when it takes
    #: work): its live state, kept in memory only (it reports it with every heartbeat).
    nimby: str = ""
    #: What its last lease asked, kept in memory only (each lease says it again): the job
    #: ids and kinds of work (``jobs.work_of``) it takes many tasks of at once, and how
    #: many tasks of any other job it takes (``None``: as many as it wants).
    prefetch: frozenset[str] = frozenset()
    others: int | None = None

    @property
    def state(self) -> WorkerState:
        if not self.online:
            return WorkerState.OFFLINE
        return WorkerState.BUSY if self.leased else WorkerState.IDLE

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": str(self.state),
            "slots": self.slots,
            "capabilities": self.capabilities,
            "info": self.info,
            "registered_at": self.registered_at,
            "last_seen": self.last_seen,
            "tasks": sorted(task.id for task in self.leased),
            "tasks_done": self.tasks_done,
            "tasks_failed": self.tasks_failed,
            "nimby": self.nimby,
        }


def pack_payload(payload: dict[str, Any]) -> bytes:
    """A task's payload as :attr:`Task.packed` holds it."""
    try:
        return msgpack.packb(payload, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SchedulerError(f"a task's payload cannot be encoded: {exc}") from None


def build_tasks(job: Job, specs: list[TaskSpec], now: float, piece: int = 0) -> Iterator[int]:
    """Make a job's tasks from its specs (checked by :meth:`Scheduler.check_submit`);
    with ``piece``, yields after each ``piece`` tasks (how many are made), so a server can
    make a million of them without holding its event loop."""
    append, ready = job.tasks.append, job.ready.append
    dependents: dict[int, list[int]] = {}
    step = piece or len(specs) + 1
    for index, spec in enumerate(specs):
        packed = spec.packed()
        if spec.depends:
            depends = tuple(sorted(set(spec.depends)))
            append(Task(job, index, packed, depends, pending_deps=len(depends), ready_at=now))
            for dep in depends:
                dependents.setdefault(dep, []).append(index)
        else:
            append(Task(job, index, packed, ready_at=now))
            ready(index)
        if index % step == step - 1:
            yield index + 1
    link_dependents(job.tasks, dependents)
    job.counts[TaskState.QUEUED] = len(specs)


def check_depends(index: int, depends: Iterable[Any]) -> None:
    """A task may depend only on tasks listed before it."""
    for dep in depends:
        if isinstance(dep, bool) or not isinstance(dep, int) or not 0 <= dep < index:
            problem = "a task may depend only on tasks listed before it"
            raise SchedulerError(f"task {index} depends on {dep!r}: {problem}")


def link_dependents(tasks: list[Task], dependents: dict[int, list[int]]) -> None:
    """Give each task the indexes of the tasks that wait for it."""
    for index, waiting in dependents.items():
        tasks[index].dependents = tuple(waiting)


def is_task_index(text: str) -> bool:
    """``"12"`` is; ``"²"``, ``"-1"``, ``"٣"`` and a 5,000-digit number are not."""
    return 0 < len(text) <= 9 and text.isascii() and text.isdigit()


def split_requirement(requirement: str) -> tuple[str, str, str]:
    """``"blender>=4.5"`` -> ("blender", ">=", "4.5"); ``"gpu"`` -> ("gpu", "", "")."""
    for operator in ("==", ">="):
        name, sep, wanted = requirement.partition(operator)
        if sep:
            return name.strip(), operator, wanted.strip()
    return requirement.strip(), "", ""


def requirement_met(requirement: str, capabilities: dict[str, str]) -> bool:
    """``"gpu"`` needs the capability; ``"blender>=4.5"`` also needs that version or newer;
    ``"blender==3.4"`` needs a 3.4 (3.4, 3.4.1, ...: the numbers given must match)."""
    name, operator, wanted = split_requirement(requirement)
    if name not in capabilities:
        return False
    if not operator:
        return True
    have = _version_tuple(capabilities[name])
    need = _version_tuple(wanted)
    if not have:
        return not need  # a capability with no readable version meets no version requirement
    if operator == "==":
        padded = have + (0,) * (len(need) - len(have))  # 4.5 is 4.5.0
        return bool(need) and padded[: len(need)] == need
    width = max(len(have), len(need))  # 4.5 and 4.5.0 are the same version
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def requirement_problem(requirement: str) -> str:
    """Why a requirement can never be met as written ("" when it can): a version test
    with no version after it (``blender==``, ``blender>=x``)."""
    name, operator, wanted = split_requirement(requirement)
    if not name:
        return f"requirement {requirement!r} names no capability"
    if operator and not _version_tuple(wanted):
        example = f"{name}{operator}4.5"
        return f"requirement {requirement!r}: a version must follow {operator} ({example})"
    return ""


def _version_tuple(text: str) -> tuple[int, ...]:
    """``"4.5.1 LTS"`` -> (4, 5, 1); ``"3.13.0rc1"`` -> (3, 13, 0)."""
    numbers: list[int] = []
    for part in text.strip().split("."):
        # Only leading digits count: the "1" of "0rc1" names a pre-release, not a patch level.
        digits = part[: len(part) - len(part.lstrip("0123456789"))]
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


class Scheduler:
    """Jobs split into tasks, leased to workers that match their requirements."""

    def __init__(
        self,
        lease_timeout: float = DEFAULT_LEASE_TIMEOUT,
        default_max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        block_after: int = DEFAULT_BLOCK_AFTER,
    ) -> None:
        self.lease_timeout = lease_timeout
        self.block_after = block_after
        self.default_max_attempts = default_max_attempts
        self.jobs: dict[str, Job] = {}
        self.workers: dict[str, Worker] = {}
        #: Offline workers still listed, the longest gone first (see DEPARTED_WORKERS_KEPT).
        self._departed: dict[str, Worker] = {}
        #: Idempotency keys of submits -> the job each made.
        self.submit_keys: dict[str, str] = {}
        #: Job id -> ids of the jobs waiting for it to end (``after``), until it ends.
        self.after_dependents: dict[str, list[str]] = {}
        #: Every id some job's ``after`` names: a new job can close a cycle only if named.
        self.after_named: set[str] = set()
        self.ready_total = 0
        self._active: list[Job] = []  # unfinished jobs in dispatch order
        self._active_keys: list[tuple[int, int]] = []
        self._leased: set[Task] = set()
        self._seq = 0
        self._finished: list[Job] = []
        self._changed: set[str] = set()
        self._cancel_notices: set[str] = set()
        #: Tasks run again by ``requeue_task``: only a run leased since counts, so what an
        #: earlier run (given back, late, or on the old inputs) reports is discarded.
        self._requeued: set[str] = set()
        #: Settings kept per worker name (enabled, draining, schedule): server/workerset.py.
        self.worker_settings: dict[str, WorkerSettings] = {}
        #: (worker id, task id, error) of tasks stopped by expire() for running too long.
        self.timed_out: list[tuple[str, str, str]] = []
        #: Job-end notices owed to notify URLs (made in _finish, settled by the notifier).
        self.notices = Notices()
        self.dispatch_latency = Histogram(DISPATCH_BUCKETS)
        self.task_seconds = Histogram(DURATION_BUCKETS)

    # ---- jobs -------------------------------------------------------------------------

    def submit(
        self,
        tasks: list[TaskSpec],
        now: float,
        *,
        name: str = "",
        kind: str = "python",
        priority: int = 0,
        requires: Iterable[str] = (),
        max_attempts: int | None = None,
        owner: str = "",
        meta: dict[str, Any] | None = None,
        job_id: str | None = None,
        timeout: float | None = None,
        key: str = "",
        digest: str = "",
        after: Iterable[str] = (),
        after_any: bool = False,
    ) -> Job:
        job = self.new_job(
            tasks, now, name=name, kind=kind, priority=priority, requires=requires,
            max_attempts=max_attempts, owner=owner, meta=meta, job_id=job_id, timeout=timeout,
            key=key, digest=digest, after=after, after_any=after_any,
        )  # fmt: skip
        for _ in build_tasks(job, tasks, now):
            pass
        return self.add_job(job, now)

    def new_job(
        self,
        tasks: list[TaskSpec],
        now: float,
        *,
        name: str = "",
        kind: str = "python",
        priority: int = 0,
        requires: Iterable[str] = (),
        max_attempts: int | None = None,
        owner: str = "",
        meta: dict[str, Any] | None = None,
        job_id: str | None = None,
        timeout: float | None = None,
        key: str = "",
        digest: str = "",
        after: Iterable[str] = (),
        after_any: bool = False,
        depends_checked: bool = False,
    ) -> Job:
        """Check a submit (raising what it would refuse) and make its job, not yet queued
        and without tasks: :func:`build_tasks` makes those, :meth:`add_job` queues it.
        ``depends_checked``: the caller checked each task's ``depends``
        (:func:`check_depends`) already, a piece at a time."""
        after = list(dict.fromkeys(after))  # once each, in the order given
        attempts = self.check_submit(
            tasks, max_attempts, timeout, key, after=after, after_any=after_any, job_id=job_id,
            depends_checked=depends_checked,
        )  # fmt: skip
        return Job(
            id=job_id or secrets.token_hex(4),
            seq=0,
            name=name,
            kind=kind,
            priority=priority,
            requires=sorted(set(requires)),
            max_attempts=attempts,
            created_at=now,
            owner=owner,
            meta=meta or {},
            timeout=timeout,
            submit_key=key,
            submit_digest=digest,
            after=after,
            after_any=after_any,
        )

    def add_job(self, job: Job, now: float) -> Job:
        """Queue a job :meth:`new_job` made (its tasks built); what may have changed since
        it was checked (the jobs it runs after) is checked again."""
        if job.submit_key and job.submit_key in self.submit_keys:
            raise Conflict(
                f"submit key {job.submit_key!r} already made job {self.submit_keys[job.submit_key]}"
            )
        self.check_after(job.after, job.after_any, job.id)
        self._seq += 1
        job.seq = self._seq
        while job.id in self.jobs:
            job.id = secrets.token_hex(4)
        if job.submit_key:
            self.submit_keys[job.submit_key] = job.id
        self.jobs[job.id] = job
        self._changed.add(job.id)
        if self._wait_after(job, now):
            return job
        self._activate(job)
        self.ready_total += len(job.ready)
        return job

    def check_submit(
        self,
        tasks: list[TaskSpec],
        max_attempts: int | None = None,
        timeout: float | None = None,
        key: str = "",
        *,
        after: Iterable[str] = (),
        after_any: bool = False,
        job_id: str | None = None,
        depends_checked: bool = False,
    ) -> int:
        """Raise what :meth:`submit` would refuse, changing nothing; returns the attempts
        the job gets."""
        if not tasks:
            raise SchedulerError("a job needs at least one task")
        if key and key in self.submit_keys:
            raise Conflict(f"submit key {key!r} already made job {self.submit_keys[key]}")
        attempts = self.default_max_attempts if max_attempts is None else max_attempts
        if attempts < 1:
            raise SchedulerError("max_attempts must be at least 1")
        if timeout is not None and not timeout > 0:
            raise SchedulerError("timeout must be a positive number of seconds")
        if not depends_checked:
            for index, spec in enumerate(tasks):
                if spec.depends:
                    check_depends(index, spec.depends)
        self.check_after(list(after), after_any, job_id)
        return attempts

    # ---- jobs after jobs --------------------------------------------------------------

    def check_after(self, after: list[str], after_any: bool, job_id: str | None = None) -> None:
        """Refuse what a job may not wait for: more than MAX_AFTER jobs, a job the farm does
        not know (404), itself, or a job that (through others) waits for it."""
        if after_any and not after:
            raise SchedulerError("after_any needs after: the jobs to run after")
        if len(after) > MAX_AFTER:
            raise SchedulerError(f"a job may wait for at most {MAX_AFTER} jobs")
        for upstream in after:
            if not isinstance(upstream, str):
                raise SchedulerError(f"after: {upstream!r} is not a job id")
            if upstream == job_id:
                raise SchedulerError(f"job {job_id} cannot wait for itself")
            if upstream not in self.jobs:
                raise NotFound(f"after: no job {upstream[:80]!r} (a job can wait only for a job "
                               "the farm knows)")  # fmt: skip
        if job_id is not None and job_id in self.after_named:
            # Only a queue whose jobs name ids the farm never made (a hand-made snapshot)
            # gets here: every id a job names must exist when it is submitted.
            cycle = self.after_cycle(job_id, after)
            if cycle:
                raise SchedulerError(
                    f"job {job_id} cannot wait for {cycle[1]}: that would make a cycle "
                    f"({' -> '.join(cycle)})"
                )

    def after_cycle(self, job_id: str, after: Iterable[str]) -> list[str]:
        """The path ``job_id -> ... -> job_id`` if ``job_id`` waiting for ``after`` would
        close a cycle (some job it would wait for already waits, through others, for
        ``job_id``); [] if none. Jobs the ids name that the farm does not know end a path."""
        parents: dict[str, str] = {}
        stack = []
        for upstream in after:
            if upstream not in parents:
                parents[upstream] = job_id
                stack.append(upstream)
        while stack:
            current = stack.pop()
            if current == job_id:
                path = [job_id]
                step = parents[job_id]
                while step != job_id:
                    path.append(step)
                    step = parents[step]
                path.append(job_id)
                path.reverse()
                return path
            known = self.jobs.get(current)
            for upstream in known.after if known is not None else ():
                if upstream not in parents:
                    parents[upstream] = current
                    stack.append(upstream)
        return []

    def after_problem(self, job: Job) -> Job | None:
        """A job this one waits for that failed or was cancelled (so this one cannot run),
        or None; never one when ``after_any``."""
        if job.after_any:
            return None
        for upstream_id in job.after:
            upstream = self.jobs.get(upstream_id)
            if upstream is not None and upstream.state in (JobState.FAILED, JobState.CANCELLED):
                return upstream
        return None

    def waiting_reason(self, job: Job) -> str:
        """Why a job's tasks are not offered yet: the jobs it waits for, with their states."""
        if not job.waiting_for:
            return ""
        shown = [
            f"{upstream_id} ({self.jobs[upstream_id].state})"
            if upstream_id in self.jobs
            else upstream_id
            for upstream_id in sorted(job.waiting_for)[:10]
        ]
        more = len(job.waiting_for) - len(shown)
        jobs = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
        outcome = "whatever their outcome" if job.after_any else "until they are done"
        return f"after job {jobs} ({outcome})"

    def _wait_after(self, job: Job, now: float) -> bool:
        """A job submitted (or retried) after others: fail it at once if one of them failed
        or was cancelled; else note those still unfinished and wait for them. True when
        the job is not to be offered now (it waits, or it failed)."""
        if not job.after:
            return False
        self.after_named.update(job.after)
        broken = self.after_problem(job)
        if broken is not None:
            self._fail_after(job, broken, now)
            if job.id in self.after_dependents:  # a retried job others wait for
                self._after_ended(job, now)
            return True
        for upstream_id in job.after:
            if self.jobs[upstream_id].state not in FINAL_JOB_STATES:
                job.waiting_for.add(upstream_id)
                self.after_dependents.setdefault(upstream_id, []).append(job.id)
        if not job.waiting_for:
            return False
        # Its tasks wait outside every ready queue until _release_after.
        job.ready.clear()
        return True

    def _fail_after(self, job: Job, upstream: Job, now: float) -> None:
        """The job cannot run: a job it waits for failed or was cancelled. None of its
        tasks ran, so they are all cancelled; the job fails with the other job's reason."""
        ended = "failed" if upstream.state is JobState.FAILED else "was cancelled"
        reason = f": {upstream.error}" if upstream.error else ""
        job.error = f"job {upstream.id} it waits for {ended}{reason}"[:MAX_AFTER_ERROR]
        job.traceback = ""
        job.ready.clear()  # never counted in ready_total: the job was not offered
        self._close_tasks(job, TaskState.CANCELLED, now)
        self._end_job(job, JobState.FAILED, now)

    def _release_after(self, job: Job, now: float) -> None:
        """Every job it waited for has ended as it needs: its tasks become ready."""
        for task in job.tasks:
            if task.state is TaskState.QUEUED and task.pending_deps == 0:
                task.ready_at = now
                job.ready.append(task.index)
        self._activate(job)
        if not job.paused:
            self.ready_total += len(job.ready)
        self._changed.add(job.id)

    def _after_ended(self, job: Job, now: float) -> None:
        """A job ended: the jobs waiting for it run (done, or ``after_any``) or fail, and
        the jobs waiting for those in turn (a list, not recursion: chains may be long)."""
        ended = [job]
        while ended:
            upstream = ended.pop()
            for dependent_id in self.after_dependents.pop(upstream.id, ()):
                dependent = self.jobs.get(dependent_id)
                if dependent is None or upstream.id not in dependent.waiting_for:
                    continue  # cancelled or ended meanwhile
                if upstream.state is JobState.DONE or dependent.after_any:
                    dependent.waiting_for.discard(upstream.id)
                    if not dependent.waiting_for:
                        self._release_after(dependent, now)
                    continue
                self._fail_after(dependent, upstream, now)
                ended.append(dependent)

    def link_after(self) -> None:
        """After a snapshot is loaded: rebuild who waits for whom from each job's ``after``
        and the states of the jobs it names. Raises ValueError for a job waiting for one
        the snapshot lacks, or for jobs that wait for each other in a cycle."""
        self.after_dependents.clear()
        self.after_named.clear()
        for job in self.jobs.values():
            job.waiting_for.clear()
            self.after_named.update(job.after)
            for upstream_id in job.after:
                upstream = self.jobs.get(upstream_id)
                if upstream is None:
                    raise ValueError(f"job {job.id} waits for job {upstream_id}, which is missing")
                if job.state not in FINAL_JOB_STATES and upstream.state not in FINAL_JOB_STATES:
                    job.waiting_for.add(upstream_id)
                    self.after_dependents.setdefault(upstream_id, []).append(job.id)
        cycle = self.find_cycle()
        if cycle:
            raise ValueError(f"jobs wait for each other in a cycle: {' -> '.join(cycle)}")

    def find_cycle(self) -> list[str]:
        """A cycle of jobs waiting for each other (``a -> b -> a``: a waits for b, which
        waits for a), or []. One depth-first pass over every job's ``after``."""
        done: set[str] = set()
        for start in self.jobs:
            if start in done:
                continue
            path = [start]
            on_path = {start}
            stack: list[Iterator[str]] = [iter(self.jobs[start].after)]
            while stack:
                upstream = next(stack[-1], None)
                if upstream is None:
                    stack.pop()
                    left = path.pop()
                    on_path.discard(left)
                    done.add(left)
                elif upstream in on_path:
                    return [*path[path.index(upstream) :], upstream]
                elif upstream not in done:
                    path.append(upstream)
                    on_path.add(upstream)
                    known = self.jobs.get(upstream)
                    stack.append(iter(known.after if known is not None else ()))
        return []

    def submitted(self, key: str, digest: str) -> Job | None:
        """The job an earlier submit with this idempotency key made, if any; the same key
        with another request is refused (409)."""
        job_id = self.submit_keys.get(key) if key else None
        if job_id is None:
            return None
        job = self.jobs[job_id]
        if job.submit_digest != digest:
            raise Conflict(
                f"submit key {key!r} was used for another request (job {job.id}): "
                "a key names one submit"
            )
        return job

    def job(self, job_id: str) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFound(f"no job {job_id!r}") from None

    def task(self, task_id: str) -> Task:
        job_id, _, index = task_id.rpartition(".")
        job = self.job(job_id) if job_id else None
        if job is None or not is_task_index(index) or int(index) >= len(job.tasks):
            raise NotFound(f"no task {task_id[:80]!r}")
        return job.tasks[int(index)]

    def check_priority(self, job: Job) -> None:
        if job.state in FINAL_JOB_STATES:
            raise SchedulerError(f"job {job.id} is {job.state}: its priority no longer matters")

    def set_priority(self, job_id: str, priority: int) -> Job:
        """Move an unfinished job up or down the queue (higher runs first)."""
        job = self.job(job_id)
        self.check_priority(job)
        if job.priority != priority:
            offered = not job.waiting_for  # a job that waits is in no dispatch list yet
            if offered:
                self._deactivate(job)
            job.priority = priority
            if offered:
                self._activate(job)
            self._changed.add(job.id)
        return job

    def _timed(self, task: Task, started_at: float | None, seconds: float | None) -> None:
        """Keep the run time a worker reported (``farm perf``, the duration histogram)."""
        if seconds is not None and seconds >= 0:
            task.seconds = float(seconds)
            task.started_at = started_at
            self.task_seconds.observe(task.seconds)

    def note(self, job_id: str, now: float, action: str, by: str, **extra: Any) -> None:
        """Add a steering action to the job's history (who did what, when): ``cancel``,
        ``pause``, ``resume``, ``retry``, ``unblock``, ``priority`` (``priority=N``),
        ``archive``, ``unarchive``, ``requeue-task`` (``task=ID``)."""
        job = self.job(job_id)
        job.history.append({"at": now, "action": action, "by": by, **extra})
        self._changed.add(job.id)

    def cancel(self, job_id: str, now: float) -> Job:
        job = self.job(job_id)
        if job.state not in FINAL_JOB_STATES:
            self._close_tasks(job, TaskState.CANCELLED, now)
            self._finish(job, JobState.CANCELLED, now)
        return job

    def pause(self, job_id: str) -> Job:
        job = self.job(job_id)
        if job.state not in FINAL_JOB_STATES and not job.paused:
            job.paused = True
            self.ready_total -= len(job.ready)
            job.state = JobState.PAUSED
            self._changed.add(job.id)
        return job

    def resume(self, job_id: str) -> Job:
        job = self.job(job_id)
        if job.paused:
            job.paused = False
            self.ready_total += len(job.ready)
            job.state = JobState.RUNNING if job.started_at is not None else JobState.QUEUED
            self._changed.add(job.id)
        return job

    # ---- workers ----------------------------------------------------------------------

    def register(
        self,
        name: str,
        slots: int,
        capabilities: dict[str, str],
        now: float,
        info: dict[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> Worker:
        if slots < 1:
            raise SchedulerError("a worker needs at least one slot")
        worker = Worker(
            id=worker_id or f"w-{secrets.token_hex(4)}",
            name=name,
            slots=slots,
            capabilities=dict(capabilities),
            info=info or {},
            registered_at=now,
            last_seen=now,
        )
        # A worker that comes back under its name replaces its offline record. Every
        # offline record is in _departed (at most DEPARTED_WORKERS_KEPT): a registration
        # looks through those, not through every worker of a 10,000-worker farm.
        for stale in [w for w in self._departed.values() if w.name == name]:
            self.workers.pop(stale.id, None)
            del self._departed[stale.id]
        self.workers[worker.id] = worker
        return worker

    def worker(self, worker_id: str) -> Worker:
        worker = self.workers.get(worker_id)
        if worker is None or not worker.online:
            raise NotFound(f"unknown worker {worker_id!r}: register again")
        return worker

    def unregister(self, worker_id: str, now: float) -> list[Task]:
        """A worker leaves: whatever it still holds goes back to the queue."""
        worker = self.worker(worker_id)
        returned = self._requeue_all(worker.leased, now)
        self._depart(worker)
        return returned

    def _depart(self, worker: Worker) -> None:
        """Mark a worker offline; the oldest offline records beyond the kept number go."""
        worker.online = False
        self._departed[worker.id] = worker
        while len(self._departed) > DEPARTED_WORKERS_KEPT:
            oldest = next(iter(self._departed))
            del self._departed[oldest]
            self.workers.pop(oldest, None)

    def touch(self, worker_id: str, now: float) -> Worker:
        """Any word from a worker extends the leases of everything it holds."""
        worker = self.worker(worker_id)
        worker.last_seen = now
        expires = now + self.lease_timeout
        for task in worker.leased:
            task.lease_expires_at = expires
        return worker

    def takes_work(self, worker: Worker, now: float) -> bool:
        """Not disabled, not draining and not asleep by its schedule (its name's settings),
        nor staying away while its machine is in use (``--nimby``)."""
        if worker.nimby:
            return False
        settings = self.worker_settings.get(worker.name)
        return settings is None or settings.takes_work(now)

    def workers_named(self, name: str) -> list[Worker]:
        """The records under a name, online first: several when it came back (a restarted
        worker's old record lingers offline until it registers again)."""
        named = [w for w in self.workers.values() if w.name == name]
        return sorted(named, key=lambda w: (not w.online, -w.last_seen))

    def check_worker_name(self, name: str) -> None:
        """A name the farm knows: a worker under it is listed, or settings are kept for it."""
        if name not in self.worker_settings and not any(
            w.name == name for w in self.workers.values()
        ):
            raise NotFound(f"no worker named {name[:80]!r} (farm workers lists them)")

    def requeue_worker(self, name: str, now: float) -> list[Task]:
        """Every task the workers of this name hold goes back to the queue, in task order,
        without counting as an attempt; each worker is told to stop them (as a cancel)."""
        returned: list[Task] = []
        for worker in self.workers_named(name):
            held = list(worker.leased)
            for task in held:
                task.attempts -= 1
            back = self._requeue_all(held, now)
            for task in back:
                self._tell_cancel(worker, task.id)  # after _unlease, which clears old word
            returned.extend(back)
        return returned

    def check_forget(self, name: str) -> None:
        self.check_worker_name(name)
        if any(w.online for w in self.workers_named(name)):
            raise Conflict(
                f"worker {name!r} is online: stop it first (or farm worker-disable {name}), "
                "then forget it"
            )

    def forget_worker(self, name: str) -> None:
        """A departed worker leaves the lists, and its settings go."""
        self.check_forget(name)
        for worker in self.workers_named(name):
            del self.workers[worker.id]
            self._departed.pop(worker.id, None)
        self.worker_settings.pop(name, None)

    # ---- leases -----------------------------------------------------------------------

    def lease(
        self,
        worker_id: str,
        want: int,
        now: float,
        can_send: Callable[[Task], bool] | None = None,
    ) -> list[Task]:
        """Hand up to ``want`` ready tasks to a worker: priority first, FIFO within it.
        A task ``can_send`` refuses (it cannot be sent in the format the worker reads)
        keeps its place, untouched. Jobs the worker does not prefetch (``Worker.prefetch``)
        give at most ``Worker.others`` tasks together: none is leased to be given back."""
        worker = self.touch(worker_id, now)
        granted: list[Task] = []
        if want <= 0 or self.ready_total <= 0 or not self.takes_work(worker, now):
            return granted
        others = worker.others  # what jobs the worker does not know to be quick may give
        for job in self._active:
            if job.paused or not job.ready or not self._job_fits(job, worker):
                continue
            limit = want
            capped = others is not None and not self._prefetches(worker, job)
            if capped:
                assert others is not None
                if others <= 0:
                    continue
                limit = others
            deferred: list[int] = []
            granted_before = len(granted)
            while job.ready and len(granted) < want and len(granted) - granted_before < limit:
                index = job.ready.popleft()
                task = job.tasks[index]
                if task.failed_on and not self.may_take(worker, task, now):
                    deferred.append(index)  # keeps its place for a worker that has not failed it
                    continue
                if can_send is not None and not can_send(task):
                    deferred.append(index)
                    continue
                if worker.to_cancel and task.id in worker.to_cancel:
                    deferred.append(index)  # it has yet to hear to stop its earlier run
                    continue
                self._grant(task, worker, now)
                granted.append(task)
            job.ready.extendleft(reversed(deferred))
            if capped and others is not None:
                others -= len(granted) - granted_before
            if len(granted) == granted_before:
                continue
            if len(granted) >= want:
                break
        return granted

    @staticmethod
    def _prefetches(worker: Worker, job: Job) -> bool:
        """Whether the worker takes many of this job's tasks at once: it named the job, or
        the kind of work of its next ready task, as quick."""
        if job.id in worker.prefetch:
            return True
        payload = job.tasks[job.ready[0]].payload
        common = job.meta.get("common")  # what the task's message merges in (a map's function)
        if isinstance(common, dict) and common:
            payload = {**common, **payload}
        return work_of(job.kind, payload) in worker.prefetch

    def _grant(self, task: Task, worker: Worker, now: float) -> None:
        """Lease one task (already taken off its job's ready queue) to a worker."""
        if not task.job.paused:
            self.ready_total -= 1
        self._set_state(task, TaskState.LEASED)
        task.worker = worker.id
        task.worker_name = worker.name
        task.attempts += 1
        task.leased_at = now
        self.dispatch_latency.observe(now - task.ready_at)
        task.lease_expires_at = now + self.lease_timeout
        task.progress = 0.0
        task.progress_message = ""
        worker.leased.add(task)
        self._leased.add(task)
        if worker.to_cancel:
            # Live, a worker is leased a task it was told to stop only once it has heard so
            # (see lease); a replay hears nothing, so the stale word goes here.
            worker.to_cancel.discard(task.id)
        job = task.job
        if job.started_at is None:
            job.started_at = now
            job.state = JobState.RUNNING
        held = SAME_VERSION_KINDS.get(job.kind)
        if held is not None and not job.blender_version:
            # Journaled through the lease: a replay grants to the same worker and holds the same.
            job.blender_version = worker.capabilities.get(held, "")

    def lease_exactly(self, worker_id: str, task_ids: list[str], now: float) -> None:
        """Replay a recorded lease: these queued tasks go to this worker."""
        worker = self.touch(worker_id, now)
        for task_id in task_ids:
            task = self.task(task_id)
            if task.state is not TaskState.QUEUED or task.index not in task.job.ready:
                raise SchedulerError(f"journal: task {task_id} was not ready to lease")
            task.job.ready.remove(task.index)
            self._grant(task, worker, now)

    def requeue_exactly(self, task_ids: list[str], now: float) -> None:
        """Replay recorded lease expiries."""
        self._requeue_all([self.task(task_id) for task_id in task_ids], now)

    def restarted(self, now: float) -> None:
        """After a replay: every worker and lease gets a full lease timeout to be heard from;
        workers that had left are forgotten."""
        for gone in [w.id for w in self.workers.values() if not w.online]:
            del self.workers[gone]
        self._departed.clear()
        for worker in self.workers.values():
            worker.last_seen = now
        for task in self._leased:
            task.lease_expires_at = now + self.lease_timeout
        self._changed.clear()
        self._finished.clear()
        self._cancel_notices.clear()

    def _job_fits(self, job: Job, worker: Worker) -> bool:
        return worker.name not in job.blocked and self.can_serve(job, worker)

    def can_serve(self, job: Job, worker: Worker) -> bool:
        """The worker meets the job's requirements and has the version the job holds
        (blocked or not)."""
        return self.has_held_version(job, worker) and all(
            requirement_met(r, worker.capabilities) for r in job.requires
        )

    @staticmethod
    def has_held_version(job: Job, worker: Worker) -> bool:
        held = SAME_VERSION_KINDS.get(job.kind)
        return (
            held is None
            or not job.blender_version
            or worker.capabilities.get(held) == job.blender_version
        )

    def may_take(self, worker: Worker, task: Task, now: float | None = None) -> bool:
        """A retry goes to a worker that has not failed the task while such a worker is
        online, idle and taking work (at ``now``); otherwise (all busy, or all failed it)
        any worker may try again."""
        if not self._job_fits(task.job, worker):
            return False
        if worker.name not in task.failed_on:
            return True
        return not any(
            other.online
            and not other.leased
            and other is not worker
            and other.name not in task.failed_on
            and self._job_fits(task.job, other)
            and (now is None or self.takes_work(other, now))
            for other in self.workers.values()
        )

    def check_unblock(self, job: Job, worker_name: str | None) -> None:
        """A worker named to unblock must be one the job blocked (or counts failures of)."""
        if worker_name is not None and not (
            worker_name in job.blocked or worker_name in job.failures_by_worker
        ):
            blocked = ", ".join(sorted(job.blocked)) or "none"
            raise SchedulerError(
                f"worker {worker_name[:80]!r} is not blocked from job {job.id} (blocked: {blocked})"
            )

    def unblock(self, job_id: str, worker_name: str | None = None) -> Job:
        """Let blocked workers (or one of them) take the job's tasks again."""
        job = self.job(job_id)
        self.check_unblock(job, worker_name)
        if worker_name is None:
            job.blocked.clear()
            job.failures_by_worker.clear()
        else:
            job.blocked.discard(worker_name)
            job.failures_by_worker.pop(worker_name, None)
        self._changed.add(job.id)
        return job

    def check_retry(self, job: Job) -> None:
        if job.state not in (JobState.FAILED, JobState.CANCELLED):
            raise SchedulerError(
                f"job {job.id} is {job.state}: only failed or cancelled jobs retry"
            )
        broken = self.after_problem(job)
        if broken is not None:
            raise Conflict(
                f"job {job.id} runs after job {broken.id}, which is {broken.state}: "
                f"retry {broken.id} first (this job then waits for it again)"
            )

    def retry(self, job_id: str, now: float) -> Job:
        """Run a failed or cancelled job's unfinished tasks again, with fresh attempts; the
        job's blocklist is cleared too (else a job whose every worker is blocked retries
        into nothing)."""
        job = self.job(job_id)
        self.check_retry(job)
        job.blocked.clear()
        job.failures_by_worker.clear()
        for task in job.tasks:
            if task.state in (TaskState.FAILED, TaskState.CANCELLED):
                self._set_state(task, TaskState.QUEUED)
                task.failures = 0  # fresh attempts; failed_on stays, so others go first
                task.worker = None
                task.finished_at = None
                task.progress = 0.0
        for task in job.tasks:
            if task.state is TaskState.QUEUED:
                task.pending_deps = sum(
                    job.tasks[d].state is not TaskState.DONE for d in task.depends
                )
                if task.pending_deps == 0:
                    task.ready_at = now
                    job.ready.append(task.index)
        job.error = job.traceback = ""
        job.finished_at = None
        job.archived = False  # a job that runs again is shown again
        job.state = JobState.RUNNING if job.started_at is not None else JobState.QUEUED
        self._changed.add(job.id)
        if self._wait_after(job, now):  # the jobs it runs after are running again
            return job
        self.ready_total += len(job.ready)
        self._activate(job)
        return job

    def progress(self, worker_id: str, task_id: str, fraction: float | None, message: str) -> None:
        """A running task's progress; a fraction of None (not a finite number) keeps the
        last one, so NaN never reaches a view."""
        task = self.task(task_id)
        if task.state is TaskState.LEASED and task.worker == worker_id:
            if fraction is not None and math.isfinite(fraction):
                task.progress = min(max(float(fraction), 0.0), 1.0)
            task.progress_message = message[:200]
            self._changed.add(task.job.id)

    def can_complete(self, task_id: str) -> bool:
        """Whether :meth:`complete` would record a result for the task now (raises
        NotFound for an unknown task)."""
        return self.task(task_id).state not in FINAL_TASK_STATES

    def can_fail(self, worker_id: str, task_id: str) -> bool:
        """Whether :meth:`fail` would record this worker's failed run of the task now."""
        task = self.task(task_id)
        return task.state is TaskState.LEASED and task.worker == worker_id

    def complete(
        self,
        worker_id: str,
        task_id: str,
        result: Any,
        now: float,
        log: str = "",
        started_at: float | None = None,
        seconds: float | None = None,
    ) -> bool:
        """Record a task done. A late report for a task given to someone else still counts
        once; a report for a task already finished is discarded (returns False)."""
        task = self.task(task_id)
        worker = self.workers.get(worker_id)
        if task.state in FINAL_TASK_STATES:
            return False
        if task.state is TaskState.QUEUED and task.pending_deps:
            # A late report of a run whose inputs run again (requeue_task): it used the old
            # ones, so it is not the result; the task waits for the new ones.
            return False
        if self._requeued and task.id in self._requeued:
            if task.state is not TaskState.LEASED or task.worker != worker_id:
                return False  # a run from before the requeue: not the result asked for
            self._requeued.discard(task.id)
        holder = task.worker if task.state is TaskState.LEASED else None
        self._unlease(task)
        if holder is not None and holder != worker_id:
            # After _unlease, which clears the holder's pending cancellations for the task.
            other = self.workers.get(holder)
            if other is not None:
                self._tell_cancel(other, task.id)
        if task.state is TaskState.QUEUED:
            self._remove_ready(task)
        task.worker = worker_id
        if worker is not None:
            task.worker_name = worker.name
        task.result = result
        task.log = log[-LOG_TAIL_CHARS:]
        task.progress = 1.0
        task.finished_at = now
        self._timed(task, started_at, seconds)
        self._set_state(task, TaskState.DONE)
        if worker is not None:
            worker.tasks_done += 1
        job = task.job
        for index in task.dependents:
            dependent = job.tasks[index]
            dependent.pending_deps -= 1
            if dependent.pending_deps == 0 and dependent.state is TaskState.QUEUED:
                dependent.ready_at = now
                job.ready.append(index)
                if not job.paused:
                    self.ready_total += 1
        if job.counts.get(TaskState.DONE, 0) == len(job.tasks):
            self._finish(job, JobState.DONE, now)
        return True

    def fail(
        self,
        worker_id: str,
        task_id: str,
        error: str,
        traceback: str,
        now: float,
        log: str = "",
        retry: bool = True,
        started_at: float | None = None,
        seconds: float | None = None,
        *,
        job_fault: bool = False,
    ) -> bool:
        """Record a failed attempt; the task is retried until the job's max_attempts.

        ``job_fault``: the job itself is wrong (the worker said so: a scene the file lacks),
        so every attempt anywhere would fail alike. The job fails now with that reason, and
        the failure counts against no worker (no blocklist, no other worker tried first)."""
        task = self.task(task_id)
        if task.state is not TaskState.LEASED or task.worker != worker_id:
            return False  # the attempt no longer owns the task: nothing to record
        worker = self.workers.get(worker_id)
        self._unlease(task)
        task.failures += 1
        task.error = error
        task.traceback = traceback
        task.log = log[-LOG_TAIL_CHARS:]
        self._timed(task, started_at, seconds)
        job = task.job
        if worker is not None and not job_fault:
            worker.tasks_failed += 1
            task.failed_on = task.failed_on | {worker.name}
            count = job.failures_by_worker.get(worker.name, 0) + 1
            job.failures_by_worker[worker.name] = count
            if count >= self.block_after and worker.name not in job.blocked:
                job.blocked.add(worker.name)  # this worker keeps failing this job
        if retry and not job_fault and task.failures < job.max_attempts:
            self._set_state(task, TaskState.QUEUED)
            task.worker = None
            task.ready_at = now
            job.ready.appendleft(task.index)
            if not job.paused:
                self.ready_total += 1
            self._changed.add(job.id)
            return True
        task.finished_at = now
        self._set_state(task, TaskState.FAILED)
        if job_fault:
            job.error = f"task {task.id} failed (the job's own fault, not retried): {error}"
        else:
            job.error = f"task {task.id} failed after {task.failures} attempt(s): {error}"
        job.traceback = traceback
        self._close_tasks(job, TaskState.CANCELLED, now)
        self._finish(job, JobState.FAILED, now)
        return True

    def release(self, worker_id: str, task_ids: Iterable[str], now: float) -> list[Task]:
        """A worker gives tasks back unstarted (draining, shutting down): no attempt lost."""
        self.touch(worker_id, now)
        held = []
        for task_id in task_ids:
            try:
                task = self.task(task_id)
            except NotFound:
                continue  # a stale id: nothing of it to give back
            if task.state is TaskState.LEASED and task.worker == worker_id:
                task.attempts -= 1
                held.append(task)
        return self._requeue_all(held, now)  # they leave again in their order

    def take_cancellations(self, worker_id: str) -> list[str]:
        """Task ids the worker holds that it should stop (job cancelled, done elsewhere)."""
        worker = self.worker(worker_id)
        cancels = sorted(worker.to_cancel)
        worker.to_cancel.clear()
        return cancels

    def expire(self, now: float) -> list[Task]:
        """Leases past their time go back to the queue; silent workers go offline; tasks
        running past their job's timeout are stopped and count as failed attempts."""
        overdue = [
            t
            for t in self._leased
            if t.job.timeout is not None
            and t.leased_at is not None
            and now - t.leased_at > t.job.timeout
        ]
        for task in sorted(overdue, key=lambda t: (t.job.seq, t.index)):
            worker_id = task.worker or ""
            error = f"timed out after {task.job.timeout:g}s"
            self.fail(worker_id, task.id, error, "", now)
            self.timed_out.append((worker_id, task.id, error))
            worker = self.workers.get(worker_id)
            if worker is not None:
                self._tell_cancel(worker, task.id)  # after fail(), which clears old notices
        returned = self._requeue_all([t for t in self._leased if t.lease_expires_at <= now], now)
        silent = [
            worker
            for worker in self.workers.values()
            if worker.online and now - worker.last_seen > self.lease_timeout and not worker.leased
        ]
        for worker in sorted(silent, key=lambda w: w.last_seen):
            self._depart(worker)
        return returned

    # ---- events for the HTTP layer -------------------------------------------------------

    def take_cancel_notices(self) -> set[str]:
        """Ids of workers that have been given something to stop since the last call."""
        notices, self._cancel_notices = self._cancel_notices, set()
        return notices

    def take_finished(self) -> list[Job]:
        finished, self._finished = self._finished, []
        return finished

    def running_progress(self) -> dict[str, float]:
        """Summed progress of each job's leased tasks, by job id: a pass over the leases,
        not over every task."""
        sums: dict[str, float] = {}
        for task in self._leased:
            sums[task.job.id] = sums.get(task.job.id, 0.0) + task.progress
        return sums

    def take_changed(self) -> set[str]:
        changed, self._changed = self._changed, set()
        return changed

    def results(self, job_id: str) -> list[Any]:
        return [task.result for task in self.job(job_id).tasks]

    # ---- archiving, deleting and running one task again ----------------------------------
    # Each is checked whole (check_*) before anything changes: a refusal leaves the queue
    # as it was, and the journal replays exactly what was accepted.

    def check_archive(self, job: Job) -> None:
        if job.state not in FINAL_JOB_STATES:
            raise Conflict(
                f"job {job.id} is {job.state}: only a job that has ended is archived or "
                "unarchived (wait for it, or cancel it first)"
            )

    def archive(self, job_id: str, now: float, by: str = "", *, archived: bool = True) -> Job:
        """Hide an ended job from the default lists (``archived=False``: show it again).
        Archiving an archived job changes nothing."""
        job = self.job(job_id)
        self.check_archive(job)
        if job.archived != archived:
            job.archived = archived
            self.note(job_id, now, "archive" if archived else "unarchive", by)
        return job

    def check_delete(self, job: Job) -> None:
        """Only an ended job is deleted, and not while an unfinished job runs after it
        (``after``: a retry of that job would look for it)."""
        if job.state not in FINAL_JOB_STATES:
            raise Conflict(
                f"job {job.id} is {job.state}: only a job that has ended is deleted "
                "(wait for it, or cancel it first)"
            )
        if job.id in self.after_named:
            for other in self.jobs.values():
                if job.id in other.after and other.state not in FINAL_JOB_STATES:
                    raise Conflict(
                        f"job {other.id} ({other.state}) runs after job {job.id}: delete "
                        f"{job.id} once {other.id} has ended (or cancel {other.id})"
                    )

    def delete(self, job_id: str, now: float) -> Job:
        """Forget an ended job: it leaves every index here. Jobs that ran after it no
        longer name it (their ``after`` drops it), so none ever waits for a job that is
        gone. Job-end notices it still owes are delivered all the same (they carry the
        job as it ended)."""
        job = self.job(job_id)
        self.check_delete(job)
        del self.jobs[job.id]
        if job.submit_key and self.submit_keys.get(job.submit_key) == job.id:
            del self.submit_keys[job.submit_key]
        self._deactivate(job)  # ended jobs are in no dispatch list; kept safe all the same
        if job.ready and not job.paused and not job.waiting_for:
            self.ready_total -= len(job.ready)
        job.ready.clear()
        for task in job.tasks:
            self._leased.discard(task)
            self._requeued.discard(task.id)
        for upstream_id in job.after:
            waiting = self.after_dependents.get(upstream_id)
            if waiting is not None and job.id in waiting:
                waiting.remove(job.id)
                if not waiting:
                    del self.after_dependents[upstream_id]
        self.after_dependents.pop(job.id, None)
        if job.id in self.after_named:
            self.after_named.discard(job.id)
            for other in self.jobs.values():
                if job.id in other.after:
                    other.after = [upstream for upstream in other.after if upstream != job.id]
                    other.after_any = other.after_any and bool(other.after)
                    self._changed.add(other.id)
        self._changed.add(job.id)
        return job

    def rerun_chain(self, task: Task) -> list[Task]:
        """The tasks a rerun of ``task`` runs, in index order: the task; the tasks it waits
        for that did not end done (they must run first); in a failed or cancelled job every
        task that did not end done (the job runs to its end again); and every task that
        waits, directly or through others, on one of these and is not queued (a stitch
        whose tile reruns, a preview video whose frame reruns). A task that used up what
        its inputs wrote (``CONSUMING_STEPS``: a stitch, a merge) runs again with all of
        them: a tile reruns with the others of its frame."""
        job = task.job
        chosen: set[int] = {task.index}
        if job.state in (JobState.FAILED, JobState.CANCELLED):
            chosen.update(t.index for t in job.tasks if t.state in FINAL_TASK_STATES
                          and t.state is not TaskState.DONE)  # fmt: skip
        consuming = CONSUMING_STEPS.get(job.kind, frozenset())
        stack = list(chosen)
        while stack:  # one pass over what is added, both ways, until nothing more is
            member = job.tasks[stack.pop()]
            step = member.payload.get("step") if consuming else None
            used_up = isinstance(step, str) and step in consuming
            for index in member.depends:  # what it needs that is not done, or that it used up
                upstream = job.tasks[index]
                if index not in chosen and (
                    upstream.state in (TaskState.FAILED, TaskState.CANCELLED)
                    or (used_up and upstream.state is TaskState.DONE)
                ):
                    chosen.add(index)
                    stack.append(index)
            for index in member.dependents:  # what used its result
                if index not in chosen and job.tasks[index].state is not TaskState.QUEUED:
                    chosen.add(index)
                    stack.append(index)
        return [job.tasks[index] for index in sorted(chosen)]

    def check_requeue_task(self, task: Task) -> None:
        """A queued task is not requeued; a task of an ended job is, unless a job it runs
        after failed or was cancelled (retry that one first)."""
        if task.state is TaskState.QUEUED:
            raise Conflict(f"task {task.id} is queued already: it runs when a worker is free")
        job = task.job
        if job.state in FINAL_JOB_STATES:
            broken = self.after_problem(job)
            if broken is not None:
                raise Conflict(
                    f"job {job.id} runs after job {broken.id}, which is {broken.state}: "
                    f"retry {broken.id} first"
                )

    def requeue_task(self, task_id: str, now: float, by: str = "") -> Task:
        """Run one task again (``rerun_chain`` says which others run with it): a running
        one is given back (its worker is told to stop it), the others go back to the queue
        with fresh attempts; only a run leased from now on reports for them (what an earlier
        run sends is discarded). An ended job
        is unfinished again (and no longer archived); it ends again once they are done."""
        task = self.task(task_id)
        job = task.job
        self.check_requeue_task(task)
        chain = self.rerun_chain(task)
        revived = job.state in FINAL_JOB_STATES
        for member in chain:
            if member.state is TaskState.LEASED:
                holder = self.workers.get(member.worker or "")
                self._unlease(member)
                if holder is not None:
                    self._tell_cancel(holder, member.id)
            self._set_state(member, TaskState.QUEUED)
            member.worker = None
            member.finished_at = None
            member.progress = 0.0
            member.progress_message = ""
            member.failures = 0
            member.result = None
            member.error = member.traceback = ""
        rerun = {member.index for member in chain}
        job.done_order = array("L", [i for i in job.done_order if i not in rerun])
        # Waiting counts of the rerun tasks and of the queued tasks that wait on them.
        touched = rerun | {d for member in chain for d in member.dependents}
        offered = not job.paused and not revived and not job.waiting_for
        ready = set(job.ready)
        for index in sorted(touched):
            member = job.tasks[index]
            if member.state is not TaskState.QUEUED:
                continue
            member.pending_deps = sum(job.tasks[d].state is not TaskState.DONE
                                      for d in member.depends)  # fmt: skip
            if index in ready and member.pending_deps:
                job.ready.remove(index)  # it waits again for a task that reruns
                if offered:
                    self.ready_total -= 1
            elif index in rerun and not member.pending_deps and not job.waiting_for:
                member.ready_at = now
                job.ready.append(index)
                if offered:
                    self.ready_total += 1
        # From here, only runs leased from now on report for them (and for the queued
        # tasks that wait on them: a late report of one ran on the old inputs).
        self._requeued.update(job.tasks[index].id for index in touched)
        self.note(job.id, now, "requeue-task", by, task=task.id)
        if revived:
            if job.state is not JobState.DONE:  # as a retry: every worker may try again
                job.blocked.clear()
                job.failures_by_worker.clear()
            job.archived = False
            job.error = job.traceback = ""
            job.finished_at = None
            job.state = JobState.RUNNING if job.started_at is not None else JobState.QUEUED
            if self._wait_after(job, now):  # a job it runs after is running again
                job.ready.clear()
                return task
            self.ready_total += len(job.ready)
            self._activate(job)
        return task

    # ---- internals --------------------------------------------------------------------

    def _tell_cancel(self, worker: Worker, task_id: str) -> None:
        worker.to_cancel.add(task_id)
        self._cancel_notices.add(worker.id)

    def _set_state(self, task: Task, state: TaskState) -> None:
        job = task.job
        job.count(task.state, -1)
        job.count(state, 1)
        task.state = state
        if state is TaskState.DONE:
            job.done_order.append(task.index)
        self._changed.add(job.id)

    def _unlease(self, task: Task) -> None:
        if task.state is TaskState.LEASED:
            self._leased.discard(task)
            worker = self.workers.get(task.worker or "")
            if worker is not None:
                worker.leased.discard(task)
                worker.to_cancel.discard(task.id)

    def _requeue(self, task: Task, now: float) -> bool:
        if task.state is not TaskState.LEASED:
            return False
        self._unlease(task)
        self._set_state(task, TaskState.QUEUED)
        task.worker = None
        task.progress = 0.0
        task.ready_at = now
        job = task.job
        job.ready.appendleft(task.index)
        if not job.paused:
            self.ready_total += 1
        return True

    def _requeue_all(self, tasks: Iterable[Task], now: float) -> list[Task]:
        """Requeue in task order, not set order: each goes to the front of its job's queue,
        so the last one in goes first, and the job's tasks leave again in index order."""
        ordered = sorted(tasks, key=lambda task: (task.job.seq, task.index))
        returned = [task for task in reversed(ordered) if self._requeue(task, now)]
        returned.reverse()
        return returned

    def _remove_ready(self, task: Task) -> None:
        job = task.job
        try:
            job.ready.remove(task.index)
        except ValueError:
            return
        if not job.paused:
            self.ready_total -= 1

    def _close_tasks(self, job: Job, state: TaskState, now: float) -> None:
        for task in job.tasks:
            if task.state in FINAL_TASK_STATES:
                continue
            if task.state is TaskState.LEASED:
                worker = self.workers.get(task.worker or "")
                if worker is not None:
                    self._tell_cancel(worker, task.id)
                    worker.leased.discard(task)
                self._leased.discard(task)
            task.finished_at = now
            self._set_state(task, state)
        if not job.paused:
            self.ready_total -= len(job.ready)
        job.ready.clear()

    def _activate(self, job: Job) -> None:
        position = bisect.bisect(self._active_keys, job.order_key)
        self._active_keys.insert(position, job.order_key)
        self._active.insert(position, job)

    def _deactivate(self, job: Job) -> None:
        position = bisect.bisect_left(self._active_keys, job.order_key)
        if position < len(self._active) and self._active[position] is job:
            del self._active_keys[position]
            del self._active[position]

    def _finish(self, job: Job, state: JobState, now: float) -> None:
        self._end_job(job, state, now)
        if job.id in self.after_dependents:
            self._after_ended(job, now)

    def _end_job(self, job: Job, state: JobState, now: float) -> None:
        job.waiting_for.clear()
        self._deactivate(job)
        if job.paused:
            job.paused = False
        job.state = state
        job.finished_at = now
        self._finished.append(job)
        self._changed.add(job.id)
        self.notices.job_ended(job.meta, job.summary())
