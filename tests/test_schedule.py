"""Sleep schedules (buildcat/schedule.py): the parser, and awake / next change at fixed
moments, daylight saving changes included."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from buildcat import schedule
from buildcat.schedule import ScheduleError

BERLIN = "Europe/Berlin"
ARTIST = "mon-fri 19:00-08:00; sat,sun 00:00-24:00"


def at(text: str, zone: str = BERLIN) -> float:
    """``"2026-03-02 20:00"`` on the wall clock of ``zone``, as epoch seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def utc(text: str) -> float:
    return at(text, "UTC")


def test_an_artists_desktop_works_nights_and_weekends() -> None:
    plan = schedule.parse(ARTIST, BERLIN)
    # 2026-03-02 is a Monday.
    assert plan.awake(at("2026-03-02 19:00"))
    assert plan.awake(at("2026-03-02 23:59"))
    assert plan.awake(at("2026-03-03 07:59"))  # Monday's night runs into Tuesday
    assert not plan.awake(at("2026-03-03 08:00"))
    assert not plan.awake(at("2026-03-03 12:00"))
    assert not plan.awake(at("2026-03-02 18:59"))
    assert plan.awake(at("2026-03-07 12:00"))  # Saturday
    assert plan.awake(at("2026-03-06 23:00"))  # Friday night
    assert plan.awake(at("2026-03-07 07:00"))  # ... into Saturday
    assert plan.awake(at("2026-03-08 23:59"))  # Sunday, to its end
    assert not plan.awake(at("2026-03-09 07:00"))  # Sunday's window ends at 24:00


def test_next_change_says_when_it_wakes_and_sleeps() -> None:
    plan = schedule.parse(ARTIST, BERLIN)
    assert plan.next_change(at("2026-03-03 12:00")) == at("2026-03-03 19:00")
    assert plan.next_change(at("2026-03-03 19:00")) == at("2026-03-04 08:00")
    # Friday evening to Monday morning is one stretch awake.
    assert plan.next_change(at("2026-03-06 20:00")) == at("2026-03-09 00:00")
    assert plan.next_change(at("2026-03-09 00:00")) == at("2026-03-09 19:00")


def test_the_time_zone_decides_the_wall_clock() -> None:
    plan = schedule.parse("daily 09:00-17:00", "America/New_York")
    # 14:00 UTC is 09:00 in New York in March 2026 (EDT from 8 March: UTC-4 -> 10:00).
    assert plan.awake(utc("2026-03-03 14:00"))  # 09:00 EST
    assert not plan.awake(utc("2026-03-03 13:59"))
    assert plan.next_change(utc("2026-03-03 12:00")) == utc("2026-03-03 14:00")


def test_spring_forward_moves_the_next_wake_by_an_hour_in_utc() -> None:
    plan = schedule.parse("daily 09:00-17:00", BERLIN)
    # Europe goes to summer time on Sunday 2026-03-29 at 02:00 (CET, UTC+1 -> CEST, UTC+2).
    assert plan.next_change(at("2026-03-28 18:00")) == utc("2026-03-29 07:00")
    assert plan.next_change(at("2026-03-27 18:00")) == utc("2026-03-28 08:00")


def test_an_overnight_window_is_an_hour_shorter_on_the_night_clocks_go_forward() -> None:
    plan = schedule.parse("daily 19:00-08:00", BERLIN)
    start = at("2026-03-28 19:00")
    end = plan.next_change(start)
    assert end == at("2026-03-29 08:00") == utc("2026-03-29 06:00")
    assert end - start == 12 * 3600


def test_an_overnight_window_is_an_hour_longer_on_the_night_clocks_go_back() -> None:
    plan = schedule.parse("daily 19:00-08:00", BERLIN)
    # Back to winter time on Sunday 2026-10-25 at 03:00 CEST -> 02:00 CET.
    start = at("2026-10-24 19:00")
    end = plan.next_change(start)
    assert end == utc("2026-10-25 07:00")
    assert end - start == 14 * 3600


def test_a_window_that_starts_in_the_skipped_hour_starts_when_the_clock_jumps() -> None:
    plan = schedule.parse("sun 02:30-04:00", BERLIN)
    before = utc("2026-03-29 00:30")  # 01:30 CET
    assert not plan.awake(before)
    wakes = plan.next_change(before)
    assert wakes == utc("2026-03-29 01:00")  # 03:00 CEST: the clock jumped past 02:30
    assert plan.awake(wakes)
    assert plan.next_change(wakes) == utc("2026-03-29 02:00")  # 04:00 CEST


@pytest.mark.parametrize(
    ("spec", "awake", "asleep"),
    [
        ("daily 00:00-24:00", ["2026-03-02 00:00", "2026-03-08 23:59"], []),
        ("fri-mon 10:00-12:00", ["2026-03-06 10:00", "2026-03-09 11:59"],
         ["2026-03-03 10:00", "2026-03-09 12:00"]),
        ("sat,sun 08:00-10:00; wed 22:00-02:00", ["2026-03-07 09:00", "2026-03-05 01:59"],
         ["2026-03-05 02:00", "2026-03-04 21:59"]),
        ("MON 9:05-9:10", ["2026-03-02 09:05"], ["2026-03-02 09:10"]),
    ],
)  # fmt: skip
def test_day_ranges_lists_and_wraps(spec: str, awake: list[str], asleep: list[str]) -> None:
    plan = schedule.parse(spec, BERLIN)
    assert all(plan.awake(at(moment)) for moment in awake)
    assert not any(plan.awake(at(moment)) for moment in asleep)


def test_always_awake_never_changes() -> None:
    plan = schedule.parse("daily 00:00-24:00", BERLIN)
    assert plan.next_change(at("2026-03-02 12:00")) is None


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("", "empty schedule"),
        (" ; ", "empty schedule"),
        ("mon-fri 19:00", "'mon-fri 19:00'"),
        ("funday 10:00-12:00", "unknown day 'funday'"),
        ("mon-xyz 10:00-12:00", "unknown day 'xyz'"),
        ("mon 25:00-26:00", "'25:00' is not a time"),
        ("mon 10:00-24:01", "'24:01' is not a time"),
        ("mon 24:00-10:00", "'24:00' is not a time"),
        ("mon 10:60-11:00", "'10:60' is not a time"),
        ("mon 10-12", "'10' is not a time"),
        ("mon 10:00-10:00", "starts where it ends"),
        ("mon-fri 19:00-08:00; sat 9am-5pm", "'sat 9am-5pm'"),
        ("mon 10:00_12:00", "not HH:MM-HH:MM"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_bad_part(spec: str, named: str) -> None:
    with pytest.raises(ScheduleError) as refused:
        schedule.parse(spec, BERLIN)
    assert named in str(refused.value)


def test_unknown_time_zones_are_refused() -> None:
    for zone in ("Mars/Olympus", "", "../etc/passwd", "/etc/localtime"):
        with pytest.raises(ScheduleError, match="unknown time zone"):
            schedule.parse("daily 09:00-17:00", zone)


def test_this_machine_has_a_time_zone() -> None:
    schedule.check_timezone(schedule.local_timezone())
