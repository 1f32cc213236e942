"""The whole queue as one msgpack document, so the journal can start afresh from it."""

from __future__ import annotations

from typing import Any

from buildcat.server.scheduler import (
    FINAL_JOB_STATES,
    Job,
    JobState,
    Scheduler,
    Task,
    TaskState,
    Worker,
)

_TASK_FIELDS = (
    "attempts", "failures", "lease_expires_at", "leased_at", "finished_at", "result",
    "error", "traceback", "log", "progress", "progress_message", "ready_at", "started_at",
    "seconds", "worker_name",
)  # fmt: skip
_JOB_FIELDS = (
    "seq", "name", "kind", "priority", "requires", "max_attempts", "created_at", "owner",
    "meta", "paused", "started_at", "finished_at", "error", "traceback", "timeout",
    "failures_by_worker", "submit_key", "submit_digest",
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
    }


def load(scheduler: Scheduler, document: dict[str, Any]) -> None:
    """Rebuild a fresh scheduler's state from :func:`dump`'s document."""
    scheduler._seq = document["seq"]
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
            scheduler._activate(job)
            if not job.paused:
                scheduler.ready_total += len(job.ready)
