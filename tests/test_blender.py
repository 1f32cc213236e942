"""Blender on the farm, with real Blender: the Debian binary and the bpy module."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy
import OpenEXR
import pytest

import buildcat
from buildcat import TaskCancelled, launch
from buildcat.blender import BPY, BlenderInstall, blend_file_version, find_blender
from buildcat.frames import frame_path
from buildcat.imaging import read_rgb as read_png
from buildcat.jobs import blender as blender_jobs
from buildcat.jobs.blender import plan_render
from buildcat.worker import child as child_process
from tests.blender_support import (
    BINARY,
    BOTH_BLENDERS,
    descendants,
    gone,
    needs_binary,
    needs_bpy,
    parent_of,
    warm_blenders,
)
from tests.conftest import Farm, wait_for

#: How a cancelled render's log says its Blender ended (the Blender job prints it).
STOPPED = re.compile(r"buildcat: Blender stopped \(exit code (-?\d+)\)")


@pytest.fixture
def blender_farm(farm: Farm, scene_file: Path) -> Iterator[Farm]:
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "spin.blend")
    yield farm


def png_size(path: Path) -> tuple[int, int]:
    width, height, _ = read_png(path)
    return width, height


def test_blend_header_gives_the_saving_version(scene_file: Path, tmp_path: Path) -> None:
    version = blend_file_version(scene_file)
    assert version is not None
    assert version.count(".") == 1
    text = tmp_path / "not.blend"
    text.write_text("hello")
    assert blend_file_version(text) is None


@needs_binary
def test_frames_in_chunks_on_two_workers(blender_farm: Farm) -> None:
    blender_farm.start_worker()
    blender_farm.start_worker()
    blender_farm.wait_workers(2)
    submitted = blender_farm.cli(
        "submit", "blender", "shots/spin.blend", "--frames", "1-6", "--chunk", "2", "--json",
        "--resolution", "48x32", "--samples", "2",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    waited = blender_farm.cli("wait", job_id, timeout=300)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    job = blender_farm.client().job(job_id)
    tasks = job.tasks()
    assert len(tasks) == 3
    assert [t["label"] for t in tasks] == ["frames 1-2", "frames 3-4", "frames 5-6"]
    frames = sorted((blender_farm.root / "renders" / "spin" / "Scene").glob("frame_*.png"))
    assert [f.name for f in frames] == [f"frame_{n:04d}.png" for n in range(1, 7)]
    assert all(png_size(f) == (48, 32) for f in frames)
    assert not list((blender_farm.root / "renders" / "spin" / "Scene").glob(".buildcat-tmp-*"))
    log = blender_farm.cli("logs", f"{job_id}.0").stdout
    assert "Fra:1" in log
    assert "Saved: '" in log
    assert log.count("buildcat: ") >= 2  # the overrides say what they changed


@needs_binary
def test_blender_jobs_wait_for_a_worker_with_blender(blender_farm: Farm) -> None:
    blender_farm.start_worker("--no-blender", name="no-blender")
    blender_farm.wait_workers(1)
    farm = blender_farm.client()
    job = farm.render("shots/spin.blend", "1", resolution=(16, 16), samples=1)
    status = blender_farm.cli("status", job.id)
    assert "waiting: no online worker meets blender>=" in status.stdout
    assert job.status()["tasks"]["queued"] == 1
    blender_farm.start_worker(name="with-blender")
    job.wait(timeout=120)
    assert job.status()["waiting"] == ""


@needs_binary
@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"camera": "NoSuchCamera"}, "no camera named 'NoSuchCamera'"),
        ({"output": "blocked.txt/frame_####"}, "cannot write to blocked.txt/frame_####"),
    ],
)
def test_render_errors_fail_with_a_clear_reason(
    blender_farm: Farm, options: dict[str, str], reason: str
) -> None:
    (blender_farm.root / "blocked.txt").write_text("a file where a folder should be")
    blender_farm.start_worker()
    farm = blender_farm.client()
    if "camera" in options:  # the submit reads the file's cameras and refuses at once
        with pytest.raises(buildcat.FarmError, match=reason):
            farm.render("shots/spin.blend", "1", **options)  # type: ignore[arg-type]
        assert farm.jobs() == []
        return
    job = farm.render(
        "shots/spin.blend", "1", resolution=(16, 16), samples=1, max_attempts=1, **options
    )  # type: ignore[arg-type]
    with pytest.raises(buildcat.JobFailed, match=reason):
        job.wait(timeout=120)
    status = blender_farm.cli("status", job.id)
    assert reason in status.stdout
    assert farm.ping()["api"] == 1  # the server is still up


@needs_binary
def test_missing_scene_fails_with_a_clear_reason(blender_farm: Farm) -> None:
    blender_farm.start_worker()
    farm = blender_farm.client()
    refused = blender_farm.cli("submit", "blender", "shots/missing.blend", "--frames", "1")
    assert refused.returncode != 0
    assert "shots/missing.blend does not exist under the farm root" in refused.stderr
    # A scene that vanished after submitting fails on the worker with the same words.
    task = {
        "payload": {
            "step": "render",
            "scene": "shots/gone.blend",
            "frames": [1],
            "output": "renders/gone/frame_####",
            "settings": {},
        }
    }
    job = farm.submit_tasks([task], kind="blender", max_attempts=1)
    with pytest.raises(buildcat.JobFailed, match=re.escape("shots/gone.blend does not exist")):
        job.wait(timeout=60)


@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_cancel_stops_blender_within_the_grace_period(
    blender_farm: Farm, blender: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither fallback can be what stops this Blender, only the Blender job's cancel: not
    # the worker's (kill the task's whole child process after --cancel-grace, Blender dying
    # with it), nor an idle warm Blender leaving by itself.
    monkeypatch.setenv("BUILDCAT_BLENDER_IDLE_SECONDS", "600")
    worker = blender_farm.start_worker("--blender", blender, "--cancel-grace", "600")
    farm = blender_farm.client()
    job = farm.render("shots/spin.blend", "1", resolution=(64, 64), samples=1_000_000)

    def sampling() -> bool:
        [task] = job.tasks()
        return "sample" in task["progress_message"]

    wait_for(sampling, timeout=120)
    [rendering] = warm_blenders(worker)  # the Blender rendering this task
    child = parent_of(rendering)  # the worker's child process that runs the task
    job.cancel()
    wait_for(lambda: gone(rendering), timeout=60)
    [task] = job.tasks()
    stopped = wait_for(lambda: STOPPED.search(farm.log(task["id"])), timeout=30)
    if blender == BPY:
        # bpy cannot stop a render part-way, so its SIGINT ends the process at once.
        assert int(stopped[1]) == -signal.SIGINT
    else:
        # Cycles looks for the break only between sample steps, which grow to many seconds:
        # it stops the render and leaves (1), or is killed when the grace period is out.
        assert int(stopped[1]) in (1, -signal.SIGKILL)
    assert not gone(child)  # the worker's fallback did not kill the task's process
    assert "ignored the cancel" not in blender_farm.log_text("worker-1")
    assert job.status()["state"] == "cancelled"
    assert task["state"] == "cancelled"


#: Runs inside a real Blender (``--python-expr``, or ``python -c`` with bpy) in the place of a
#: render: notes each SIGINT in NOTES and stops "rendering" on it only when HONOUR is true.
#: WARM reads requests like blender/warm.py (one a line, until the end of its input).
FAKE_RENDER = """
import signal, sys, time
import bpy
NOTES, HONOUR, WARM = {notes!r}, {honour!r}, {warm!r}
stopped = []

