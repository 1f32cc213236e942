"""A scene that is not the file's active one, an explicit camera against timeline markers,
frames at and below 0, and a file's Python (drivers) only when trusted: each frame held
against a plain render of the same Blender, on every kind of worker (warm or a Blender per
task; the binary or the bpy module)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import buildcat
from buildcat.jobs import blender as blender_jobs
from tests.blender_support import BINARY, BPY, gone, needs_binary, needs_bpy, power_off
from tests.conftest import Farm, wait_for
from tests.scene_builders import build_scenes, plain_render

#: Every kind of worker: each Blender, kept warm between tasks or started per task.
WORKER_KINDS = [
    pytest.param(BINARY or "blender", "1", id="binary-3.4-warm", marks=needs_binary),
    pytest.param(BINARY or "blender", "0", id="binary-3.4-per-task", marks=needs_binary),
    pytest.param(BPY, "1", id="bpy-4.5-warm", marks=needs_bpy),
    pytest.param(BPY, "0", id="bpy-4.5-per-task", marks=needs_bpy),
]
BOTH = [
    pytest.param(BINARY or "blender", id="binary-3.4", marks=needs_binary),
    pytest.param(BPY, id="bpy-4.5", marks=needs_bpy),
]
#: Forces CamA as a plain render's camera: the scene's camera, and no marker switching it.
CAMERA_A = (
    "scene.camera = scene.objects['CamA']\n"
    "for marker in scene.timeline_markers:\n"
    "    marker.camera = None\n"
)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_scenes(tmp_path_factory.mktemp("scene-files"))


@pytest.fixture
def scene_farm(farm: Farm, scenes: dict[str, Path]) -> Iterator[Farm]:
    (farm.root / "shots").mkdir()
    for path in scenes.values():
        shutil.copy(path, farm.root / "shots" / path.name)
    yield farm


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def difference(a: Path, b: Path) -> int:
    """The largest difference of any channel of any pixel, 0 to 255."""
    return int(np.abs(pixels(a) - pixels(b)).max())


def _worker(farm: Farm, blender: str, warm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUILDCAT_BLENDER_WARM", warm)  # the worker's child reads it
    farm.start_worker("--blender", blender)
    farm.wait_workers(1)


@pytest.mark.parametrize(("blender", "warm"), WORKER_KINDS)
def test_a_scene_not_the_active_one_renders_its_frames_below_and_at_zero_too(
    scene_farm: Farm,
    scenes: dict[str, Path],
    blender: str,
    warm: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _worker(scene_farm, blender, warm, monkeypatch)
    job = scene_farm.client().render(
        "shots/multi.blend", "-2,0,3", scene_name="Main", output="out/main_####", chunk=3
    )
    job.wait(timeout=300)
    (result,) = job.results()
    assert result["outputs"] == ["out/main_-0002.png", "out/main_0000.png", "out/main_0003.png"]
    for frame, output in zip((-2, 0, 3), result["outputs"], strict=True):
        plain = plain_render(blender, scenes["multi"], frame, tmp_path / str(frame), scene="Main")
        assert difference(scene_farm.root / output, plain) == 0, frame
    # A wrong picture is far off: the active scene, or another frame of Main.
    active = plain_render(blender, scenes["multi"], 3, tmp_path / "alt")
    assert difference(scene_farm.root / "out/main_0003.png", active) > 100
    assert (
        difference(scene_farm.root / "out/main_-0002.png", scene_farm.root / "out/main_0003.png")
        > 100
    )


@pytest.mark.parametrize("blender", BOTH)
def test_an_explicit_camera_wins_over_markers_that_bind_cameras(
    scene_farm: Farm, scenes: dict[str, Path], blender: str, tmp_path: Path
) -> None:
    scene_farm.start_worker("--blender", blender)
    farm = scene_farm.client()
    job = farm.render(
        "shots/multi.blend", "2,3", scene_name="Main", camera="CamA", output="cam/a_####", chunk=2
    )
    job.wait(timeout=300)
    for frame in (2, 3):
        farmed = scene_farm.root / f"cam/a_{frame:04d}.png"
        forced = plain_render(
            blender, scenes["multi"], frame, tmp_path / f"a{frame}", scene="Main", python=CAMERA_A
        )
        by_marker = plain_render(
            blender, scenes["multi"], frame, tmp_path / f"b{frame}", scene="Main"
        )
        assert difference(farmed, forced) == 0
        assert difference(farmed, by_marker) > 100  # the marker's CamB sees another picture
    assert "timeline marker(s) binding cameras ignored" in farm.task(f"{job.id}.0")["log"]


@pytest.mark.parametrize("blender", BOTH)
def test_a_files_python_drivers_run_only_with_enable_autoexec(
    scene_farm: Farm, scenes: dict[str, Path], blender: str, tmp_path: Path
) -> None:
    scene_farm.start_worker("--blender", blender)
    scene_farm.wait_workers(1)
    submitted = scene_farm.cli(
        "submit", "blender", "shots/driver.blend", "--frames", "1", "--output", "off/f_####",
        "--wait",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    trusted = scene_farm.cli(
        "submit", "blender", "shots/driver.blend", "--frames", "1", "--output", "on/f_####",
        "--enable-autoexec", "--wait",
    )  # fmt: skip
    assert trusted.returncode == 0, trusted.stderr
    plain_off = plain_render(blender, scenes["driver"], 1, tmp_path / "off")
    plain_on = plain_render(blender, scenes["driver"], 1, tmp_path / "on", autoexec=True)
    assert difference(plain_off, plain_on) > 100  # the driver triples the box's width
    assert difference(scene_farm.root / "off/f_0001.png", plain_off) == 0
    assert difference(scene_farm.root / "on/f_0001.png", plain_on) == 0


def test_an_absolute_path_inside_the_root_is_made_relative(scene_farm: Farm) -> None:
    absolute = str(scene_farm.root / "shots" / "multi.blend")
    farm = scene_farm.client()
    job = farm.render(absolute, "1", scene_name="Main")
    assert job.status()["meta"]["scene"] == "shots/multi.blend"
    submitted = scene_farm.cli("submit", "blender", absolute, "--frames", "1", "--json")
    assert submitted.returncode == 0, submitted.stderr
    outside = scene_farm.cli("submit", "blender", "/etc/hostname", "--frames", "1")
    assert outside.returncode != 0
    assert outside.stderr.count("\n") == 1 and "outside the farm root" in outside.stderr


# ---- no staging or empty parts folders left behind ---------------------------------------------


def leftovers(root: Path) -> list[str]:
    """Staging folders and empty parts folders anywhere under the root.

    A folder the farm removes while the walk is inside it counts as still there (the
    caller polls again), so the walk never fails on the removal it is waiting for.
    """
    try:
        found = [p for p in root.rglob(".buildcat-tmp-*")]
        found += [p for p in root.rglob(".buildcat-parts") if not any(p.iterdir())]
    except FileNotFoundError as gone:
        return [f"(being removed: {gone.filename})"]
    return sorted(str(p.relative_to(root)) for p in found)


@pytest.fixture
def spin_farm(farm: Farm, scene_file: Path) -> Iterator[Farm]:
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "spin.blend")
    yield farm


@needs_binary
@pytest.mark.timeout(300)  # three jobs, one of them cancelled mid-render: slow on a busy VM
def test_no_leftover_folders_after_success_failure_and_cancel(spin_farm: Farm) -> None:
    spin_farm.start_worker("--slots", "2")
    farm = spin_farm.client()
    small = {"resolution": (16, 16), "samples": 1}
    done = farm.render("shots/spin.blend", "1", tiles=(2, 1), output="ok/f_####", **small)
    done.wait(timeout=120)
    assert (spin_farm.root / "ok" / "f_0001.png").is_file()
    # A camera the file lacks, from a client that does not read the .blend (Client.render
    # refuses it at submit): it fails inside Blender, after the staging folders exist.
    tasks = blender_jobs.plan_render(
        "shots/spin.blend", [1], tiles=(2, 1), output="bad/f_####",
        settings={"camera": "Nope", "resolution": [16, 16], "samples": 1},
    )  # fmt: skip
    failed = farm.submit_tasks(tasks, kind="blender", requires=["blender>=3.4"])
    with pytest.raises(buildcat.JobFailed):
        failed.wait(timeout=120)
    long = farm.render("shots/spin.blend", "1-2", output="long/f_####", samples=1_000_000,
                       resolution=(32, 32))  # fmt: skip
    wait_for(lambda: len(leftovers(spin_farm.root / "long")) == 2, timeout=120)  # staging now
    long.cancel()
    wait_for(lambda: long.status()["state"] == "cancelled", timeout=60)
    wait_for(lambda: leftovers(spin_farm.root) == [], timeout=60)


@needs_binary
def test_a_killed_workers_staging_folders_are_swept(spin_farm: Farm) -> None:
    worker = spin_farm.start_worker("--name", "w1")
    farm = spin_farm.client()
    job = farm.render("shots/spin.blend", "1", samples=1_000_000, resolution=(32, 32))
    wait_for(lambda: leftovers(spin_farm.root), timeout=120)  # the task is under way
    # SIGKILL to the worker and everything below it at once (a machine that lost power):
    # nothing of it can clean up. (Kill only the worker, and its child sees that, stops
    # its Blender and often removes the folder itself; kill a tree read once, and a Blender
    # started just then lives on and writes into the folder after it was swept.)
    below = power_off(worker.pid)
    worker.wait()
    wait_for(lambda: all(gone(pid) for pid in below), timeout=60)
    # What the lost machine left behind, read once it is all gone (read before the kill,
    # it can miss a folder the task was making just then), the job not over yet.
    staging = leftovers(spin_farm.root)
    assert staging
    # The worker comes back (the job still running): its notes say what it left.
    spin_farm.start_worker("--name", "w1")
    wait_for(lambda: leftovers(spin_farm.root) != staging, timeout=60)
    assert not any(name in leftovers(spin_farm.root) for name in staging)
    job.cancel()
    wait_for(lambda: leftovers(spin_farm.root) == [], timeout=60)
