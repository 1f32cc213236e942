"""The whole queue as one msgpack document, so the journal can start afresh from it.

On disk: ``MAGIC``, the body's length (u64) and CRC-32 (u32), then the msgpack body
``{"generation": N, "after": [G, OFFSET], "state": ...}``. A file whose checksum does not
match is refused whole (:class:`SnapshotDamaged`): a flipped bit never becomes silently
changed state.

A running server writes its snapshots without stopping (:func:`write_in_child`, where the
platform can fork): a child process, a copy of the server at one instant, writes the
queue as it was then, while the server goes on answering and journaling. Such a snapshot
of generation N holds journal generation G up to byte OFFSET (``after``); until the
journal restarts as generation N, a start replays generation G from OFFSET on. A task's
fields are stored as columns (one list per field for each job), which a million-task job
packs, reads and rebuilds several times faster than a million small maps.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import itertools
import logging
import os
import signal
import struct
import sys
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from buildcat import platform, protocol
from buildcat.errors import FarmError
from buildcat.server.scheduler import (
    FINAL_JOB_STATES,
    Job,
    JobState,
    Scheduler,
    Task,
    TaskState,
    Worker,
    link_dependents,
    pack_payload,
)
from buildcat.server.workerset import WorkerSettings

log = logging.getLogger(__name__)

MAGIC = b"BCSNAP1\n"
HEADER = struct.Struct(">8sQI")
# Snapshots before checksums were one bare msgpack map of two keys (0x82). MAGIC begins
# with b"B" (0x42), two bits away from it: one flipped bit cannot pass for the old format.
_LEGACY_START = 0x82


class SnapshotDamaged(FarmError):
    """The snapshot fails its checksum, or does not decode into a queue."""


#: A forked child can write snapshots while the server runs (not on Windows).
CAN_FORK = sys.platform != "win32"
#: Linux: the child asks to die with the server (loaded here: the child loads nothing).
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def write(
    path: Path,
    generation: int,
    scheduler: Scheduler,
    after: tuple[int, int] | None = None,
    *,
    temporary: Path | None = None,
    wanted: Callable[[], bool] = lambda: True,
) -> int:
    """Write the queue to ``path`` (via a temporary file, fsynced, renamed into place, mode
    0600); returns its size. ``after``: the journal generation and byte offset the queue
    holds, when the journal is not restarted with the snapshot. ``wanted`` is asked last,
    before the rename: false drops the file. The caller fsyncs the folder."""
    document: dict[str, Any] = {"generation": generation, "state": dump(scheduler)}
    if after is not None:
        document["after"] = list(after)
    body = protocol.pack(document)
    data = HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body
    temporary = temporary or path.with_suffix(".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | platform.OPEN_FLAGS
    descriptor = os.open(temporary, flags, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        platform.make_private(descriptor)
        handle.write(data)
        handle.flush()
        os.fsync(descriptor)
    if not wanted():
        temporary.unlink()
        raise FarmError("the server it was written for is gone")
    os.replace(temporary, path)
    return len(data)


def child_files(folder: Path) -> list[Path]:
    """Snapshots a child left unfinished (its server was killed meanwhile)."""
    return sorted(folder.glob("snapshot.*.tmp"))


@dataclasses.dataclass(slots=True)
class Child:
    """A snapshot being written by a forked copy of the server."""

    pid: int
    #: The child reports on this pipe: the snapshot's size, or why it failed.
    report: int
    generation: int
    after: tuple[int, int]

    def wait(self) -> int:
        """Block until the child is done (call from a thread); its snapshot's size. Raises
        FarmError when it failed (the snapshot before it stays in place)."""
        try:
            with os.fdopen(self.report, "rb") as pipe:
                message = pipe.read().decode("utf-8", "replace")
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = 0  # reaped elsewhere: its report says how it went
        if message.startswith("ok "):
            return int(message[3:])
        code = os.waitstatus_to_exitcode(status)
        raise FarmError(message or f"the snapshot process ended with status {code}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, 9)


def write_in_child(
    path: Path, generation: int, scheduler: Scheduler, after: tuple[int, int]
) -> Child:
    """Fork: the child writes the queue as it is this instant (see :func:`write`), fsyncs
    the folder and exits; the server goes on at once. The child touches nothing shared:
    it closes every file it inherited (the listening sockets, the journal, the lock), so a
    server that dies meanwhile leaves nothing held but the snapshot being finished."""
    if sys.platform == "win32":
        raise FarmError("Windows cannot fork: its snapshots are written on the event loop")
    readable, writable = os.pipe()
    parent = os.getpid()
    with warnings.catch_warnings():
        # Python 3.12+ warns that a forked child of a threaded process may find locks held.
        # This one takes none: it packs plain objects, writes its own files and _exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        _child(path, generation, scheduler, after, readable, writable, parent)
    os.close(writable)
    return Child(pid, readable, generation, after)


def _child(
    path: Path,
    generation: int,
    scheduler: Scheduler,
    after: tuple[int, int],
    readable: int,
    writable: int,
    parent: int,
) -> None:  # pragma: no cover - runs in the forked child
    if sys.platform == "win32":
        return  # never forked there (see write_in_child)
    import resource  # POSIX only

    message = b"the snapshot process failed"
    try:
        gc.disable()  # a collection would touch (and copy) every page of the server's heap
        if _LIBC is not None:  # killed with the server: a snapshot is only its server's
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # it died before the line above could take effect
            return
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        os.close(readable)
        os.closerange(3, writable)
        os.closerange(writable + 1, limit if limit > 0 else 65536)
        size = write(
            path,
            generation,
            scheduler,
            after,
            temporary=path.with_name(f"{path.stem}.{os.getpid()}.tmp"),
            wanted=lambda: os.getppid() == parent,  # not a server that took over since
        )
        platform.fsync_folder(path.parent)
        message = f"ok {size}".encode()
    except BaseException as exc:  # reported to the server, then _exit
        message = f"cannot write the snapshot {path}: {exc}".encode()
    finally:
        with contextlib.suppress(OSError):
            os.write(writable, message)
        os._exit(0)


def read(path: Path) -> tuple[int, dict[str, Any], bool, tuple[int, int] | None] | None:
    """The snapshot's generation, its queue document, whether it is in the old format
    without a checksum, and the journal (generation, offset) it holds when it was written
    without restarting the journal; None when there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FarmError(f"cannot read the snapshot {path}: {exc.strerror}") from None
    legacy = data[:1] == bytes([_LEGACY_START])
    if legacy:
        log.warning("snapshot %s has no checksum (an older release wrote it): rewriting it", path)
        body = data
    else:
        if len(data) < HEADER.size:
            raise _damaged(path, f"{len(data)} bytes, shorter than its header")
        magic, length, checksum = HEADER.unpack_from(data)
        body = data[HEADER.size :]
        if magic != MAGIC:
            raise _damaged(path, "not a buildcat snapshot header")
        if length != len(body):
            raise _damaged(path, f"{len(body)} bytes of body where the header says {length}")
        if zlib.crc32(body) != checksum:
            raise _damaged(path, "checksum mismatch")
    try:
        document = protocol.unpack(body, trusted=True)
        generation, state = document["generation"], document["state"]
        after = document.get("after")
    except (FarmError, KeyError, TypeError, AttributeError) as exc:
        raise _damaged(path, f"it does not decode: {exc}") from None
    if not isinstance(generation, int) or not isinstance(state, dict):
        raise _damaged(path, "it does not decode into a queue")
    if after is not None and not (
        isinstance(after, list) and len(after) == 2 and all(isinstance(n, int) for n in after)
    ):
        raise _damaged(path, "its journal mark is not a generation and an offset")
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)  # an older release left it readable to all
    return generation, state, legacy, (after[0], after[1]) if after else None


