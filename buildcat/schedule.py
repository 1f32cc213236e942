"""Sleep schedules for workers: when a worker takes work, as days and hours of its own
local time ("mon-fri 19:00-08:00; sat,sun 00:00-24:00").

Pure functions: the time is always passed in (epoch seconds) and read in the schedule's
time zone (zoneinfo), so daylight saving changes are the zone's business, not ours.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from buildcat.errors import FarmError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: A schedule spec longer than this is refused (it is journaled and shown in lists).
MAX_SPEC = 512
MAX_WINDOWS = 32
#: How far ahead the next wake or sleep is looked for: a week and a day covers every
#: weekly schedule.
_HORIZON_DAYS = 8
_TIME = re.compile(r"(\d{1,2}):(\d{2})")


class ScheduleError(FarmError):
    """A schedule or time zone that cannot be read; the message names the bad part."""


@dataclass(frozen=True, slots=True)
class Window:
    """Awake from ``start`` on each of ``days`` until ``end`` (minutes after midnight).
    An ``end`` at or before ``start`` runs into the next day (19:00-08:00)."""

    days: frozenset[int]
    start: int
    end: int

    @property
    def overnight(self) -> bool:
        return self.end <= self.start

    def covers(self, weekday: int, minute: int) -> bool:
        if self.overnight:
            return (weekday in self.days and minute >= self.start) or (
                (weekday - 1) % 7 in self.days and minute < self.end
            )
        return weekday in self.days and self.start <= minute < self.end


@dataclass(frozen=True, slots=True)
class Schedule:
    spec: str
    windows: tuple[Window, ...]
    timezone: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def awake(self, now: float) -> bool:
        """Whether the worker takes work at ``now``, read on its local wall clock."""
        local = datetime.fromtimestamp(now, self.zone)
        minute = local.hour * 60 + local.minute
        return any(window.covers(local.weekday(), minute) for window in self.windows)

    def next_change(self, now: float) -> float | None:
        """When the worker next wakes (if asleep at ``now``) or falls asleep (if awake), in
        epoch seconds; None when that never happens (awake around the clock, or never)."""
        awake = self.awake(now)
        for moment in self._boundaries(now):
            if moment > now and self.awake(moment) != awake:
                return moment
        return None

    def _boundaries(self, now: float) -> list[float]:
        """Every moment in the horizon at which a window starts or ends, in order. A wall
        time that a daylight saving change skips or repeats is taken both ways (fold)."""
        zone = self.zone
        today = datetime.fromtimestamp(now, zone).date()
        minutes = {w.start for w in self.windows} | {w.end % 1440 for w in self.windows}
        moments: set[float] = set()
        for offset in range(-1, _HORIZON_DAYS + 1):
            day = today + timedelta(days=offset)
            for minute in minutes:
                for fold in (0, 1):
                    moments.add(_at(day, minute, zone, fold))
            # A clock change inside a window's edge (a start in the hour that is skipped)
            # moves the edge to the change itself.
            change = _clock_change(_at(day, 0, zone, 0), _at(day, 0, zone, 0) + 86400, zone)
            if change is not None:
                moments.add(change)
        return sorted(moments)


def _clock_change(start: float, end: float, zone: ZoneInfo) -> float | None:
    """The first second in [start, end) at which the zone's offset from UTC changes (a
    daylight saving change), or None: found by halving, as zoneinfo does not list them."""
    before = datetime.fromtimestamp(start, zone).utcoffset()
    if datetime.fromtimestamp(end, zone).utcoffset() == before:
        return None
    low, high = int(start), int(end)  # offset(low) == before != offset(high)
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return float(high)


def _at(day: date, minute: int, zone: ZoneInfo, fold: int) -> float:
    wall = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=zone)
    return wall.replace(fold=fold).timestamp()


def check_timezone(name: str) -> str:
    """``name`` if zoneinfo knows it (``Europe/Berlin``, ``UTC``), else ScheduleError."""
    if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise ScheduleError(f"unknown time zone {name[:64]!r} (an IANA name: Europe/Berlin, UTC)")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(
            f"unknown time zone {name!r} (an IANA name: Europe/Berlin, UTC)"
        ) from None
    return name


def parse(spec: str, timezone: str = "UTC") -> Schedule:
    """Read ``"DAYS HH:MM-HH:MM[; DAYS HH:MM-HH:MM ...]"``. DAYS: ``mon``..``sun``, ranges
    (``mon-fri``, ``fri-mon`` wraps), lists (``sat,sun``) or ``daily``; 24:00 may end a
    window. Raises ScheduleError naming the part it cannot read."""
    check_timezone(timezone)
    if len(spec) > MAX_SPEC:
        raise ScheduleError(f"a schedule is at most {MAX_SPEC} characters")
    parts = [part.strip() for part in spec.split(";")]
    if not any(parts):
        raise ScheduleError('empty schedule: give days and hours ("mon-fri 19:00-08:00")')
    if len([p for p in parts if p]) > MAX_WINDOWS:
        raise ScheduleError(f"a schedule has at most {MAX_WINDOWS} parts")
    windows = tuple(_window(part) for part in parts if part)
    return Schedule(spec=spec.strip(), windows=windows, timezone=timezone)


def _window(part: str) -> Window:
    fields = part.split()
    if len(fields) != 2:
        raise ScheduleError(
            f"schedule part {part!r}: expected DAYS HH:MM-HH:MM (for example mon-fri 19:00-08:00)"
        )
    days_text, hours = fields
    days = _days(days_text.lower(), part)
    start_text, dash, end_text = hours.partition("-")
    if not dash:
        raise ScheduleError(f"schedule part {part!r}: hours {hours!r} are not HH:MM-HH:MM")
    start = _minute(start_text, part, end=False)
    end = _minute(end_text, part, end=True)
    if start == end:
        raise ScheduleError(
            f"schedule part {part!r}: {start_text}-{end_text} starts where it ends "
            "(00:00-24:00 is the whole day)"
        )
    return Window(days=days, start=start, end=end)


def _days(text: str, part: str) -> frozenset[int]:
    if text == "daily":
        return frozenset(range(7))
    chosen: set[int] = set()
    for item in text.split(","):
        first, dash, last = item.partition("-")
        if first not in DAYS or (dash and last not in DAYS):
            bad = first if first not in DAYS else last
            raise ScheduleError(
                f"schedule part {part!r}: unknown day {bad!r} (mon, tue, wed, thu, fri, sat, "
                "sun, a range like mon-fri, a list like sat,sun, or daily)"
            )
        start = DAYS.index(first)
        if not dash:
            chosen.add(start)
            continue
        stop = DAYS.index(last)
        span = (stop - start) % 7
        chosen.update((start + step) % 7 for step in range(span + 1))
    return frozenset(chosen)


def _minute(text: str, part: str, *, end: bool) -> int:
    match = _TIME.fullmatch(text)
    if match is None:
        raise ScheduleError(f"schedule part {part!r}: {text!r} is not a time (HH:MM)")
    hour, minute = int(match[1]), int(match[2])
    if (hour, minute) == (24, 0) and end:
        return 1440
    if hour > 23 or minute > 59:
        limit = "00:00 to 24:00" if end else "00:00 to 23:59"
        raise ScheduleError(f"schedule part {part!r}: {text!r} is not a time ({limit})")
    return hour * 60 + minute


def local_timezone() -> str:
    """This machine's IANA time zone name (what a worker reports at register): ``TZ``,
    else where ``/etc/localtime`` points, else ``/etc/timezone``; "UTC" when none says."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = str(Path("/etc/localtime").resolve())
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text().strip())
    for name in candidates:
        if name:
            try:
                return check_timezone(name)
            except ScheduleError:
                continue
    return "UTC"
