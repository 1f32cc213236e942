"""A cancel is delivered into a task once: a second one does not break into the job's
own cleanup, and a warm Blender whose stop was cut short closes without an error."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

import buildcat
from buildcat.blender import BPY, BlenderInstall
from buildcat.jobs.blender import WarmBlender
from tests.conftest import Farm, wait_for


@pytest.fixture
def task_farm(farm: Farm) -> Farm:
    shutil.copy(Path(__file__).parent / "task_jobs.py", farm.root / "task_jobs.py")
    return farm


def test_a_second_cancel_does_not_break_into_the_cleanup(task_farm: Farm) -> None:
    task_farm.start_worker("--no-blender", "--slots", "1")
    client = task_farm.client()
    job = client.submit_tasks(
        [{"payload": {"function": "task_jobs:slow_cleanup", "args": ["twice"]}}],
        max_attempts=1,
    )
    gates = task_farm.root / "gates"
    wait_for((gates / "twice.started").exists)
    child = int((gates / "twice.started").read_text())
    os.kill(child, signal.SIGUSR1)  # what the worker sends on a cancel
    wait_for((gates / "twice.cleaning").exists)
    os.kill(child, signal.SIGUSR1)  # a second notice of the same cancel
    (gates / "twice.go").write_text("go")
    wait_for((gates / "twice.cleaned").exists, timeout=15)  # the cleanup ran to its end
    with pytest.raises(buildcat.JobFailed, match="TaskCancelled"):
        job.wait(30)  # signalled behind the server's back: that attempt failed
    # The same child goes on to the next task.
    assert client.map("task_jobs:echo", ["after"], max_attempts=1).results() == ["after"]


def test_closing_a_warm_blender_whose_input_is_closed_prints_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Stands in for Blender: says it is ready, then waits (SIGINT ends it).
    fake = tmp_path / "fake-python"
    fake.write_text(
        f"#!{sys.executable}\nimport time\nprint('BUILDCAT-READY', flush=True)\ntime.sleep(60)\n"
    )
    fake.chmod(0o755)
    warm = WarmBlender(BlenderInstall(kind=BPY, path=str(fake), version="4.5.0"))
    assert warm.process.stdout is not None and warm.process.stdin is not None
    assert warm.process.stdout.readline().strip() == "BUILDCAT-READY"
    warm.process.stdin.close()  # what a stop() cut short by a second cancel left
    warm.close()  # as _reap_when_idle does, about 20 s later
    assert not warm.alive()
    assert "I/O operation on closed file" not in capfd.readouterr().err
