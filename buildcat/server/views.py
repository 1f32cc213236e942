"""What the API and the dashboard show of jobs and workers: one place for the views both
read, so neither the routes (``app.py``) nor the page's server side (``web.py``) imports
the other.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from buildcat import protocol
from buildcat.errors import FarmError, ProtocolError
from buildcat.server import workerset
from buildcat.server.farm import Able, Farm, unmet
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

#: Tasks listed for each worker in a view (``holding`` counts them all).
CURRENT_SHOWN = 20
#: The most jobs one page of ``GET /api/v1/jobs`` holds.
MAX_PAGE = 1000
_ARCHIVED = ("all", "no", "only")
_ORDERS = ("oldest", "newest")


@dataclass(frozen=True, slots=True)
class JobQuery:
    """What ``GET /api/v1/jobs`` was asked for: filters, then one page of what matched."""

    states: frozenset[str] = frozenset()
    owner: str | None = None
    search: str = ""
    archived: str = "all"
    order: str = "oldest"
    offset: int = 0
    limit: int | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> JobQuery:
        """The query string checked whole: one clear reason for the first bad field."""
        known = {"state", "owner", "q", "archived", "order", "offset", "limit"}
        unknown = sorted(set(query) - known)
        if unknown:
            raise ProtocolError(
                f"unknown query field {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        states = frozenset(part for part in query.get("state", "").split(",") if part)
        bad = sorted(states - set(JobState))
        if bad:
            raise ProtocolError(f"state must be one of {', '.join(JobState)}, not {bad[0]!r}")
        archived = query.get("archived", "all")
        if archived not in _ARCHIVED:
            raise ProtocolError(f"archived must be one of {', '.join(_ARCHIVED)}, not {archived!r}")
        order = query.get("order", "oldest")
        if order not in _ORDERS:
            raise ProtocolError(f"order must be one of {', '.join(_ORDERS)}, not {order!r}")
        offset = query_number(query, "offset", 0, 0, 10**9)
        limit = query_number(query, "limit", 1, 1, MAX_PAGE) if "limit" in query else None
        search = query.get("q", "").strip().casefold()
        if len(search) > 256:
            raise ProtocolError("q is longer than 256 characters")
        return cls(states, query.get("owner"), search, archived, order, offset, limit)

    def matches(self, job: Job) -> bool:
        if (self.archived == "no" and job.archived) or (
            self.archived == "only" and not job.archived
        ):
            return False
        if self.states and str(job.state) not in self.states:
            return False
        if self.owner is not None and job.owner != self.owner:
            return False
        return not self.search or self.search in f"{job.id} {job.name}".casefold()


def query_number(query: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    """A whole-number field of a query string, ``default`` when it is absent."""
    text = query.get(key)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise ProtocolError(f"{key} must be a whole number between {low} and {high}")
    return int(text)


def job_page(farm: Farm, query: JobQuery) -> dict[str, Any]:
    """One page of the jobs that match, with the counts a list shows beside it: how many
    matched, how many jobs the farm holds, how many of them are archived, and how many
    unarchived jobs are in each state (for filter buttons)."""
    jobs = farm.scheduler.jobs.values()
    matched = [job for job in jobs if query.matches(job)]
    if query.order == "newest":
        matched.reverse()
    end = None if query.limit is None else query.offset + query.limit
    page = matched[query.offset : end]
    states: dict[str, int] = {}
    archived = 0
    for job in jobs:
        if job.archived:
            archived += 1
        else:
            states[str(job.state)] = states.get(str(job.state), 0) + 1
    progress = farm.scheduler.running_progress()
    able: Able = {}
    return {
        "jobs": [job_view(farm, job.id, progress, able) for job in page],
        "matched": len(matched),
        "offset": query.offset,
        "total": len(farm.scheduler.jobs),
        "archived": archived,
        "states": states,
    }


def job_view(
    farm: Farm,
    job_id: str,
    progress: dict[str, float] | None = None,
    able: Able | None = None,
) -> dict[str, Any]:
    """A job as the API shows it. A caller showing many jobs passes ``progress``
    (:meth:`Scheduler.running_progress`: the cost follows the leases, not each job's
    tasks) and one ``able`` for them all (see :func:`unmet`)."""
    job = farm.scheduler.job(job_id)
    if progress is None:
        progress = farm.scheduler.running_progress()
    view = job.to_dict(progress.get(job.id, 0.0))
    view["meta"] = {k: v for k, v in view["meta"].items() if k != "common"}
    view["waiting"] = unmet(farm, job, able) if job.state not in FINAL_JOB_STATES else ""
    if "frames" in job.meta:
        view["frames"] = frame_counts(job)
    return showable(view)  # one job's odd data (an older journal's) never fails a list


def frame_counts(job: Job) -> dict[str, int]:
    """Frames finished and in all, counting the tasks that write final frames (a tile or a
    sample split is a part of a frame: its stitch or merge task finishes the frame)."""
    done: set[Any] = set()
    every: set[Any] = set()
    for task in job.tasks:
        frames = final_frames(task)
        every.update(frames)
        if task.state is TaskState.DONE:
            done.update(frames)
    return {"done": len(done), "total": len(every)}


def final_frames(task: Task) -> list[Any]:
    """The frames a task finishes, for the frame counts: none for a task others wait for
    (a tile or a sample split is a part of a frame; its stitch or merge finishes it), but
    frames only a task of another kind waits for (a preview video) are finished."""
    if task.dependents and any(_writes_frames(task.job, index) for index in task.dependents):
        return []
    payload = task.payload
    kwargs = payload.get("kwargs")
    frames = payload.get("frames") or (kwargs.get("frames") if isinstance(kwargs, dict) else None)
    if frames is None and "frame" in payload:
        frames = [payload["frame"]]
    if not isinstance(frames, list):
        return []
    return [frame for frame in frames if isinstance(frame, int | str)]


def _writes_frames(job: Job, index: int) -> bool:
    from buildcat.jobs import task_kind
    from buildcat.server.outputs import CLAIMING_KINDS

    return task_kind(job.kind, job.tasks[index].payload) in CLAIMING_KINDS


def worker_view(
    worker: Worker, scheduler: Scheduler | None = None, now: float | None = None
) -> dict[str, Any]:
    """A worker as the lists show it: the first tasks it holds, not every one it has
    prefetched (hundreds, for short tasks), so an update's size stays bounded; its tags
    (the capabilities with no version: ``farm worker --tags``), and what its name's
    settings say (status, enabled, draining, schedule, asleep, wakes_at, sleeps_at)."""
    view: dict[str, Any] = worker.to_dict()
    del view["tasks"]
    first = heapq.nsmallest(CURRENT_SHOWN, worker.leased, key=lambda t: (t.job.seq, t.index))
    view["current"] = [
        {
            "id": task.id,
            "job": task.job.id,
            "job_name": task.job.name,
            "label": task.payload.get("label", ""),
            "progress": task.progress,
        }
        for task in first
    ]
    view["holding"] = len(worker.leased)
    settings = scheduler.worker_settings.get(worker.name) if scheduler is not None else None
    return _with_settings(view, settings, worker.online, time.time() if now is None else now)


def _with_settings(
    view: dict[str, Any], settings: WorkerSettings | None, online: bool, now: float
) -> dict[str, Any]:
    capabilities = view.get("capabilities") or {}
    view["tags"] = sorted(name for name, version in capabilities.items() if version == "")
    view.setdefault("nimby", "")
    view["status"] = workerset.status(
        settings, online, view.get("holding", 0), now, view["nimby"] if online else ""
    )
    view["enabled"] = settings.enabled if settings is not None else True
    view["draining"] = settings.draining if settings is not None else False
    view["drained"] = view["draining"] and not view.get("holding", 0)
    view.update(workerset.schedule_view(settings, now))
    return view


def workers_view(scheduler: Scheduler, now: float | None = None) -> list[dict[str, Any]]:
    """Every worker the farm knows, by name: each record, and an offline entry for a name
    whose settings are kept but that has no record (it left before the server restarted)."""
    now = time.time() if now is None else now
    shown = [worker_view(worker, scheduler, now) for worker in scheduler.workers.values()]
    listed = {worker.name for worker in scheduler.workers.values()}
    for name, settings in scheduler.worker_settings.items():
        if name in listed:
            continue
        view: dict[str, Any] = {
            "id": None, "name": name, "state": "offline", "slots": 0, "capabilities": {},
            "info": {}, "registered_at": None, "last_seen": None, "tasks_done": 0,
            "tasks_failed": 0, "current": [], "holding": 0,
        }  # fmt: skip
        shown.append(_with_settings(view, settings, False, now))
    return sorted(shown, key=lambda view: (str(view["name"]), view["status"] == "offline"))


def encode_view(view: dict[str, Any], what: str) -> str:
    """One job's or worker's part of the overview; values JSON cannot carry (NaN, a
    non-text key, something nested too deep) are replaced, and the part says so."""
    try:
        return json.dumps(view, default=_as_text, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        log.debug("dashboard: %s has values JSON cannot carry: %s", what, exc)
        plain = _plain(view, 0)
        plain["display_error"] = f"shown in part: some of its values are not JSON ({exc})"[:300]
        return json.dumps(plain, allow_nan=False, separators=(",", ":"))


def showable(view: dict[str, Any]) -> dict[str, Any]:
    """A job's API view as it is when JSON (strict: no NaN) and msgpack both carry it;
    otherwise a copy with the odd values replaced and a ``display_error`` saying so, so
    one job's data never fails a reply that lists others."""
    try:
        json.dumps(view, allow_nan=False, default=_text_of_bytes)
        protocol.pack(view)
    except (TypeError, ValueError, RecursionError, FarmError) as exc:
        plain = _plain(view, 0)
        plain["display_error"] = f"shown in part: some of its values are not JSON ({exc})"[:300]
        return plain
    return view


def _as_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _text_of_bytes(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _plain(value: Any, depth: int) -> Any:
    """``value`` with only what JSON and msgpack carry: text keys, finite floats, 64-bit
    integers, lists, maps (deeper than 32 levels is cut)."""
    if depth > 32:
        return "…"
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, str | bool) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_key(key): _plain(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item, depth + 1) for item in value]
    return str(value)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    return str(key)