def _damaged(path: Path, reason: str) -> SnapshotDamaged:
    return SnapshotDamaged(
        f"the snapshot {path} is damaged ({reason}): the server changed nothing; restore it "
        "from a backup (it holds the queue the journal continues from)"
    )


_TASK_FIELDS = (
    "attempts", "failures", "lease_expires_at", "leased_at", "finished_at", "result",
    "error", "traceback", "log", "progress", "progress_message", "ready_at", "started_at",
    "seconds", "worker_name",
)  # fmt: skip
_JOB_FIELDS = (
    "seq", "name", "kind", "priority", "requires", "max_attempts", "created_at", "owner",
    "meta", "paused", "started_at", "finished_at", "error", "traceback", "timeout",
    "failures_by_worker", "submit_key", "submit_digest", "blender_version", "after",
    "after_any",
    "archived", "history",
)  # fmt: skip
_WORKER_FIELDS = (
    "name", "slots", "capabilities", "info", "registered_at", "last_seen", "online",
    "tasks_done", "tasks_failed",
)  # fmt: skip


def dump(scheduler: Scheduler) -> dict[str, Any]:
    return {
        "seq": scheduler._seq,
        "workers": [
            # to_cancel: tasks the worker still runs and must be told to stop.
            {
                "id": w.id,
                "to_cancel": sorted(w.to_cancel),
                **{f: getattr(w, f) for f in _WORKER_FIELDS},
            }
            for w in scheduler.workers.values()
        ],
        "jobs": [
            {
                "id": job.id,
                "state": str(job.state),
                "blocked": sorted(job.blocked),
                "ready": list(job.ready),
                **{f: getattr(job, f) for f in _JOB_FIELDS},
                "task_columns": dump_tasks(job.tasks),
            }
            for job in scheduler.jobs.values()
        ],
        "notices": scheduler.notices.dump(),
        # Tasks run again (requeue_task): only a run leased since reports for them.
        "requeued": sorted(scheduler._requeued),
        # Per worker name: enabled, draining, schedule (server/workerset.py).
        "worker_settings": {
            name: settings.dump() for name, settings in scheduler.worker_settings.items()
        },
    }


