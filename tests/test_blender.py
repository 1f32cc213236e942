"""Blender on the farm, with real Blender: the Debian binary and the bpy module."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import buildcat
from buildcat import launch
from buildcat.blender import BPY, BlenderInstall, blend_file_version, find_blender
from buildcat.imaging import read_png
from tests.conftest import Farm, wait_for

BINARY = shutil.which("blender")


def _bpy_works() -> bool:
    done = subprocess.run([sys.executable, "-c", "import bpy"], capture_output=True, check=False)
    return done.returncode == 0


HAS_BPY = _bpy_works()
# A developer's machine may lack a Blender; CI installs both, and there a skip fails.
needs_binary = pytest.mark.skipif(BINARY is None, reason="Debian's blender is not installed")
needs_bpy = pytest.mark.skipif(not HAS_BPY, reason="the bpy module is not installed")


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
    frames = sorted((blender_farm.root / "renders" / "spin").glob("frame_*.png"))
    assert [f.name for f in frames] == [f"frame_{n:04d}.png" for n in range(1, 7)]
    assert all(png_size(f) == (48, 32) for f in frames)
    assert not list((blender_farm.root / "renders" / "spin").glob(".buildcat-tmp-*"))
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
    job = farm.render(
        "shots/spin.blend", "1", resolution=(16, 16), samples=1, max_attempts=1, **options
    )  # type: ignore[arg-type]
    with pytest.raises(buildcat.JobFailed, match=reason):
        job.wait(timeout=120)
    if "camera" in options:
        assert "NoSuchCamera" in farm.task(f"{job.id}.0")["log"]
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


@needs_binary
def test_cancel_stops_blender_within_the_grace_period(blender_farm: Farm) -> None:
    blender_farm.start_worker()
    farm = blender_farm.client()
    job = farm.render("shots/spin.blend", "1-6", chunk=6, resolution=(256, 256), samples=4096)
    wait_for(lambda: any(t["progress"] > 0 for t in job.tasks()), timeout=120)
    cancelled_at = time.monotonic()
    job.cancel()

    def rendering() -> list[str]:
        lines = subprocess.run(["pgrep", "-af", "spin.blend"], capture_output=True, text=True)
        return [line for line in lines.stdout.splitlines() if str(blender_farm.root) in line]

    wait_for(lambda: not rendering(), timeout=30)
    assert time.monotonic() - cancelled_at < 20
    assert job.status()["state"] == "cancelled"


def _render_with(blender_farm: Farm, blender: str, output: str) -> Path:
    worker = blender_farm.start_worker("--blender", blender, name=f"with-{Path(blender).name}")
    farm = blender_farm.client()
    job = farm.render("shots/spin.blend", "2", output=output, resolution=(32, 32), samples=8)
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
    assert workers["with-bpy"].startswith("4.5")
    w1, h1, rgb1 = read_png(by_binary)
    w2, h2, rgb2 = read_png(by_bpy)
    assert (w1, h1) == (w2, h2) == (32, 32)
    mean_difference = sum(abs(a - b) for a, b in zip(rgb1, rgb2, strict=True)) / len(rgb1)
    assert mean_difference < 40  # the same scene: two Blender versions, same picture


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


@needs_binary
def test_sample_split_merge_beats_any_part(blender_farm: Farm) -> None:
    blender_farm.start_worker("--slots", "2")
    farm = blender_farm.client()
    size = {"resolution": (32, 32)}
    split = farm.render(
        "shots/spin.blend", "4", sample_split=4, samples=8, output="split/f_####", **size
    )
    reference = farm.render("shots/spin.blend", "4", samples=256, output="ref/f_####", **size)
    split.wait(timeout=300)
    reference.wait(timeout=300)
    parts = [
        farm.render("shots/spin.blend", "4", samples=2, output=f"part{i}/f_####", **size)
        for i in range(2)
    ]
    for part in parts:
        part.wait(timeout=300)
    truth = _pixels(blender_farm.root / "ref" / "f_0004.png")
    merged = _mean_error(_pixels(blender_farm.root / "split" / "f_0004.png"), truth)
    singles = [_mean_error(_pixels(blender_farm.root / f"part{i}" / "f_0004.png"), truth)
               for i in range(2)]  # fmt: skip
    assert merged < min(singles)
    assert [t["label"] for t in split.tasks()][-1] == "frame 4 merge"


def _warm_blenders(worker: subprocess.Popen[bytes]) -> list[int]:
    """Pids of the warm Blender processes below a worker process."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])

    def below(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == worker.pid:
                return True
        return False

    return [pid for pid, command in commands.items() if "warm.py" in command and below(pid)]


def test_one_blender_renders_every_task_then_leaves(
    blender_farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDCAT_BLENDER_IDLE_SECONDS", "2")
    worker = blender_farm.start_worker()
    job = blender_farm.client().render("shots/spin.blend", "1-6", chunk=1, samples=2)
    job.wait(300)
    logs = [blender_farm.client().log(task["id"]) for task in job.tasks()]
    assert "buildcat: starting Blender" in logs[0]
    for number, log in enumerate(logs[1:], start=2):
        assert f"buildcat: reusing (render {number}) Blender" in log, log[:300]
        assert "Fra:" in log and "Saved: '" in log
    assert len(list((blender_farm.root / "renders" / "spin").glob("frame_*.png"))) == 6
    assert len(_warm_blenders(worker)) == 1
    # With no task for BUILDCAT_BLENDER_IDLE_SECONDS it exits, giving its memory back.
    wait_for(lambda: not _warm_blenders(worker), timeout=30)


def test_a_blender_that_dies_is_replaced_and_its_task_retried(blender_farm: Farm) -> None:
    worker = blender_farm.start_worker()
    client = blender_farm.client()
    assert client.render("shots/spin.blend", "1", samples=1).wait(120)["state"] == "done"
    [first] = wait_for(lambda: _warm_blenders(worker))
    job = client.render("shots/spin.blend", "2", samples=1500, resolution=(128, 128))

    def sampling() -> bool:
        [task] = job.tasks()
        return "sample" in task["progress_message"] and task["progress"] < 0.5

    wait_for(sampling, timeout=120, interval=0.01)  # rendering now
    assert _warm_blenders(worker) == [first]  # the same Blender took the next task
    os.kill(first, signal.SIGKILL)  # mid-render: the task fails and is retried
    job.wait(300)
    [task] = job.tasks()
    assert task["state"] == "done" and task["attempts"] == 2 and task["failures"] == 1
    assert "Blender stopped (exit code -9) during the render" in task["error"]
    assert (blender_farm.root / "renders" / "spin" / "frame_0002.png").stat().st_size > 0
    assert _warm_blenders(worker) not in ([], [first])
