"""Per-worker-name settings in the queue (server/workerset.py, Scheduler): leases follow
them, requeueing a worker's tasks costs no attempt, and they replay from the journal and
come back from a snapshot."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from buildcat.server import journal, snapshot, workerset
from buildcat.server.scheduler import Conflict, NotFound, Scheduler, TaskState

#: Tuesday 2026-03-03 12:00 in Berlin: inside working hours, outside an artist's night.
NOON = datetime(2026, 3, 3, 12, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
NIGHTS = {"spec": "mon-fri 19:00-08:00", "timezone": "Europe/Berlin", "give_back": False}


def farm_with(events: list[list[Any]]) -> Scheduler:
    """A fresh queue made by replaying ``events`` (as the server does at start)."""
    scheduler = Scheduler()
    journal.replay(scheduler, iter(events))
    return scheduler


def setting(name: str, changes: dict[str, Any], source: str = workerset.ADMIN) -> list[Any]:
    return ["worker-set", NOON, name, workerset.check_changes(changes), source, "ana"]


def base_events() -> list[list[Any]]:
    tasks = [[{"label": str(i)}, []] for i in range(3)]
    return [
        ["register", NOON, "w-a", "ws-ana", 1, {"gpu": ""}, {"timezone": "Europe/Berlin"}],
        ["register", NOON, "w-b", "rack-1", 1, {"gpu": ""}, {}],
        ["submit", NOON, "j1", tasks, "", "python", 0, [], 3, "", {}, None],
    ]


def test_a_disabled_draining_or_sleeping_worker_is_leased_nothing() -> None:
    for changes in ({"enabled": False}, {"draining": True}, {"schedule": NIGHTS}):
        scheduler = farm_with([*base_events(), setting("ws-ana", changes)])
        assert scheduler.lease("w-a", 1, NOON) == []
        assert [t.id for t in scheduler.lease("w-b", 1, NOON)] == ["j1.0"]
    evening = NOON + 8 * 3600  # 20:00: the night has begun
    scheduler = farm_with([*base_events(), setting("ws-ana", {"schedule": NIGHTS})])
    assert [t.id for t in scheduler.lease("w-a", 1, evening)] == ["j1.0"]


def test_enable_undoes_drain_and_disable_and_default_settings_leave_the_book() -> None:
    scheduler = farm_with([*base_events(), setting("ws-ana", {"enabled": False, "draining": True})])
    assert "ws-ana" in scheduler.worker_settings
    journal.replay(scheduler, iter([setting("ws-ana", {"enabled": True, "draining": False})]))
    assert "ws-ana" not in scheduler.worker_settings
    assert [t.id for t in scheduler.lease("w-a", 1, NOON)] == ["j1.0"]


def test_requeueing_a_workers_tasks_costs_no_attempt_and_tells_it_to_stop() -> None:
    scheduler = farm_with(base_events())
    [task] = scheduler.lease("w-a", 1, NOON)
    returned = scheduler.requeue_worker("ws-ana", NOON)
    assert returned == [task]
    assert task.state is TaskState.QUEUED and task.attempts == 0 and task.failures == 0
    assert scheduler.take_cancellations("w-a") == [task.id]
    assert task.job.ready[0] == task.index  # it leaves first again
    assert [t.id for t in scheduler.lease("w-b", 1, NOON)] == [task.id]


def test_a_schedule_from_register_never_overrides_an_admins() -> None:
    book: dict[str, workerset.WorkerSettings] = {}
    mine = {"spec": "daily 09:00-17:00", "timezone": "UTC", "give_back": True}
    workerset.apply(book, "ws", workerset.check_changes({"schedule": mine}), workerset.REGISTER)
    assert book["ws"].spec == "daily 09:00-17:00" and book["ws"].give_back
    workerset.apply(book, "ws", workerset.check_changes({"schedule": NIGHTS}), workerset.ADMIN)
    workerset.apply(book, "ws", workerset.check_changes({"schedule": mine}), workerset.REGISTER)
    workerset.apply(book, "ws", {"schedule": None}, workerset.REGISTER)
    assert book["ws"].spec == NIGHTS["spec"] and book["ws"].schedule_by == workerset.ADMIN
    workerset.apply(book, "ws", {"schedule": None}, workerset.ADMIN)  # cleared by an admin
    workerset.apply(book, "ws", workerset.check_changes({"schedule": mine}), workerset.REGISTER)
    assert book["ws"].spec == "" and book["ws"].schedule_by == workerset.ADMIN


def test_settings_come_back_from_a_snapshot() -> None:
    events = [*base_events(), setting("ws-ana", {"schedule": NIGHTS}),
              setting("rack-1", {"draining": True})]  # fmt: skip
    scheduler = farm_with(events)
    restored = Scheduler()
    snapshot.load(restored, snapshot.dump(scheduler))
    assert restored.worker_settings == scheduler.worker_settings
    assert restored.worker_settings["ws-ana"].asleep(NOON)
    assert restored.worker_settings["rack-1"].draining


def test_forget_refuses_an_online_worker_and_drops_a_departed_ones_settings() -> None:
    scheduler = farm_with([*base_events(), setting("ws-ana", {"enabled": False})])
    with pytest.raises(Conflict, match="stop it first"):
        scheduler.forget_worker("ws-ana")
    journal.replay(scheduler, iter([["unregister", NOON, "w-a"], ["worker-forget", NOON,
                                                                  "ws-ana", ""]]))  # fmt: skip
    assert "ws-ana" not in scheduler.worker_settings
    assert all(w.name != "ws-ana" for w in scheduler.workers.values())
    with pytest.raises(NotFound):
        scheduler.check_worker_name("ws-ana")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"enabled": "no"}, "'enabled' must be true or false"),
        ({"schedule": {"spec": "someday 10:00-11:00", "timezone": "UTC"}}, "unknown day"),
        ({"schedule": {"spec": "daily 10:00-11:00", "timezone": "Nowhere/Land"}}, "time zone"),
        ({"colour": "red"}, "unknown worker setting"),
    ],
)
def test_bad_settings_are_refused_whole(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(Exception, match=reason):
        workerset.check_changes(changes)


def test_a_retry_does_not_wait_for_a_disabled_worker() -> None:
    """A retry waits for an idle worker that has not failed it, but not for one that is
    disabled: that one would never take it."""
    events = [*base_events()[:2],
              ["submit", NOON, "j2", [[{}, []]], "", "python", 0, [], 3, "", {}, None]]  # fmt: skip
    scheduler = farm_with(events)
    [task] = scheduler.lease("w-b", 1, NOON)
    scheduler.fail("w-b", task.id, "boom", "", NOON)
    journal.replay(scheduler, iter([setting("ws-ana", {"enabled": False})]))
    assert [t.id for t in scheduler.lease("w-b", 1, NOON)] == [task.id]


def test_the_schedule_timer_wakes_at_a_schedules_start_and_gives_back_at_its_end() -> None:
    book: dict[str, workerset.WorkerSettings] = {}
    nights = {**NIGHTS, "give_back": True}
    workerset.apply(book, "ws-ana", workerset.check_changes({"schedule": nights}), "admin")
    seen: dict[str, bool] = {}
    evening = datetime(2026, 3, 3, 19, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    morning = datetime(2026, 3, 4, 8, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()

    first = workerset.tick(book, NOON, seen, lambda name: True)
    assert (first.flipped, first.give_back, first.at) == (False, ["ws-ana"], evening)
    assert workerset.tick(book, evening - 1, seen, lambda name: True).at == evening
    woke = workerset.tick(book, evening, seen, lambda name: True)
    assert (woke.flipped, woke.give_back, woke.at) == (True, [], morning)
    slept = workerset.tick(book, morning, seen, lambda name: False)  # holds nothing
    assert (slept.flipped, slept.give_back) == (True, [])
    workerset.apply(book, "ws-ana", {"schedule": None}, "admin")
    cleared = workerset.tick(book, morning, seen, lambda name: True)
    assert (cleared.flipped, cleared.give_back, cleared.at, seen) == (False, [], None, {})
