"""Steering workers by name: drain, disable, enable, requeue their tasks, forget a departed
one, set a sleep schedule; and the timer that applies schedules as they start and end.

``POST /api/v1/workers/{worker}/drain|disable|enable|requeue|forget|schedule``, where
``{worker}`` is the worker's name. Each is checked whole, journaled (``worker-set``,
``worker-requeue``, ``worker-forget``), then applied (:meth:`Farm.change_all`); the
settings themselves live in :mod:`buildcat.server.workerset`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiohttp import web

from buildcat import protocol
from buildcat import schedule as schedules
from buildcat.errors import FarmError, ProtocolError
from buildcat.server import views, workerset
from buildcat.server.farm import Farm, farm_of, who_of
from buildcat.server.replies import read_body, respond
from buildcat.server.scheduler import Scheduler

log = logging.getLogger(__name__)

ACTIONS = ("drain", "disable", "enable", "requeue", "forget", "schedule")
#: The schedule timer looks again at least this often (a clock change, a missed wake).
RECHECK_SECONDS = 30.0
SLEEPER_KEY = web.AppKey("buildcat.sleeper", asyncio.Event)


def add_routes(app: web.Application) -> None:
    api = protocol.API_PREFIX
    app[SLEEPER_KEY] = asyncio.Event()

    async def act(request: web.Request) -> web.Response:
        farm = farm_of(request)
        name = request.match_info["worker"]
        action = request.match_info["action"]
        body = await read_body(request)
        if not isinstance(body, dict):
            raise ProtocolError("the request body must be a map")
        scheduler = farm.scheduler
        scheduler.check_worker_name(name)
        now, by = time.time(), who_of(request)
        events: list[tuple[Any, ...]] = []
        changes: dict[str, Any] = {}
        if action == "drain":
            changes = {"draining": True}
        elif action == "enable":
            changes = {"enabled": True, "draining": False}
        elif action == "disable":
            changes = {"enabled": False}
        elif action == "schedule":
            changes = {"schedule": schedule_from(body, scheduler, name)}
        elif action == "forget":
            scheduler.check_forget(name)
        checked = workerset.check_changes(changes) if changes else {}
        if changes:
            events.append(("worker-set", now, name, checked, workerset.ADMIN, by))
        if action in ("disable", "requeue"):
            events.append(("worker-requeue", now, name, by))
        if action == "forget":
            events.append(("worker-forget", now, name, by))

        def apply() -> int:
            returned = 0
            if changes:
                workerset.apply(scheduler.worker_settings, name, checked, workerset.ADMIN)
            if action in ("disable", "requeue"):
                returned = len(scheduler.requeue_worker(name, now))
            if action == "forget":
                scheduler.forget_worker(name)
            return returned

        returned = await farm.change_all(events, apply)
        request.app[SLEEPER_KEY].set()  # the timer looks at the new settings
        also = f"; {returned} task(s) back in the queue" if returned else ""
        log.info("worker %s: %s%s%s", name, action, f" by {by}" if by else "", also)
        if action == "forget":
            return respond(request, {"forgotten": name, "name": name})
        view = worker_named(scheduler, name)
        view["requeued"] = returned
        return respond(request, view)

    app.router.add_post(f"{api}/workers/{{worker}}/{{action:{'|'.join(ACTIONS)}}}", act)


def schedule_from(body: dict[str, Any], scheduler: Scheduler, name: str) -> dict[str, Any] | None:
    """``{"schedule": SPEC | "", "timezone": TZ, "give_back": bool}`` as a setting: None
    clears it; the time zone defaults to the one the worker reported at register (then
    the one its schedule had, then UTC)."""
    unknown = sorted(set(body) - {"schedule", "timezone", "give_back"})
    if unknown:
        raise ProtocolError(f"unknown field {unknown[0]!r} (schedule, timezone, give_back)")
    spec = body.get("schedule")
    if not isinstance(spec, str):
        raise ProtocolError('\'schedule\' must be text: "mon-fri 19:00-08:00", or "" to clear')
    give_back = body.get("give_back", False)
    if not isinstance(give_back, bool):
        raise ProtocolError("'give_back' must be true or false")
    zone = body.get("timezone")
    if zone is not None and not isinstance(zone, str):
        raise ProtocolError("'timezone' must be text (Europe/Berlin)")
    if not spec.strip():
        return None
    if not zone:
        zone = reported_timezone(scheduler, name)
    return {"spec": spec, "timezone": zone, "give_back": give_back}


def reported_timezone(scheduler: Scheduler, name: str) -> str:
    for worker in scheduler.workers_named(name):
        reported = worker.info.get("timezone") if isinstance(worker.info, dict) else None
        if isinstance(reported, str) and reported:
            with contextlib.suppress(schedules.ScheduleError):
                return schedules.check_timezone(reported)
    settings = scheduler.worker_settings.get(name)
    return settings.timezone if settings is not None and settings.timezone else "UTC"


def worker_named(scheduler: Scheduler, name: str) -> dict[str, Any]:
    """The view of the worker under ``name``: its newest record (online first), or its
    settings' offline entry."""
    for view in views.workers_view(scheduler):
        if view["name"] == name:
            return view
    raise FarmError(f"no worker named {name!r}")  # checked by the caller: not reached


def _holding(scheduler: Scheduler, name: str) -> bool:
    return any(worker.online and worker.leased for worker in scheduler.workers_named(name))


async def give_back_tasks(farm: Farm, name: str, now: float) -> None:
    """A worker's schedule ended and it gives back: its tasks go back to the queue."""
    try:
        returned = await farm.change(
            ("worker-requeue", now, name, "schedule"),
            lambda: farm.scheduler.requeue_worker(name, now),
        )
    except FarmError as exc:
        log.error("worker %s: could not give its tasks back: %s", name, exc)
        return
    log.info("worker %s: its schedule ended; %d task(s) given back", name, len(returned))


async def run_schedules(farm: Farm, changed: asyncio.Event) -> None:
    """Apply sleep schedules as time passes: when one starts, parked long-polls are served
    (``Farm.after_change`` dispatches); when one ends, a worker that gives back has its
    tasks requeued (journaled, ``worker-requeue`` by "schedule"). Sleeps until the next
    start or end of any schedule, or until the settings change."""
    was_awake: dict[str, bool] = {}
    while True:
        changed.clear()  # before looking: a change meanwhile wakes the next wait at once
        now = time.time()
        due = workerset.tick(farm.scheduler.worker_settings, now, was_awake,
                             lambda name: _holding(farm.scheduler, name))  # fmt: skip
        for name in due.give_back:
            await give_back_tasks(farm, name, now)
        if due.flipped:
            farm.after_change()  # a worker woke: hand it work; lists show the change
        wait = RECHECK_SECONDS if due.at is None else min(RECHECK_SECONDS, due.at - time.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), max(0.05, wait + 0.01))
