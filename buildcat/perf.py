"""How fast a job went, from its tasks' recorded times (Brenda's ``perf``): tasks per hour
overall and per worker, mean task time, and how busy each worker's slots were; and for a
render, each frame's record (render time, peak memory, Blender, worker)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

#: The columns of a frame's record, in the order ``farm perf`` shows them.
FRAME_COLUMNS = ("frame", "task", "worker", "blender", "seconds", "peak_memory_mb")


def job_perf(
    job: dict[str, Any],
    tasks: list[dict[str, Any]],
    workers: list[dict[str, Any]],
    results: list[Any] | None = None,
) -> dict[str, Any]:
    """Figures for one job from ``Job.status()``, ``Job.tasks()`` and ``Client.workers()``;
    ``results`` (the tasks' results, None where unfinished) adds ``frames``, each frame's
    record from its render task (``result["frames_info"]``), by frame.

    Only attempts a worker reported a run time for count (done or failed). The span runs
    from the first task's start to the last task's end; a worker's utilisation is its
    busy time over the span times its slots.
    """
    slots = {worker["name"]: int(worker.get("slots") or 1) for worker in workers}
    timed = [
        task
        for task in tasks
        if task.get("seconds") is not None
        and task.get("started_at") is not None
        and task["state"] in ("done", "failed")
    ]
    done = [task for task in timed if task["state"] == "done"]
    figures: dict[str, Any] = {
        "id": job["id"],
        "name": job.get("name", ""),
        "state": job["state"],
        "tasks": len(tasks),
        "tasks_done": sum(task["state"] == "done" for task in tasks),
        "timed": len(timed),
        "span_seconds": 0.0,
        "tasks_per_hour": 0.0,
        "mean_task_seconds": 0.0,
        "workers": [],
        "frames": frame_records(tasks, results or []),
    }
    if not timed:
        return figures
    start = min(task["started_at"] for task in timed)
    end = max(task["started_at"] + task["seconds"] for task in timed)
    span = max(end - start, 1e-9)
    figures["span_seconds"] = span
    figures["tasks_per_hour"] = len(done) / span * 3600
    figures["mean_task_seconds"] = sum(t["seconds"] for t in done) / len(done) if done else 0.0
    by_worker: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task in timed:
        by_worker[task.get("worker_name") or task.get("worker") or "?"].append(task)
    for name, ran in sorted(by_worker.items()):
        finished = [task for task in ran if task["state"] == "done"]
        busy = sum(task["seconds"] for task in ran)
        worker_slots = slots.get(name, 1)
        figures["workers"].append(
            {
                "worker": name,
                "tasks_done": len(finished),
                "tasks_failed": len(ran) - len(finished),
                "tasks_per_hour": len(finished) / span * 3600,
                "mean_task_seconds": (
                    sum(task["seconds"] for task in finished) / len(finished) if finished else 0.0
                ),
                "busy_seconds": busy,
                "slots": worker_slots,
                "utilisation": min(1.0, busy / (span * worker_slots)),
            }
        )
    return figures


def frame_records(tasks: list[dict[str, Any]], results: list[Any]) -> list[dict[str, Any]]:
    """Each frame's record from the render tasks' results, by frame, then by task."""
    records = []
    for task, result in zip(tasks, results, strict=False):
        infos = result.get("frames_info") if isinstance(result, dict) else None
        if not isinstance(infos, list):
            continue
        for info in infos:
            if isinstance(info, dict) and isinstance(info.get("frame"), int):
                row = {key: info.get(key) for key in FRAME_COLUMNS}
                row["task"] = task["id"]
                records.append(row)
    records.sort(key=lambda row: (row["frame"], row["task"]))
    return records
