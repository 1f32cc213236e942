"""A failure that is the job's own fault (a camera or scene the file lacks, a .blend that is
not one, a Python job that raises buildcat.JobFault) fails the job at its first attempt with
that reason: no retries, no worker blocked or counted as failing, healthy workers go on."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import buildcat
from buildcat.jobs import blender as blender_jobs
from buildcat.server import journal
from buildcat.server.scheduler import JobState, Scheduler, TaskSpec, TaskState
from tests.blender_support import BINARY, BOTH_BLENDERS, needs_binary
from tests.conftest import Farm, wait_for

#: A job fault in a job given three attempts: it must take one.
ATTEMPTS = 3


@pytest.fixture
def blender_farm(farm: Farm, scene_file: Path) -> Iterator[Farm]:
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "spin.blend")
    yield farm


def _failed_at_once(farm: Farm, job: buildcat.Job, reason: str) -> dict:
    """The job failed with ``reason`` after one attempt, and no worker took the blame."""
    with pytest.raises(buildcat.JobFailed, match=reason) as failed:
        job.wait(timeout=120)
    assert "the job's own fault, not retried" in failed.value.error
    client = farm.client()
    status = job.status()
    assert status["blocked"] == []
    tasks = job.tasks()
    assert sum(task["failures"] for task in tasks) == 1
    (failed_task,) = [task for task in tasks if task["state"] == "failed"]
    assert failed_task["attempts"] == 1  # (another task may have been leased meanwhile)
    assert [w["tasks_failed"] for w in client.workers()] == [0] * len(client.workers())
    return status


def _submit_unchecked(
    farm: Farm, frames: list[int], settings: dict[str, Any], output: str
) -> buildcat.Job:
    """A render submitted as a client that does not read the .blend would (the HTTP API, a
    script building its own tasks): the worker's check is then the only one."""
    tasks = blender_jobs.plan_render("shots/spin.blend", frames, output=output, settings=settings)
    return farm.client().submit_tasks(
        tasks, kind="blender", requires=["blender>=3.4"], max_attempts=ATTEMPTS
    )


def _healthy_job_still_runs(farm: Farm) -> None:
    job = farm.client().render("shots/spin.blend", "1", resolution=(16, 16), samples=1)
    job.wait(timeout=120)


@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_a_camera_the_scene_lacks_fails_the_job_at_its_first_attempt(
    blender_farm: Farm, blender: str
) -> None:
    blender_farm.start_worker("--blender", blender)
    farm = blender_farm.client()
    small = {"resolution": [16, 16], "samples": 1}
    with pytest.raises(buildcat.FarmError, match="no camera named 'NoSuchCamera'"):
        farm.render("shots/spin.blend", "1-3", camera="NoSuchCamera", output="cam/f_####")
    assert farm.jobs() == []  # found at submit; what gets past a client is the worker's:
    job = _submit_unchecked(
        blender_farm, [1, 2, 3], {"camera": "NoSuchCamera", **small}, "cam/f_####"
    )
    _failed_at_once(blender_farm, job, "no camera named 'NoSuchCamera'")
    # Blender's reason, not a walk through buildcat's code.
    assert job.tasks()[0]["traceback"] == ""
    assert [t["state"] for t in job.tasks()] == ["failed", "cancelled", "cancelled"]
    _healthy_job_still_runs(blender_farm)


