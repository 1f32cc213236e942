"""Results never cross between tasks: progress values a task cannot send, a bad argument
to ``buildcat.progress()`` and a frame written out of turn all stay inside their own
task, and the worker lives on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import buildcat
from buildcat.jobs.context import checked_progress
from tests.conftest import Farm


@pytest.fixture
def task_farm(farm: Farm) -> Farm:
    shutil.copy(Path(__file__).parent / "task_jobs.py", farm.root / "task_jobs.py")
    return farm


def test_mixed_jobs_through_a_child_that_misbehaved_each_get_their_own_results(
    task_farm: Farm,
) -> None:
    worker = task_farm.start_worker("--no-blender", "--slots", "1")
    client = task_farm.client()
    plan = [
        ("path_message", ["A"]),
        ("echo", ["B1", "B2", "B3"]),
        ("numpy_fraction", ["C"]),
        ("echo", ["D1", "D2"]),
        ("nan_fraction", ["E"]),
        ("echo", ["F1", "F2", "F3"]),
        ("surrogate_text", ["G"]),
        ("echo", ["H1", "H2"]),
        ("forge_result", ["I"]),
        ("echo", ["J1", "J2", "J3"]),
    ]
    jobs = []
    for function, items in plan:
        if function == "forge_result":
            job = client.submit_tasks(
                [{"payload": {"function": "task_jobs:forge_result", "args": [item, "forged"]}}
                 for item in items],
                max_attempts=1,
            )  # fmt: skip
        else:
            job = client.map(f"task_jobs:{function}", items, max_attempts=1)
        jobs.append((job, items))
    text_job = client.map("task_jobs:text_fraction", ["K"], max_attempts=1)
    after = client.map("task_jobs:echo", ["L1", "L2", "L3"], max_attempts=1)
    jobs.append((after, ["L1", "L2", "L3"]))

    for job, items in jobs:
        job.wait(60)
        assert job.results() == items  # every result is its own task's
    with pytest.raises(buildcat.JobFailed) as failed:
        text_job.wait(60)
    assert "TypeError: buildcat.progress() takes a number from 0 to 1" in failed.value.error
    assert "str '50%'" in failed.value.error
    assert 'buildcat.progress("50%")' in failed.value.traceback  # the user's own line

    assert worker.poll() is None  # the worker lives on
    [online] = [w for w in client.workers() if w["name"] == "worker-1"]
    assert online["state"] != "offline"
    # The forged frame was caught: that child replaced, the task run again, once.
    worker_log = task_farm.log_text("worker-1")
    assert worker_log.count("running it again") == 1, worker_log[-3000:]
    assert "sent a 'result' frame for task 'J999.0'" in worker_log
    nan_job = jobs[4][0]
    log = client.log(nan_job.tasks()[0]["id"])
    assert "buildcat: warning: progress nan is not a number from 0 to 1; not reported" in log
    surrogate_log = client.log(jobs[6][0].tasks()[0]["id"])
    assert "printed \ufffd too" in surrogate_log or "printed ? too" in surrogate_log


def test_progress_values_are_coerced_or_refused() -> None:
    numpy = pytest.importorskip("numpy")
    assert checked_progress(numpy.float32(0.25), Path("x")) == (0.25, "x")
    assert checked_progress(numpy.int64(1)) == (1.0, "")
    assert checked_progress(7, "over") == (1.0, "over")
    assert checked_progress(-1.0, "under") == (0.0, "under")
    assert checked_progress(0.5, "a \udcff b") == (0.5, "a ? b")
    assert checked_progress(float("nan")) is None
    assert checked_progress(0.5, "x" * 10_000)[1] == "x" * 200  # type: ignore[index]
    for bad in ("50%", b"0.5", None, [0.5], {"a": 1}):
        with pytest.raises(TypeError, match=r"buildcat\.progress"):
            checked_progress(bad)