def on_sigint(signum, frame):
    with open(NOTES, "a") as notes:
        notes.write("SIGINT\\n")
    if HONOUR:
        stopped.append(signum)

def render():
    print("rendering", flush=True)
    while not stopped:
        time.sleep(0.01)
    stopped.clear()

signal.signal(signal.SIGINT, on_sigint)
if WARM:
    print("BUILDCAT-READY", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        render()
        print("BUILDCAT-ERROR render stopped", flush=True)
else:
    render()
"""


@pytest.fixture
def cancel_signal() -> Iterator[None]:
    """SIGUSR1 raises TaskCancelled here, as in a worker's child process (its cancel)."""
    cancels = child_process.Cancels(None)  # every cancel is for the task that runs
    cancels.running = 0
    previous = signal.signal(signal.SIGUSR1, cancels.on_signal)
    yield
    signal.signal(signal.SIGUSR1, previous)


def _cancel_when_rendering(line: str) -> None:
    if line == "rendering":  # Blender is inside the render: the worker's cancel comes now
        os.kill(os.getpid(), signal.SIGUSR1)


def _stop_fake_render(
    blender: str,
    how: str,
    honour: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, str]:
    """Cancel a fake render in a real Blender as the product runs it: the exit code its
    log gives and the SIGINTs it noted."""
    notes = tmp_path / "notes.txt"
    script = FAKE_RENDER.format(notes=str(notes), honour=honour, warm=how == "warm")
    install = find_blender(blender)
    assert install is not None
    if how == "warm":
        # WarmBlender starts SCRIPTS/warm.py in this Blender: here, the fake one.
        (tmp_path / "warm.py").write_text(script)
        monkeypatch.setattr(blender_jobs, "SCRIPTS", tmp_path)
        warm = blender_jobs.WarmBlender(install)
        with pytest.raises(TaskCancelled):
            warm.render({"frames": [1]}, _cancel_when_rendering)
        assert gone(warm.process.pid)
    else:
        if install.kind == BPY:
            command = [install.path, "-c", script]
        else:
            command = [install.path, "-b", "--factory-startup", "--python-expr", script]
        with pytest.raises(TaskCancelled):
            blender_jobs.run_process(command, _cancel_when_rendering)
    [code] = STOPPED.findall(capsys.readouterr().out)
    return int(code), notes.read_text() if notes.exists() else ""


@pytest.mark.parametrize("how", ["per-task", "warm"])
@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_a_blender_that_ignores_sigint_is_killed_after_the_grace_period(
    blender: str,
    how: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cancel_signal: None,
) -> None:
    monkeypatch.setattr(blender_jobs, "CANCEL_GRACE_SECONDS", 1.0)
    started = time.monotonic()
    code, noted = _stop_fake_render(blender, how, False, tmp_path, monkeypatch, capsys)
    assert noted == "SIGINT\n"  # asked once, nicely, first
    assert code == -signal.SIGKILL  # then killed
    assert time.monotonic() - started >= 1.0  # not before the grace period was out


@pytest.mark.parametrize("how", ["per-task", "warm"])
@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_a_blender_that_honours_sigint_ends_without_sigkill(
    blender: str,
    how: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cancel_signal: None,
) -> None:
    # A grace period far longer than a Blender that honours SIGINT needs: a SIGKILL at its
    # end would show as exit code -9.
    monkeypatch.setattr(blender_jobs, "CANCEL_GRACE_SECONDS", 30.0)
    code, noted = _stop_fake_render(blender, how, True, tmp_path, monkeypatch, capsys)
    assert noted == "SIGINT\n"
    assert code == 0  # its own exit once the render stopped (warm: at the end of its input)


def _render_with(blender_farm: Farm, blender: str, output: str) -> Path:
    worker = blender_farm.start_worker("--blender", blender, name=f"with-{Path(blender).name}")
    farm = blender_farm.client()
    job = farm.render("shots/spin.blend", "2", output=output, resolution=(32, 32), samples=32)
    job.wait(timeout=300)
    launch.stop(worker)
    (path,) = job.results()[0]["outputs"]
    return blender_farm.root / path


@needs_binary
@needs_bpy
def test_same_render_through_the_binary_and_bpy(blender_farm: Farm) -> None:
    by_binary = _render_with(blender_farm, BINARY or "blender", "renders/binary/frame_####")
    by_bpy = _render_with(blender_farm, BPY, "renders/bpy/frame_####")
    workers = {w["name"]: w["capabilities"]["blender"] for w in blender_farm.client().workers()}
    assert workers["with-blender"].startswith("3.4")
    assert workers["with-bpy"].startswith("4.5")
    w1, h1, rgb1 = read_png(by_binary)
    w2, h2, rgb2 = read_png(by_bpy)
    assert (w1, h1) == (w2, h2) == (32, 32)
    differences = [b - a for a, b in zip(rgb1, rgb2, strict=True)]
    brightness = sum(differences) / len(differences)
    mean_difference = sum(map(abs, differences)) / len(differences)
    largest = max(map(abs, differences))
    print(f"bpy - binary: mean {brightness:.2f}, mean |d| {mean_difference:.2f}, max {largest}")
    # Measured (frame 2, 32x32, 32 samples, fixed seed): 4.5 is darker by 6.2 of 255 all
    # over (its Principled BSDF changed), mean |difference| 6.3, no value off by more than 25.
    # A wrong picture is far off: frame 5 instead of 2 gives mean |difference| 13.7 and
    # values off by 166; the same Blender's own frames 2 and 5 differ by 9.7; black by 187.
    assert -8.5 < brightness < -4
    assert mean_difference < 8
    assert largest <= 40


def test_worker_reports_its_blender(farm: Farm) -> None:
    install: BlenderInstall | None = find_blender()
    if install is None:
        pytest.skip("no Blender installed")
    farm.start_worker()
    farm.wait_workers(1)
    (worker,) = farm.client().workers()
    assert worker["capabilities"]["blender"] == install.version


def _pixels(path: Path) -> list[int]:
    return list(read_png(path)[2])


def _mean_error(a: list[int], b: list[int]) -> float:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


@needs_binary
def test_tiles_stitch_into_the_full_frame(blender_farm: Farm) -> None:
    blender_farm.start_worker("--slots", "2")
    farm = blender_farm.client()
    common = {"resolution": (48, 48), "samples": 16}
    tiled = farm.render("shots/spin.blend", "3", tiles=(2, 2), output="tiled/f_####", **common)
    plain = farm.render("shots/spin.blend", "3", output="plain/f_####", **common)
    tiled.wait(timeout=300)
    plain.wait(timeout=300)
    labels = [t["label"] for t in tiled.tasks()]
    assert labels == [*(f"frame 3 tile {i}" for i in range(4)), "frame 3 stitch"]
    stitched = blender_farm.root / "tiled" / "f_0003.png"
    reference = blender_farm.root / "plain" / "f_0003.png"
    assert read_png(stitched)[:2] == (48, 48)
    # Fixed seed: the same samples, tile by tile; only border-edge noise may differ.
    assert _mean_error(_pixels(stitched), _pixels(reference)) < 3
    assert not list((blender_farm.root / "tiled" / ".buildcat-parts").glob("*.png"))


def _linear(path: Path) -> numpy.ndarray:
    channels = OpenEXR.File(str(path), separate_channels=True).channels()
    return numpy.stack([channels[c].pixels for c in "RGB"], axis=-1).astype(numpy.float64)


@needs_binary
def test_sample_split_merge_is_the_mean_of_its_parts_and_beats_each(blender_farm: Farm) -> None:
    blender_farm.start_worker("--slots", "2")
    farm = blender_farm.client()
    common: dict[str, Any] = {"resolution": (32, 32), "format": "OPEN_EXR"}
    split = farm.render(
        "shots/spin.blend", "4", sample_split=4, samples=8, output="split/f_####", **common
    )
    reference = farm.render("shots/spin.blend", "4", samples=256, output="ref/f_####", **common)
    # The split's own parts again, planned as farm.render plans them (same share of the
    # samples), into another folder and without the merge, which would delete them.
    planned = plan_render(
        "shots/spin.blend", [4], output="kept/f_####", sample_split=4,
        settings={"samples": 8, "resolution": [32, 32], "format": "OPEN_EXR"},
    )  # fmt: skip
    *part_tasks, merge_task = planned
    parts = farm.submit_tasks(part_tasks, kind="blender")
    split.wait(timeout=300)
    reference.wait(timeout=300)
    parts.wait(timeout=300)
    assert [t["label"] for t in split.tasks()] == [t["payload"]["label"] for t in planned]
    assert merge_task["payload"]["step"] == "merge"
    # Parts are float EXR whatever the job writes: two samples each of the frame's eight.
    kept = [
        _linear(blender_farm.root / frame_path(pattern, 4, ".exr"))
        for pattern in merge_task["payload"]["parts"]
    ]
    assert len({part.tobytes() for part in kept}) == 4  # four stretches of the samples
    merged = _linear(blender_farm.root / "split" / "f_0004.exr")
    assert numpy.abs(merged - numpy.mean(kept, axis=0)).max() < 1e-5  # equal shares
    truth = _linear(blender_farm.root / "ref" / "f_0004.exr")
    errors = [float(numpy.abs(part - truth).mean()) for part in kept]
    assert float(numpy.abs(merged - truth).mean()) < min(errors), errors


#: The first line of a warm render's log: which Blender process renders the task.
WARM_LINE = re.compile(r"buildcat: (starting|reusing \(render \d+\)) Blender .*, pid (\d+), for ")


def test_one_blender_renders_every_task_then_leaves(
    blender_farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDCAT_BLENDER_IDLE_SECONDS", "3")
    worker = blender_farm.start_worker()
    job = blender_farm.client().render("shots/spin.blend", "1-6", chunk=1, samples=2)
    job.wait(300)
    logs = [blender_farm.client().log(task["id"]) for task in job.tasks()]
    lines = [WARM_LINE.search(log) for log in logs]
    assert all(lines), logs[0][:300]
    hows = [line[1] for line in lines if line]
    assert hows == ["starting", *(f"reusing (render {n})" for n in range(2, 7))]
    [pid] = {line[2] for line in lines if line}  # one Blender process rendered all six
    assert all("Fra:" in log and "Saved: '" in log for log in logs)
    assert len(list((blender_farm.root / "renders" / "spin" / "Scene").glob("frame_*.png"))) == 6
    # With no task for BUILDCAT_BLENDER_IDLE_SECONDS it exits, giving its memory back.
    wait_for(lambda: gone(int(pid)), timeout=60)
    assert not warm_blenders(worker)


def test_a_killed_workers_processes_and_blenders_leave_by_themselves(blender_farm: Farm) -> None:
    worker = blender_farm.start_worker("--slots", "2")
    job = blender_farm.client().render(
        "shots/spin.blend", "1-2", chunk=1, resolution=(32, 32), samples=1_000_000
    )

    def both_sampling() -> bool:
        return all("sample" in task["progress_message"] for task in job.tasks())

    wait_for(both_sampling, timeout=120)  # two Blenders busy rendering, reading no input
    below = descendants(worker.pid)
    blenders = warm_blenders(worker)
    assert len(blenders) == 2
    assert len(below) >= 4, below  # a child process per slot and its Blender
    worker.kill()  # SIGKILL: the worker can stop nothing
    worker.wait()
    try:
        # Each child notices its parent is gone and leaves; each Blender dies with its child.
        wait_for(lambda: all(gone(pid) for pid in below), timeout=60)
    finally:
        for pid in below:  # a failed test leaves nothing rendering behind
            if not gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_a_blender_that_dies_is_replaced_and_its_task_retried(blender_farm: Farm) -> None:
    worker = blender_farm.start_worker()
    client = blender_farm.client()
    assert client.render("shots/spin.blend", "1", samples=1).wait(120)["state"] == "done"
    [first] = wait_for(lambda: warm_blenders(worker))
    job = client.render("shots/spin.blend", "2", samples=1500, resolution=(128, 128))

    def sampling() -> bool:
        [task] = job.tasks()
        return "sample" in task["progress_message"] and task["progress"] < 0.5

    wait_for(sampling, timeout=120, interval=0.01)  # rendering now
    assert warm_blenders(worker) == [first]  # the same Blender took the next task
    os.kill(first, signal.SIGKILL)  # mid-render: the task fails and is retried
    job.wait(300)
    [task] = job.tasks()
    assert task["state"] == "done" and task["attempts"] == 2 and task["failures"] == 1
    assert "Blender stopped (exit code -9) during the render" in task["error"]
    assert (blender_farm.root / "renders" / "spin" / "Scene" / "frame_0002.png").stat().st_size > 0
    assert warm_blenders(worker) not in ([], [first])