#: Task fields the snapshot keeps; the rest are rebuilt (the job, its index, who waits).
_TASK_COLUMNS = ("packed", "depends", "state", "worker", "failed_on", *_TASK_FIELDS)
_REBUILT = {"job", "index", "dependents", "pending_deps"}
_STATES = list(TaskState)
_STATE_CODE = {state: code for code, state in enumerate(_STATES)}
_NO_FAILURES: frozenset[str] = frozenset()


def dump_tasks(tasks: list[Task]) -> dict[str, list[Any]]:
    """A job's tasks as one list per field (states as small numbers)."""
    columns = {name: [getattr(t, name) for t in tasks] for name in _TASK_COLUMNS}
    columns["state"] = [_STATE_CODE[state] for state in columns["state"]]
    columns["failed_on"] = [sorted(names) if names else None for names in columns["failed_on"]]
    return columns


def load_tasks(job: Job, columns: dict[str, list[Any]]) -> None:
    """Rebuild a job's tasks from :func:`dump_tasks`, in one pass over the columns."""
    converted = dict(columns)
    if "packed" not in converted and "payload" in converted:  # before payloads were packed
        converted["packed"] = [pack_payload(p) for p in converted.pop("payload")]
    count = len(converted["packed"])
    converted["state"] = [_STATES[code] for code in columns["state"]]
    converted["depends"] = [tuple(d) if d else () for d in columns["depends"]]
    converted["failed_on"] = [frozenset(n) if n else _NO_FAILURES for n in columns["failed_on"]]
    if any(len(column) != count for column in converted.values()):
        raise ValueError(f"job {job.id}: its task columns differ in length")
    rebuilt = {
        "job": itertools.repeat(job, count),
        "index": range(count),
        "dependents": itertools.repeat((), count),
        "pending_deps": itertools.repeat(0, count),
    }
    # The dataclass's own field order: a field added to Task needs a column or a default.
    ordered = [
        rebuilt[f.name] if f.name in _REBUILT else converted[f.name]
        for f in dataclasses.fields(Task)
    ]
    job.tasks = list(itertools.starmap(Task, zip(*ordered, strict=True)))


