"""Each task runs in a session of its own, and what it starts ends with it: a daemon
that forked twice and detached is ended when its task is done, cancelled, killed or
crashed, and the slot it held runs the next task."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import buildcat
from buildcat.worker.processes import alive
from tests.conftest import Farm, wait_for


@pytest.fixture
def task_farm(farm: Farm) -> Farm:
    shutil.copy(Path(__file__).parent / "task_jobs.py", farm.root / "task_jobs.py")
    return farm


def _daemon_pid(farm: Farm, name: str) -> int:
    path = farm.root / name
    wait_for(lambda: path.exists() and path.read_text().strip())
    return int(path.read_text())


def _slot_is_free(client: buildcat.Client) -> None:
    # One slot: the next job runs only once the slot the daemon's task held is free.
    assert client.map("task_jobs:echo", ["next"], max_attempts=1).results() == ["next"]


@pytest.mark.parametrize("then", ["return", "crash"])
def test_a_daemon_left_by_a_finished_task_ends_with_it(task_farm: Farm, then: str) -> None:
    worker = task_farm.start_worker("--no-blender", "--slots", "1")
    client = task_farm.client()
    job = client.submit_tasks(
        [{"payload": {"function": "task_jobs:leave_daemon", "args": ["daemon.pid", then]}}],
        max_attempts=1,
    )
    if then == "return":
        assert job.results() == ["return"]
    else:
        with pytest.raises(buildcat.JobFailed, match="exited with code 3"):
            job.wait(60)
    daemon = _daemon_pid(task_farm, "daemon.pid")
    wait_for(lambda: not alive(daemon), timeout=30)
    if then == "return":
        log = client.log(job.tasks()[0]["id"])
        assert f"buildcat: ended 1 process(es) the task left running: {daemon}" in log
    _slot_is_free(client)
    assert worker.poll() is None


@pytest.mark.parametrize("then", ["wait", "hang"])
def test_a_cancel_or_kill_ends_the_daemon_and_frees_the_slot(task_farm: Farm, then: str) -> None:
    # "hang" ignores the cancel: the worker kills its process after --cancel-grace.
    worker = task_farm.start_worker("--no-blender", "--slots", "1", "--cancel-grace", "1")
    client = task_farm.client()
    job = client.submit_tasks(
        [{"payload": {"function": "task_jobs:leave_daemon", "args": ["daemon.pid", then]}}],
        max_attempts=1,
    )
    daemon = _daemon_pid(task_farm, "daemon.pid")
    job.cancel()
    wait_for(lambda: not alive(daemon), timeout=30)
    _slot_is_free(client)
    assert worker.poll() is None
    if then == "hang":
        assert "ignored the cancel; killing its process" in task_farm.log_text("worker-1")
