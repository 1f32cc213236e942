"""Task logs: a log file that cannot be written never fails its task, and each attempt's
part of a log is capped (first and last halves kept, the cut said in the log)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from buildcat.errors import FarmError
from buildcat.worker.tasklog import TaskLog, max_log_bytes, parse_size
from tests.conftest import Farm, wait_for


@pytest.fixture
def task_farm(farm: Farm) -> Farm:
    shutil.copy(Path(__file__).parent / "task_jobs.py", farm.root / "task_jobs.py")
    return farm


def test_a_task_log_that_cannot_be_written_never_fails_the_task(task_farm: Farm) -> None:
    client = task_farm.client()
    job = client.map("task_jobs:chatter", [3000, 3000], max_attempts=1)  # no worker yet
    # The first task's log file is a full disk: every write to it fails with ENOSPC.
    folder = task_farm.root / ".buildcat" / "logs" / job.id
    folder.mkdir(parents=True, exist_ok=True)
    os.symlink("/dev/full", folder / f"{job.id}.0.log")
    task_farm.start_worker("--no-blender", "--slots", "1")
    assert job.results() == [None, None]
    full, fine = (client.task(f"{job.id}.{n}")["log"] for n in (0, 1))
    assert "could not be written (No space left on device)" in full
    assert "line 2999\nbuildcat: the task log" in full  # the tail still goes back with it
    assert "could not be written" not in fine
    text = (folder / f"{job.id}.1.log").read_text()
    assert "line 0\n" in text and "line 2999\n" in text and "err 2000\n" in text


def test_each_task_log_is_capped_keeping_head_and_tail(
    task_farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDCAT_MAX_TASK_LOG", "4K")
    task_farm.start_worker("--no-blender")
    client = task_farm.client()
    job = client.map("task_jobs:chatter", [20_000], max_attempts=1)
    assert job.results() == [None]
    path = task_farm.root / ".buildcat" / "logs" / job.id / f"{job.id}.0.log"
    wait_for(path.exists)
    text = path.read_text()
    assert path.stat().st_size < 4096 + 1024  # the cap plus the header and two notes
    assert "\nline 0\n" in text and text.endswith("line 19999\n")
    assert "this attempt printed more than 2,048 bytes" in text
    left_out = text.split("--- buildcat: ")[2].split(" bytes of output left out here")[0]
    assert int(left_out.replace(",", "")) > 150_000
    printed = sum(len(f"line {n}\n") for n in range(20_000)) + 20 * len("err 10000\n")
    assert printed > 40 * 4096  # what a log of everything would have been


def test_a_bad_cap_is_one_line_and_the_worker_does_not_start(task_farm: Farm) -> None:
    run = task_farm.cli("worker", "--no-blender", "--port", str(task_farm.port),
                        BUILDCAT_MAX_TASK_LOG="lots")  # fmt: skip
    assert run.returncode != 0
    assert (
        run.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "BUILDCAT_MAX_TASK_LOG must be a size in bytes like 8388608, 512K or 8M, not 'lots'"
        )
    )


def test_parse_size_and_the_default() -> None:
    assert max_log_bytes({}) == 8 * 1024 * 1024
    assert parse_size("8388608") == parse_size("8M") == parse_size("8 MiB") == 8 * 1024**2
    assert parse_size("512k") == 512 * 1024 and parse_size("1G") == 1024**3
    for bad in ("", "lots", "-5", "1.5M", "100"):
        with pytest.raises(FarmError, match="BUILDCAT_MAX_TASK_LOG"):
            parse_size(bad)


def test_capped_log_keeps_exact_head_and_tail(tmp_path: Path) -> None:
    log = TaskLog(tail_chars=100, max_bytes=1024)
    path = tmp_path / "logs" / "J" / "J.0.log"
    log.start(str(path), "header\n")
    written = "".join(f"{n:05d}\n" for n in range(2000))
    for start in range(0, len(written), 37):  # writes of odd sizes
        log.write(written[start : start + 37])
    assert log.take() == written[-100:]
    text = path.read_text()
    head = text.split("\n--- buildcat:")[0]
    assert head == "header\n" + written[: 512 - len("header\n")]
    assert text.endswith(written[-512:])
    left = int(text.split("--- buildcat: ")[2].split(" bytes")[0].replace(",", ""))
    assert left == len(written) - (512 - len("header\n")) - 512