def _load_task_maps(job: Job, maps: list[dict[str, Any]]) -> None:
    """Tasks as snapshots before columns wrote them: one map each."""
    for index, raw in enumerate(maps):
        task = Task(job, index, pack_payload(raw["payload"]), depends=tuple(raw["depends"]))
        task.state = TaskState(raw["state"])
        task.worker = raw["worker"]
        task.failed_on = frozenset(raw["failed_on"])
        for f in _TASK_FIELDS:
            if f in raw:  # snapshots from before a field existed keep its default
                setattr(task, f, raw[f])
        job.tasks.append(task)


def load(scheduler: Scheduler, document: dict[str, Any]) -> None:
    """Rebuild a fresh scheduler's state from :func:`dump`'s document."""
    scheduler._seq = document["seq"]
    unfinished: list[Job] = []
    scheduler.notices.load(document.get("notices", []))  # older snapshots have none
    scheduler._requeued = set(document.get("requeued", ()))
    scheduler.worker_settings = {  # older snapshots have none
        name: WorkerSettings.load(item)
        for name, item in document.get("worker_settings", {}).items()
    }
    for item in document["workers"]:
        worker = Worker(id=item["id"], **{f: item[f] for f in _WORKER_FIELDS if f != "online"})
        worker.online = item["online"]
        worker.to_cancel = set(item.get("to_cancel", ()))  # older snapshots lack it
        scheduler.workers[worker.id] = worker
        if not worker.online:  # offline records are all in _departed (Scheduler.register)
            scheduler._departed[worker.id] = worker
    for item in document["jobs"]:
        # Fields a snapshot from before they existed lacks keep their defaults.
        job = Job(id=item["id"], **{f: item[f] for f in _JOB_FIELDS if f != "paused" and f in item})
        job.paused = item["paused"]
        job.state = JobState(item["state"])
        job.blocked = set(item["blocked"])
        if "task_columns" in item:
            load_tasks(job, item["task_columns"])
        else:
            _load_task_maps(job, item["tasks"])
        _link(scheduler, job)
        job.ready.extend(item["ready"])
        scheduler.jobs[job.id] = job
        if job.submit_key:
            scheduler.submit_keys[job.submit_key] = job.id
        if job.state not in FINAL_JOB_STATES:
            unfinished.append(job)
    # Who waits for whom (jobs after jobs); a job still waiting is in no dispatch list.
    scheduler.link_after()
    for job in unfinished:
        if not job.waiting_for:
            scheduler._activate(job)
            if not job.paused:
                scheduler.ready_total += len(job.ready)


def _link(scheduler: Scheduler, job: Job) -> None:
    """Counts by state, who waits for whom, and the leases, from a job's loaded tasks."""
    tasks = job.tasks
    for state, number in Counter(task.state for task in tasks).items():
        job.count(state, number)
    dependents: dict[int, list[int]] = {}
    done, leased = TaskState.DONE, TaskState.LEASED
    for task in tasks:
        if task.depends:
            for dep in task.depends:
                dependents.setdefault(dep, []).append(task.index)
            task.pending_deps = sum(tasks[d].state is not done for d in task.depends)
        if task.state is leased:
            holder = scheduler.workers.get(task.worker or "")
            if holder is not None:
                holder.leased.add(task)
            scheduler._leased.add(task)
    link_dependents(tasks, dependents)


@dataclasses.dataclass(slots=True, frozen=True)
class Restored:
    generation: int
    #: In the old format without a checksum: rewrite it.
    legacy: bool
    #: The journal generation and offset it holds (written without restarting the journal).
    after: tuple[int, int] | None


def restore(scheduler: Scheduler, path: Path) -> Restored | None:
    """Load the snapshot at ``path`` into a fresh scheduler; None when there is none."""
    found = read(path)
    if found is None:
        return None
    generation, state, legacy, after = found
    try:
        load(scheduler, state)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise _damaged(path, f"it does not make a queue: {type(exc).__name__}: {exc}") from None
    return Restored(generation, legacy, after)
