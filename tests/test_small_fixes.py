"""Smaller faults seen beside the adversarial tests: submit priority bounds, retry and the
blocklist, unblocking a worker the job never blocked, a negative priority on the command
line, and the owner of a job submitted without $USER."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys

import pytest

import buildcat
from tests.conftest import Farm, wait_for


def test_submit_priority_is_bounded_like_the_priority_route(farm: Farm) -> None:
    client = farm.client()
    for priority in (1_000_001, -1_000_001, 2**63 - 1):
        with pytest.raises(buildcat.RequestRejected) as refused:
            client.submit_tasks([{"payload": {"function": "m:f"}}], priority=priority)
        assert refused.value.status == 400
        assert "'priority' must be a whole number between -1000000 and 1000000" in str(
            refused.value
        )
    assert client.jobs() == []
    for priority in (1_000_000, -1_000_000):
        job = client.submit_tasks([{"payload": {"function": "m:f"}}], priority=priority)
        assert job.status()["priority"] == priority


def test_farm_retry_clears_the_blocklist_and_says_so(jobs_farm: Farm) -> None:
    """The only worker failed the job three times: blocked, and the job failed. A retry that
    kept the blocklist would queue tasks no worker may take."""
    jobs_farm.start_worker(name="broken")
    client = jobs_farm.client()
    job = client.submit_tasks(
        [{"payload": {"function": "farm_jobs:fails_on", "args": ["broken"]}}], max_attempts=3
    )
    wait_for(lambda: job.status()["state"] == "failed")
    assert job.status()["blocked"] == ["broken"]
    retried = jobs_farm.cli("retry", job.id)
    assert retried.returncode == 0, retried.stderr
    assert "blocklist cleared: broken may take it again" in retried.stdout
    # The worker takes it again (and fails it again, and is blocked again: that kind of job).

    def failed_by_broken() -> int:
        return sum(w["tasks_failed"] for w in client.workers() if w["name"] == "broken")

    wait_for(lambda: failed_by_broken() > 3)


def test_unblocking_a_worker_the_job_never_blocked_is_an_error(farm: Farm) -> None:
    job = farm.client().submit_tasks([{"payload": {"function": "m:f"}}])
    refused = farm.cli("unblock", job.id, "--worker", "nosuch")
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "worker 'nosuch' is not blocked from job" in lines[0]
    unblocked = farm.cli("unblock", job.id)  # all of them: none, and that is fine
    assert unblocked.returncode == 0, unblocked.stderr


def test_farm_priority_takes_a_negative_number(farm: Farm) -> None:
    job = farm.client().submit_tasks([{"payload": {"function": "m:f"}}])
    lowered = farm.cli("priority", job.id, "-5")
    assert lowered.returncode == 0, lowered.stderr
    assert f"{job.id} priority -5" in lowered.stdout
    assert job.status()["priority"] == -5
    too_low = farm.cli("priority", job.id, "-1000001")
    assert too_low.returncode != 0
    assert job.status()["priority"] == -5


def test_the_owner_is_the_os_login_name_when_user_is_unset(farm: Farm) -> None:
    """As under tmux, systemd or in a container: no $USER, no controlling terminal."""
    environment = {k: v for k, v in os.environ.items() if k not in ("USER", "LOGNAME")}
    script = (
        "import sys, buildcat\n"
        "client = buildcat.connect('127.0.0.1', int(sys.argv[1]), sys.argv[2])\n"
        "print(client.submit_tasks([{'payload': {'function': 'm:f'}}]).id)\n"
    )
    made = subprocess.run(
        [sys.executable, "-c", script, str(farm.port), str(farm.root)],
        capture_output=True,
        text=True,
        env=environment,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        timeout=60,
        check=True,
    )
    owner = farm.client().job(made.stdout.strip()).status()["owner"]
    assert owner == f"{pwd.getpwuid(os.getuid()).pw_name}@{socket.gethostname()}"