@needs_binary
def test_a_scene_the_file_lacks_fails_the_job_at_once_on_a_blender_per_task(
    blender_farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDCAT_BLENDER_WARM", "0")  # the binary's own -S, then override.py
    blender_farm.start_worker("--blender", BINARY or "blender")
    farm = blender_farm.client()
    with pytest.raises(buildcat.FarmError, match="no scene named 'Nope' in this file"):
        farm.render("shots/spin.blend", "1", scene_name="Nope")
    small = {"resolution": [16, 16], "samples": 1}
    job = _submit_unchecked(blender_farm, [1], {"scene": "Nope", **small}, "nope/f_####")
    _failed_at_once(blender_farm, job, "no scene named 'Nope' in this file")
    _healthy_job_still_runs(blender_farm)


@needs_binary
def test_a_blend_that_is_no_longer_a_blend_fails_the_job_at_once(blender_farm: Farm) -> None:
    shutil.copy(blender_farm.root / "shots" / "spin.blend", blender_farm.root / "shots" / "b.blend")
    farm = blender_farm.client()
    job = farm.render("shots/b.blend", "1-2", max_attempts=ATTEMPTS)  # checked at submit: fine
    (blender_farm.root / "shots" / "b.blend").write_text("saved over by a text editor")
    blender_farm.start_worker("--name", "w1")
    blender_farm.start_worker("--name", "w2")
    _failed_at_once(blender_farm, job, r"shots/b.blend is not a \.blend file")
    _healthy_job_still_runs(blender_farm)


FAULTY = """
import buildcat

def load(name):
    raise buildcat.JobFault(f"no input called {name!r}")
"""


def test_a_python_job_that_raises_job_fault_fails_at_once(farm: Farm) -> None:
    (farm.root / "faulty.py").write_text(FAULTY)
    farm.start_worker()
    job = farm.client().map("faulty:load", ["plates"], max_attempts=ATTEMPTS)
    _failed_at_once(farm, job, "JobFault: no input called 'plates'")
    assert "faulty.py" in job.tasks()[0]["traceback"]  # a job's own code keeps its traceback


def test_a_job_fault_outlives_a_server_restart(farm: Farm) -> None:
    (farm.root / "faulty.py").write_text(FAULTY)
    worker = farm.start_worker()
    job = farm.client().map("faulty:load", ["plates"], max_attempts=ATTEMPTS)
    with pytest.raises(buildcat.JobFailed):
        job.wait(timeout=60)
    from buildcat import launch

    launch.stop(worker)
    launch.stop(farm.server)  # type: ignore[arg-type]
    farm.start_server(port=farm.port)
    client = farm.client()
    wait_for(lambda: client.ping())
    status = client.job(job.id).status()
    assert status["state"] == "failed"
    assert "the job's own fault, not retried" in status["error"]
    assert status["blocked"] == []
    assert client.job(job.id).tasks()[0]["failures"] == 1


def test_scheduler_fails_the_job_at_once_on_a_job_fault_and_blames_no_worker() -> None:
    farm = Scheduler(default_max_attempts=ATTEMPTS, block_after=1)
    farm.register("w", 1, {}, 0, worker_id="w")
    job = farm.submit([TaskSpec({"n": n}) for n in range(3)], 0, job_id="j")
    (task,) = farm.lease("w", 1, 1)
    assert farm.fail("w", task.id, "no camera named 'X'", "", 2, job_fault=True)
    assert job.state is JobState.FAILED
    assert job.error == "task j.0 failed (the job's own fault, not retried): no camera named 'X'"
    assert [t.state for t in job.tasks] == [TaskState.FAILED, *[TaskState.CANCELLED] * 2]
    assert job.blocked == set() and job.failures_by_worker == {}
    assert farm.workers["w"].tasks_failed == 0 and task.failed_on == set()


def test_a_journaled_job_fault_replays_as_one_and_old_fail_records_still_retry() -> None:
    events = [
        ["register", 0, "w", "w", 1, {}, {}],
        ["submit", 0, "j", [[{"n": 0}, []]], "", "python", 0, [], ATTEMPTS, "", {}, None],
        ["lease", 1, "w", ["j.0"]],
        ["fail", 2, "w", "j.0", "boom", "", "", 1.0, 1.0, True],
        ["submit", 3, "k", [[{"n": 0}, []]], "", "python", 0, [], ATTEMPTS, "", {}, None],
        ["lease", 4, "w", ["k.0"]],
        ["fail", 5, "w", "k.0", "flaky", "", ""],  # a journal from before timings and faults
    ]
    farm = Scheduler()
    assert journal.replay(farm, iter(events)) == len(events)
    assert farm.jobs["j"].state is JobState.FAILED
    assert farm.jobs["k"].state is JobState.RUNNING or farm.jobs["k"].state is JobState.QUEUED
    assert farm.jobs["k"].tasks[0].state is TaskState.QUEUED  # retried, as before
    assert farm.workers["w"].tasks_failed == 1  # only the ordinary failure counts


@pytest.mark.parametrize("warm", ["1", "0"], ids=["warm", "per-task"])
@needs_binary
def test_a_render_error_shows_blenders_reason_and_no_frames_of_buildcat(
    blender_farm: Farm, warm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDCAT_BLENDER_WARM", warm)
    damaged = blender_farm.root / "shots" / "damaged.blend"
    whole = (blender_farm.root / "shots" / "spin.blend").read_bytes()
    damaged.write_bytes(whole[:2000])
    with pytest.raises(buildcat.FarmError, match="could not read"):  # found at submit
        blender_farm.client().render("shots/damaged.blend", "1")
    damaged.write_bytes(whole)
    job = blender_farm.client().render("shots/damaged.blend", "1", max_attempts=1)
    damaged.write_bytes(whole[:2000])  # damaged after the submit: the worker finds it
    blender_farm.start_worker()
    with pytest.raises(buildcat.JobFailed, match="Failed to read blend file") as failed:
        job.wait(timeout=120)
    assert "buildcat/" not in failed.value.error and "Traceback" not in failed.value.error
    assert failed.value.traceback == ""
    assert job.tasks()[0]["traceback"] == ""
