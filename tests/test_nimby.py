"""NIMBY (farm worker --nimby): the rule for when a desktop is in use, and the server
leasing nothing to a worker that says its machine is in use."""

from __future__ import annotations

from buildcat.worker import nimby
from tests.conftest import Farm, wait_for

WHO = """\
ana      tty2         2026-12-03 08:01
ben      pts/3        2026-12-03 08:02 (10.0.0.7)
carl     pts/1        2026-12-03 08:03 (:0)
dora     console      Dec  3 08:04
"""


def test_console_users_are_those_at_the_machine_not_remote_logins() -> None:
    assert nimby.console_users(WHO) == ["ana", "carl", "dora"]
    assert nimby.console_users("ben pts/3 2026-12-03 08:02 (10.0.0.7)\n") == []
    assert nimby.console_users("") == []


def test_the_machine_is_in_use_with_a_console_user_or_a_busy_cpu() -> None:
    assert nimby.reason(["ana", "ana"], 0.0, 8, 0) == "ana logged in at the console"
    assert nimby.reason([], 7.0, 8, 0).startswith("the CPU is busy with other programs")
    assert nimby.reason([], 5.0, 8, 0) == ""  # under three quarters of the cores
    assert nimby.reason([], 7.0, 8, 1) == ""  # the load of its own task
    assert nimby.reason([], None, 8, 0) == ""  # no load average to read (Windows)
    assert nimby.reason(["ana"], 7.0, 8, 1) == "ana logged in at the console"


def test_a_worker_that_says_its_machine_is_in_use_is_leased_nothing(jobs_farm: Farm) -> None:
    """A worker speaking the HTTP API as `farm worker --nimby` does."""
    client = jobs_farm.client()
    worker = client.request("POST", "/workers", {"name": "ws-ana", "capabilities": {}})
    base = f"/workers/{worker['id']}"
    client.request("POST", f"{base}/report", {"nimby": "ana logged in at the console"})
    job = client.map("farm_jobs:square", [2])
    assert client.request("POST", f"{base}/lease", {"want": 1})["tasks"] == []
    [view] = client.workers()
    assert view["status"] == "asleep" and view["nimby"] == "ana logged in at the console"
    waiting = wait_for(lambda: job.status().get("waiting"))
    assert "in use by someone (--nimby) (ws-ana)" in waiting
    client.request("POST", f"{base}/report", {"nimby": ""})
    [task] = client.request("POST", f"{base}/lease", {"want": 1})["tasks"]
    assert task["job"] == job.id
    assert client.workers()[0]["status"] == "running"


def test_a_nimby_worker_takes_work_on_a_free_machine_and_says_why_it_stays_away(
    jobs_farm: Farm,
) -> None:
    """Whatever this machine's state (a busy test run keeps the CPU busy), the worker
    either runs the job or is listed asleep with the reason; never neither."""
    jobs_farm.start_worker("--no-blender", "--nimby", name="ws-ana")
    client = jobs_farm.client()
    job = client.map("farm_jobs:square", [3])

    def outcome() -> str:
        if job.status()["state"] == "done":
            return "ran"
        listed = [w for w in client.workers() if w["name"] == "ws-ana"]
        return "away" if listed and listed[0]["nimby"] else ""

    if wait_for(outcome) == "ran":
        assert job.results() == [9]
    else:
        [view] = client.workers()
        assert view["status"] == "asleep" and "CPU is busy" in view["nimby"]
