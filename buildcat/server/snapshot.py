"""The whole queue as one msgpack document, so the journal can start afresh from it.

On disk: ``MAGIC``, the body's length (u64) and CRC-32 (u32), then the msgpack body
``{"generation": N, "state": ...}``. A file whose checksum does not match is refused
whole (:class:`SnapshotDamaged`): a flipped bit never becomes silently changed state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
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


def write(path: Path, generation: int, scheduler: Scheduler) -> int:
    """Write the queue to ``path`` (via a temporary file, fsynced, renamed into place, mode
    0600); returns its size. The caller fsyncs the folder."""
    body = protocol.pack({"generation": generation, "state": dump(scheduler)})
    data = HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body
    temporary = path.with_suffix(".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | platform.OPEN_FLAGS
    descriptor = os.open(temporary, flags, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        platform.make_private(descriptor)
        handle.write(data)
        handle.flush()
        os.fsync(descriptor)
    os.replace(temporary, path)
    return len(data)


def read(path: Path) -> tuple[int, dict[str, Any], bool] | None:
    """The snapshot's generation, its queue document and whether it is in the old format
    without a checksum; None when there is none."""
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
    except (FarmError, KeyError, TypeError) as exc:
        raise _damaged(path, f"it does not decode: {exc}") from None
    if not isinstance(generation, int) or not isinstance(state, dict):
        raise _damaged(path, "it does not decode into a queue")
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)  # an older release left it readable to all
    return generation, state, legacy


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
                "tasks": [
                    {
                        "payload": t.payload,
                        "depends": t.depends,
                        "state": str(t.state),
                        "worker": t.worker,
                        "failed_on": sorted(t.failed_on),
                        **{f: getattr(t, f) for f in _TASK_FIELDS},
                    }
                    for t in job.tasks
                ],
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
    for item in document["jobs"]:
        # Fields a snapshot from before they existed lacks keep their defaults.
        job = Job(id=item["id"], **{f: item[f] for f in _JOB_FIELDS if f != "paused" and f in item})
        job.paused = item["paused"]
        job.state = JobState(item["state"])
        job.blocked = set(item["blocked"])
        for index, raw in enumerate(item["tasks"]):
            task = Task(job=job, index=index, payload=raw["payload"], depends=raw["depends"])
            task.state = TaskState(raw["state"])
            task.worker = raw["worker"]
            task.failed_on = set(raw["failed_on"])
            for f in _TASK_FIELDS:
                if f in raw:  # snapshots from before a field existed keep its default
                    setattr(task, f, raw[f])
            job.tasks.append(task)
            job.count(task.state, 1)
        for task in job.tasks:
            for dep in task.depends:
                job.tasks[dep].dependents.append(task.index)
            task.pending_deps = sum(job.tasks[d].state is not TaskState.DONE for d in task.depends)
            if task.state is TaskState.LEASED:
                holder = scheduler.workers.get(task.worker or "")
                if holder is not None:
                    holder.leased.add(task)
                scheduler._leased.add(task)
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


def restore(scheduler: Scheduler, path: Path) -> tuple[int, bool] | None:
    """Load the snapshot at ``path`` into a fresh scheduler: its generation, and whether it
    is in the old format without a checksum (rewrite it); None when there is none."""
    found = read(path)
    if found is None:
        return None
    generation, state, legacy = found
    try:
        load(scheduler, state)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _damaged(path, f"it does not make a queue: {type(exc).__name__}: {exc}") from None
    return generation, legacy
