"""Each role against each kind of route (401 without a credential, 403 with one that lacks
the right), who owns a job, and the history of who steered it, through restarts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from buildcat.cli.watching import history_line
from buildcat.server import journal
from buildcat.server.rights import Action, classify, refusal
from buildcat.server.scheduler import Scheduler
from tests.conftest import Farm, wait_for
from tests.people_support import add_token, admin, bearer, call, login, python_job
from tests.test_archive import kill_and_restart, snapshot_jobs

HERE = Path(__file__).parent


# ---- the rule alone ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "action", "job"),
    [
        ("GET", "/api/v1/jobs", Action.READ, ""),
        ("GET", "/api/v1/jobs/j1/tasks", Action.READ, ""),
        ("GET", "/api/v1/whoami", Action.READ, ""),
        ("GET", "/metrics", Action.READ, ""),
        ("POST", "/api/v1/jobs", Action.SUBMIT, ""),
        ("POST", "/api/v1/job-types/render/plan", Action.SUBMIT, ""),
        ("POST", "/api/v1/jobs/j1/cancel", Action.STEER, "j1"),
        ("POST", "/api/v1/jobs/j1/priority", Action.STEER, "j1"),
        ("POST", "/api/v1/jobs/j1/archive", Action.STEER, "j1"),
        ("DELETE", "/api/v1/jobs/j1", Action.STEER, "j1"),
        ("POST", "/api/v1/tasks/j1.3/requeue", Action.STEER, "j1"),
        ("POST", "/api/v1/workers", Action.WORKER, ""),
        ("POST", "/api/v1/workers/w-1/lease", Action.WORKER, ""),
        ("POST", "/api/v1/workers/w-1/report", Action.WORKER, ""),
        ("DELETE", "/api/v1/workers/w-1", Action.WORKER, ""),
        ("POST", "/api/v1/workers/w-1/drain", Action.ADMIN, ""),
        ("GET", "/api/v1/tokens", Action.ADMIN, ""),
        ("POST", "/api/v1/tokens", Action.ADMIN, ""),
        ("GET", "/api/v1/dashboard", Action.ADMIN, ""),
        ("GET", "/api/v1/notices", Action.ADMIN, ""),
        ("GET", "/api/v1/anything-new", Action.ADMIN, ""),
    ],
)
def test_every_route_has_one_kind_of_action(
    method: str, path: str, action: Action, job: str
) -> None:
    found = classify(method, path)
    assert (found.action, found.job) == (action, job)


def test_the_refusals_name_the_role_and_the_owner() -> None:
    steer = classify("POST", "/api/v1/jobs/j1/cancel")
    assert refusal("artist", "ana", False, steer, "ana") == ""
    assert refusal("artist", "ana", False, steer, "bo") == (
        "job j1 belongs to bo: an artist steers only their own jobs"
    )
    assert refusal("admin", "root", False, steer, "bo") == ""
    assert refusal("artist", "ana", False, steer, None) == ""  # no such job: the route says
    assert refusal("viewer", "vi", False, steer, "vi").startswith("vi is a viewer: a viewer may")
    lease = classify("POST", "/api/v1/workers/w-1/lease")
    assert "farm secret" in refusal("admin", "root", False, lease, None)
    assert refusal("admin", "admin", True, lease, None) == ""


def test_older_journals_without_who_still_replay() -> None:
    events: list[list[Any]] = [
        ["submit", 1.0, "a", [[{"n": 0}, []]], "", "python", 0, [], 3, "", {}, None, "", ""],
        ["pause", 2.0, "a", None],  # before named tokens: four fields
        ["priority", 3.0, "a", 5],  # and three
        ["resume", 4.0, "a"],  # older still
        ["cancel", 5.0, "a", None, "ana"],  # now: who did it
        ["retry", 6.0, "a", None, "bo"],
        ["priority", 7.0, "a", 9, "bo"],
    ]  # fmt: skip
    replayed = Scheduler()
    assert journal.replay(replayed, iter(events)) == len(events)
    job = replayed.jobs["a"]
    assert job.priority == 9 and str(job.state) == "queued"
    assert [(e["action"], e["by"]) for e in job.history] == [
        ("pause", ""), ("priority", ""), ("resume", ""), ("cancel", "ana"), ("retry", "bo"),
        ("priority", "bo"),
    ]  # fmt: skip
    assert job.history[-1] == {"at": 7.0, "action": "priority", "by": "bo", "priority": 9}
    now = time.mktime((2026, 1, 2, 14, 2, 0, 0, 0, -1))
    assert history_line(job.history[3] | {"at": now}, now) == "cancelled by ana, 14:02"
    assert history_line({"action": "pause", "by": "", "at": now}, now + 86400 * 3).startswith(
        "paused, 2026-01-02"
    )


# ---- a real farm -------------------------------------------------------------------------------


def test_each_role_against_each_kind_of_route(jobs_farm: Farm) -> None:
    farm = jobs_farm
    people = {role: add_token(farm, name, role) for name, role in
              [("vi", "viewer"), ("ana", "artist"), ("root", "admin")]}  # fmt: skip
    credentials = {
        "viewer": bearer(people["viewer"]),
        "artist": bearer(people["artist"]),
        "admin": bearer(people["admin"]),
        "secret": admin(farm),
    }
    status, own = call(farm, "POST", "/jobs", credentials["artist"], python_job(owner="bo"))
    assert status == 201
    status, other = call(farm, "POST", "/jobs", admin(farm), python_job(owner="bo"))
    assert status == 201
    own_id, other_id = own["id"], other["id"]

    kinds: dict[str, tuple[str, str, Any]] = {
        "list": ("GET", "/jobs", None),
        "whoami": ("GET", "/whoami", None),
        "submit": ("POST", "/jobs", python_job()),
        "steer own": ("POST", f"/jobs/{own_id}/priority", {"priority": 3}),
        "steer other's": ("POST", f"/jobs/{other_id}/priority", {"priority": 4}),
        "workers action": ("POST", "/workers/w-nobody/drain", {}),
        "tokens": ("GET", "/tokens", None),
        "worker protocol": ("POST", "/workers", {"name": "sneaky"}),
    }
    expected = {
        #                  list whoami submit own other workers tokens protocol
        "viewer": (200, 200, 403, 403, 403, 403, 403, 403),
        "artist": (200, 200, 201, 200, 403, 403, 403, 403),
        "admin": (200, 200, 201, 200, 200, 404, 200, 403),
        "secret": (200, 200, 201, 200, 200, 404, 200, 201),
    }
    for role, statuses in expected.items():
        for (kind, (method, path, body)), want in zip(kinds.items(), statuses, strict=True):
            status, reply = call(farm, method, path, credentials[role], body)
            # 404: no worker steering route yet, or no such worker: past the rights check.
            assert status == want, (role, kind, status, reply)
            if status == 403:
                assert set(reply) == {"error"}, reply
                if role in ("viewer", "artist") and kind != "worker protocol":
                    assert f"is a{'n' if role == 'artist' else ''} {role}" in reply["error"] or (
                        "belongs to bo" in reply["error"]
                    ), reply
    assert (
        "job " + other_id + " belongs to bo"
        in call(farm, "POST", f"/jobs/{other_id}/cancel", credentials["artist"])[1]["error"]
    )
    assert "farm secret" in call(farm, "POST", "/workers", credentials["admin"], {})[1]["error"]

    # Nobody, a wrong token and a token that looks like one: 401, nothing read.
    for nobody in ({}, bearer("bc_" + "x" * 43), bearer("y" * 43)):
        for method, path, body in kinds.values():
            status, reply = call(farm, method, path, nobody, body)
            assert status == 401 and "missing or wrong farm secret" in reply["error"], path

    # Dashboard cookies do what the role that bought them may, on the dashboard's routes.
    cookies = {
        "viewer": login(farm, f"token={people['viewer']}"),
        "artist": login(farm, f"token={people['artist']}"),
        "key": login(farm, "key=" + farm.cli("dashboard").stdout.strip().split("key=")[1]),
    }
    cookie_expected = {
        "viewer": (200, 200, 401, 403, 403, 403, 401, 401),
        "artist": (200, 200, 401, 200, 403, 403, 401, 401),
        "key": (200, 200, 401, 200, 200, 404, 401, 401),
    }
    for who, statuses in cookie_expected.items():
        for (kind, (method, path, body)), want in zip(kinds.items(), statuses, strict=True):
            status, reply = call(farm, method, path, cookies[who], body)
            assert status == want, (who, kind, status, reply)
    assert call(farm, "GET", "/whoami", cookies["artist"])[1] == {
        "name": "ana", "role": "artist", "via": "dashboard",
    }  # fmt: skip
    assert call(farm, "GET", "/whoami", cookies["key"])[1]["role"] == "admin"
    # Without the dashboard's header a cookie steers nothing (a cross-site form).
    plain = {"Cookie": cookies["artist"]["Cookie"]}
    assert call(farm, "POST", f"/jobs/{own_id}/pause", plain)[0] == 401

    # What was refused changed nothing: the other's job as the admin left it.
    assert call(farm, "GET", f"/jobs/{other_id}", admin(farm))[1]["priority"] == 4


def test_a_job_is_its_tokens_and_the_secret_names_its_owner(jobs_farm: Farm) -> None:
    farm = jobs_farm
    ana = bearer(add_token(farm, "ana", "artist"))
    root = bearer(add_token(farm, "root", "admin"))
    for headers, owner in ((ana, "ana"), (root, "root"), (admin(farm), "bo@studio")):
        status, reply = call(farm, "POST", "/jobs", headers, python_job(owner="bo@studio"))
        assert status == 201
        assert call(farm, "GET", f"/jobs/{reply['id']}", admin(farm))[1]["owner"] == owner
    # The CLI with a token: the job is the token's, whatever $USER says.
    token = ana["Authorization"].split()[1]
    submitted = farm.cli("submit", "python", "farm_jobs:square", "2", FARM_TOKEN=token, USER="x")
    assert submitted.returncode == 0, submitted.stderr
    assert farm.client().job(submitted.stdout.strip()).status()["owner"] == "ana"
    # A name the secret gives for its person must be one.
    status, reply = call(farm, "GET", "/whoami", {**admin(farm), "X-Buildcat-User": "a b"})
    assert status == 400 and "X-Buildcat-User" in reply["error"]
    assert call(farm, "GET", "/whoami", {**admin(farm), "X-Buildcat-User": "carol"})[1] == {
        "name": "carol", "role": "admin", "via": "secret",
    }  # fmt: skip


def user_name(farm: Farm, **env: str) -> str:
    """The name ``farm`` sends for its person, as a CLI process with ``env`` works it out."""
    code = "from buildcat.client import _user_name; print(_user_name())"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, **env}, stdin=subprocess.DEVNULL,
    ).stdout.strip()  # fmt: skip


@pytest.mark.parametrize("farm", [("--snapshot-every", "10")], indirect=True)
def test_the_history_says_who_steered_through_restarts_and_snapshots(farm: Farm) -> None:
    shutil.copy(HERE / "farm_jobs.py", farm.root / "farm_jobs.py")
    token = add_token(farm, "ana", "artist")
    ana = bearer(token)
    carol = {**admin(farm), "X-Buildcat-User": "carol"}
    own = call(farm, "POST", "/jobs", ana, python_job())[1]["id"]
    other = call(farm, "POST", "/jobs", admin(farm), python_job(owner="bo"))[1]["id"]

    # The artist's own job, steered from the CLI and the dashboard.
    cancelled = farm.cli("cancel", own, FARM_TOKEN=token)
    assert cancelled.returncode == 0, cancelled.stderr
    refused = farm.cli("cancel", other, FARM_TOKEN=token)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert f"job {other} belongs to bo" in refused.stderr
    cookie = login(farm, f"token={token}")
    assert call(farm, "POST", f"/jobs/{own}/archive", cookie)[0] == 200
    assert call(farm, "POST", f"/jobs/{own}/unarchive", ana)[0] == 200
    assert call(farm, "POST", f"/tasks/{own}.0/requeue", cookie)[0] == 200
    # The other's, by an admin with the secret: the person it names, else the CLI's $USER.
    assert call(farm, "POST", f"/jobs/{other}/pause", carol)[0] == 200
    assert call(farm, "POST", f"/jobs/{other}/priority", carol, {"priority": 7})[0] == 200
    assert call(farm, "POST", f"/jobs/{other}/resume", admin(farm))[0] == 200
    assert farm.cli("cancel", other, USER="dee").returncode == 0
    cli_user = user_name(farm, USER="dee")

    def history(job_id: str) -> list[tuple[str, str]]:
        view = call(farm, "GET", f"/jobs/{job_id}", admin(farm))[1]
        return [(entry["action"], entry["by"]) for entry in view["history"]]

    own_history = [("cancel", "ana"), ("archive", "ana"), ("unarchive", "ana"),
                   ("requeue-task", "ana")]  # fmt: skip
    other_history = [("pause", "carol"), ("priority", "carol"), ("resume", "admin"),
                     ("cancel", cli_user)]  # fmt: skip
    assert history(own) == own_history and history(other) == other_history
    shown = farm.cli("status", other, FARM_TOKEN=token)  # a person reads it as they would
    assert shown.returncode == 0, shown.stderr
    today = time.strftime("%H:%M")  # the minute may turn meanwhile: the name is what counts
    assert "  paused by carol, " in shown.stdout and "  priority set to 7 by carol" in shown.stdout
    assert f"  cancelled by {cli_user}, " in shown.stdout, (shown.stdout, today)

    # SIGKILL: the journal (and the snapshot written meanwhile) keep who did what.
    wait_for(lambda: "written (" in farm.log_text("server"))
    kept = snapshot_jobs(farm)
    assert ("cancel", "ana") in [(e["action"], e["by"]) for e in kept[own]["history"]]
    kill_and_restart(farm, "--snapshot-every", "10")
    assert history(own) == own_history and history(other) == other_history
    assert call(farm, "GET", "/whoami", ana)[1]["name"] == "ana"  # the token outlived it too

    # A deleted job is gone with its history: the server's log says who deleted it.
    assert call(farm, "POST", f"/jobs/{own}/cancel", ana)[0] == 200
    assert call(farm, "DELETE", f"/jobs/{own}", cookie)[0] == 200
    wait_for(lambda: f"job {own} deleted by ana" in farm.log_text("server"))
