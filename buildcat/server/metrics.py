"""Prometheus text exposition of the farm: jobs, tasks and workers by state, and
histograms of dispatch latency and task duration (``GET /metrics``)."""

from __future__ import annotations

from collections import Counter

from buildcat.server.scheduler import JobState, Scheduler, TaskState, WorkerState


def render(
    scheduler: Scheduler, *, started_at: float, version: str, streams: int = 0, overviews: int = 0
) -> str:
    """The whole exposition, one family after another."""
    jobs = Counter(str(job.state) for job in scheduler.jobs.values())
    tasks: Counter[str] = Counter()
    for job in scheduler.jobs.values():
        for state, count in job.counts.items():
            tasks[str(state)] += count
    workers = Counter(str(worker.state) for worker in scheduler.workers.values())
    out: list[str] = []

    def family(name: str, kind: str, text: str) -> None:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")

    family("buildcat_info", "gauge", "The server's version.")
    out.append(f'buildcat_info{{version="{version}"}} 1')
    family("buildcat_server_start_time_seconds", "gauge", "When the server started (epoch).")
    out.append(f"buildcat_server_start_time_seconds {started_at:.3f}")
    family("buildcat_jobs", "gauge", "Jobs by state.")
    out.extend(f'buildcat_jobs{{state="{state}"}} {jobs.get(str(state), 0)}' for state in JobState)
    family(
        "buildcat_jobs_waiting",
        "gauge",
        "Jobs waiting for other jobs to end (--after); counted as queued or paused above too.",
    )
    out.append(
        f"buildcat_jobs_waiting {sum(1 for job in scheduler.jobs.values() if job.waiting_for)}"
    )
    family("buildcat_tasks", "gauge", "Tasks by state.")
    out.extend(
        f'buildcat_tasks{{state="{state}"}} {tasks.get(str(state), 0)}' for state in TaskState
    )
    family("buildcat_workers", "gauge", "Workers by state.")
    out.extend(
        f'buildcat_workers{{state="{state}"}} {workers.get(str(state), 0)}' for state in WorkerState
    )
    family("buildcat_worker_slots", "gauge", "Task slots of online workers.")
    out.append(
        f"buildcat_worker_slots {sum(w.slots for w in scheduler.workers.values() if w.online)}"
    )
    family("buildcat_dashboard_streams", "gauge", "Open dashboard event streams.")
    out.append(f"buildcat_dashboard_streams {streams}")
    family(
        "buildcat_dashboard_overviews_total",
        "counter",
        "Dashboard overviews made: one per update for every open stream together.",
    )
    out.append(f"buildcat_dashboard_overviews_total {overviews}")
    family(
        "buildcat_dispatch_latency_seconds",
        "histogram",
        "Seconds from a task becoming ready to a worker leasing it.",
    )
    out.extend(scheduler.dispatch_latency.lines("buildcat_dispatch_latency_seconds"))
    family("buildcat_task_duration_seconds", "histogram", "Seconds a task ran on its worker.")
    out.extend(scheduler.task_seconds.lines("buildcat_task_duration_seconds"))
    return "\n".join(out) + "\n"
