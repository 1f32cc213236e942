"""What the server keeps per worker NAME, whatever its registrations: enabled, draining,
its sleep schedule and whether it gives its tasks back when the schedule ends.

Kept by the scheduler (``Scheduler.worker_settings``), changed only through journaled
``worker-set`` and ``worker-forget`` events and written into snapshots, so settings
survive a restart and a worker that registers again under its name. The rules here are
pure: the time is passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from buildcat import schedule as schedules
from buildcat.errors import FarmError, ProtocolError

log = logging.getLogger(__name__)

#: Where a change came from: an admin (CLI, API, dashboard) or the worker's own register.
#: A schedule an admin set (or cleared) wins over what a later register says.
ADMIN = "admin"
REGISTER = "register"


@dataclass(slots=True)
class WorkerSettings:
    enabled: bool = True
    draining: bool = False
    #: The schedule's spec and time zone ("" spec: none, awake around the clock).
    spec: str = ""
    timezone: str = ""
    give_back: bool = False
    #: Who last set the schedule (ADMIN or REGISTER); "" when nobody has.
    schedule_by: str = ""
    parsed: schedules.Schedule | None = field(default=None, repr=False, compare=False)
    #: (from, until, awake): the schedule is ``awake`` from ``from`` until ``until`` (None:
    #: for good). Lists ask for every worker on every update; this answers them all.
    _span: tuple[float, float | None, bool] | None = field(default=None, repr=False, compare=False)

    @property
    def is_default(self) -> bool:
        return self.enabled and not self.draining and not self.spec and not self.schedule_by

    def schedule(self) -> schedules.Schedule | None:
        if not self.spec:
            return None
        if self.parsed is None:
            self.parsed = schedules.parse(self.spec, self.timezone or "UTC")
        return self.parsed

    def span(self, now: float) -> tuple[bool, float | None]:
        """Whether the schedule is awake at ``now``, and when that next changes (None:
        never); (True, None) with no schedule."""
        parsed = self.schedule()
        if parsed is None:
            return True, None
        known = self._span
        if known is not None and known[0] <= now and (known[1] is None or now < known[1]):
            return known[2], known[1]
        awake = parsed.awake(now)
        change = parsed.next_change(now)
        self._span = (now, change, awake)
        return awake, change

    def asleep(self, now: float) -> bool:
        return not self.span(now)[0]

    def takes_work(self, now: float) -> bool:
        return self.enabled and not self.draining and not self.asleep(now)

    def dump(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "draining": self.draining,
            "spec": self.spec,
            "timezone": self.timezone,
            "give_back": self.give_back,
            "schedule_by": self.schedule_by,
        }

    @classmethod
    def load(cls, item: dict[str, Any]) -> WorkerSettings:
        known = {key: item[key] for key in cls.__dataclass_fields__ if key in item}
        known.pop("parsed", None)
        known.pop("_span", None)
        return cls(**known)


def check_changes(changes: Any) -> dict[str, Any]:
    """A ``worker-set`` change as the journal carries it, checked whole: ``enabled``,
    ``draining`` (bools) and ``schedule``: None or {spec, timezone, give_back}."""
    if not isinstance(changes, dict):
        raise ProtocolError("worker settings must be a map")
    checked: dict[str, Any] = {}
    for key in ("enabled", "draining"):
        if key in changes:
            if not isinstance(changes[key], bool):
                raise ProtocolError(f"{key!r} must be true or false")
            checked[key] = changes[key]
    if "schedule" in changes:
        wanted = changes["schedule"]
        if wanted is None:
            checked["schedule"] = None
        else:
            if not isinstance(wanted, dict):
                raise ProtocolError("'schedule' must be a map or null")
            spec, zone, give_back = (wanted.get("spec"), wanted.get("timezone"),
                                     wanted.get("give_back", False))  # fmt: skip
            if not isinstance(spec, str) or not isinstance(zone, str):
                raise ProtocolError("a schedule needs 'spec' and 'timezone' as text")
            if not isinstance(give_back, bool):
                raise ProtocolError("'give_back' must be true or false")
            parsed = schedules.parse(spec, zone)  # ScheduleError: a 400 naming the bad part
            checked["schedule"] = {"spec": parsed.spec, "timezone": zone, "give_back": give_back}
    unknown = sorted(set(changes) - {"enabled", "draining", "schedule"})
    if unknown:
        raise ProtocolError(f"unknown worker setting {unknown[0]!r}")
    return checked


def apply(
    book: dict[str, WorkerSettings], name: str, changes: dict[str, Any], source: str
) -> WorkerSettings:
    """Change ``name``'s settings (``changes`` checked by :func:`check_changes`). A schedule
    from a register is taken only while no admin has set one; a name whose settings are back
    to the defaults leaves the book."""
    settings = book.get(name) or WorkerSettings()
    for key in ("enabled", "draining"):
        if key in changes:
            setattr(settings, key, bool(changes[key]))
    if "schedule" in changes and (source == ADMIN or settings.schedule_by != ADMIN):
        wanted = changes["schedule"]
        settings.spec = wanted["spec"] if wanted else ""
        settings.timezone = wanted["timezone"] if wanted else ""
        settings.give_back = bool(wanted and wanted.get("give_back"))
        settings.parsed = None
        settings._span = None
        # An empty schedule from a register is nobody's choice; an admin's clearing is.
        settings.schedule_by = source if (wanted or source == ADMIN) else ""
    if settings.is_default:
        book.pop(name, None)
    else:
        book[name] = settings
    return settings


def status(
    settings: WorkerSettings | None, online: bool, holding: int, now: float, nimby: str = ""
) -> str:
    """What a worker is doing, in the words a list shows: offline, disabled, draining,
    asleep (by its schedule, or while its machine is in use: ``nimby``), each taking no new
    work (a draining or sleeping worker may still finish tasks), else running or idle."""
    if not online:
        return "offline"
    if settings is not None:
        if not settings.enabled:
            return "disabled"
        if settings.draining:
            return "draining"
        if settings.asleep(now):
            return "asleep"
    if nimby:
        return "asleep"
    return "running" if holding else "idle"


def schedule_view(settings: WorkerSettings | None, now: float) -> dict[str, Any]:
    """The schedule fields of a worker's view: schedule {spec, timezone, give_back} or
    None, asleep, and wakes_at / sleeps_at (epoch seconds, None when not due)."""
    parsed = settings.schedule() if settings is not None else None
    if settings is None or parsed is None:
        return {"schedule": None, "asleep": False, "wakes_at": None, "sleeps_at": None}
    awake, change = settings.span(now)
    asleep = not awake
    return {
        "schedule": {
            "spec": settings.spec,
            "timezone": settings.timezone,
            "give_back": settings.give_back,
        },
        "asleep": asleep,
        "wakes_at": change if asleep else None,
        "sleeps_at": None if asleep else change,
    }


@dataclass(slots=True)
class Tick:
    """What the schedule timer does at one moment (``tick``)."""

    #: Some worker woke or fell asleep since the last tick: serve parked long-polls,
    #: refresh the lists.
    flipped: bool
    #: Names of sleeping workers that give back and still hold tasks: requeue those.
    give_back: list[str]
    #: When the next schedule starts or ends (epoch seconds); None when none will.
    at: float | None


def tick(
    book: dict[str, WorkerSettings],
    now: float,
    was_awake: dict[str, bool],
    holding: Callable[[str], bool],
) -> Tick:
    """The schedule timer's rule at ``now``; ``was_awake`` (name -> awake at the last
    tick) is brought up to date. ``holding(name)``: an online worker of that name holds
    tasks."""
    flipped = False
    give_back: list[str] = []
    due: float | None = None
    for name, settings in book.items():
        try:
            parsed = settings.schedule()
        except FarmError as exc:  # a journal from a release with other rules
            log.warning("worker %s: its schedule cannot be read: %s", name, exc)
            continue
        if parsed is None:
            was_awake.pop(name, None)
            continue
        awake, change = settings.span(now)
        flipped = flipped or was_awake.get(name, awake) != awake
        was_awake[name] = awake
        if not awake and settings.give_back and holding(name):
            give_back.append(name)
        if change is not None:
            due = change if due is None else min(due, change)
    for gone in set(was_awake) - set(book):
        del was_awake[gone]
    return Tick(flipped, give_back, due)
