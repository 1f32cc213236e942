"""Progress of long frames, frames delivered one by one, and the record of each frame, with
real Blender (the Debian binary and the bpy module)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from pathlib import Path

import pytest

from buildcat.blender import BPY, find_blender
from tests.blender_support import BINARY, BOTH_BLENDERS, needs_binary
from tests.conftest import Farm, wait_for
from tests.test_dashboard import dashboard_link

#: Frames 1 and 2 take a moment; frame 3 takes seconds (its samples are keyframed).
LONG_SAMPLES = 5000
#: Frame 3 of the scene for tests that stop it part-way: it must outlast any poll, however
#: fast the machine (5,000 samples took under half a second on a quiet one).
ENDLESS_SAMPLES = 2_000_000

#: Runs inside Blender: a small Cycles scene whose frame 3 has LONG_SAMPLES samples.
BUILD_SCENE = """
import bpy, sys
path, long_samples = sys.argv[-2], int(sys.argv[-1])
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.name = "Scene"
scene.render.engine = "CYCLES"
scene.render.resolution_x = scene.render.resolution_y = 40
scene.render.resolution_percentage = 100
scene.frame_start, scene.frame_end = 1, 3
scene.cycles.use_denoising = False
scene.cycles.use_adaptive_sampling = False  # every frame takes all its samples
bpy.ops.mesh.primitive_uv_sphere_add(radius=1.0)
bpy.ops.object.light_add(type="SUN", location=(2, -2, 4))
bpy.ops.object.camera_add(location=(0, -6, 1.5), rotation=(1.35, 0, 0))
scene.camera = bpy.context.active_object
scene.world = bpy.data.worlds.new("World")
scene.world.color = (0.2, 0.3, 0.4)
scene.cycles.samples = 8
scene.cycles.keyframe_insert("samples", frame=2)
scene.cycles.samples = long_samples
scene.cycles.keyframe_insert("samples", frame=3)
for curve in scene.animation_data.action.fcurves:
    for key in curve.keyframe_points:
        key.interpolation = "CONSTANT"
bpy.ops.wm.save_as_mainfile(filepath=path)
"""


def _build_long_scene(path: Path, long_samples: int) -> Path:
    """Built by the oldest Blender here, so both can open it."""
    install = find_blender(BINARY) if BINARY else find_blender(BPY)
    if install is None:
        pytest.skip("no Blender installed")
    script = path.with_name("build.py")
    script.write_text(BUILD_SCENE)
    if install.kind == BPY:
        command = [install.path, str(script), str(path), str(long_samples)]
    else:
        command = [install.path, "-b", "--factory-startup", "--python-exit-code", "1",
                   "--python", str(script), "--", str(path), str(long_samples)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and path.is_file(), done.stdout[-2000:] + done.stderr[-2000:]
    return path


@pytest.fixture(scope="module")
def long_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_long_scene(tmp_path_factory.mktemp("progress") / "long.blend", LONG_SAMPLES)


@pytest.fixture(scope="module")
def endless_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Frame 3 takes minutes even on a fast machine: for tests that stop it part-way."""
    return _build_long_scene(tmp_path_factory.mktemp("endless") / "long.blend", ENDLESS_SAMPLES)


@pytest.fixture
def shot(farm: Farm, long_scene: Path) -> Farm:
    (farm.root / "shots").mkdir()
    (farm.root / "shots" / "long.blend").write_bytes(long_scene.read_bytes())
    return farm


@pytest.fixture
def endless_shot(farm: Farm, endless_scene: Path) -> Farm:
    (farm.root / "shots").mkdir()
    (farm.root / "shots" / "long.blend").write_bytes(endless_scene.read_bytes())
    return farm


def _frame(farm: Farm, frame: int) -> Path:
    return farm.root / "renders" / "long" / "Scene" / f"frame_{frame:04d}.png"  # the default output


def _worker_version(farm: Farm, name: str) -> str:
    [worker] = [w for w in farm.client().workers() if w["name"] == name]
    return str(worker["capabilities"]["blender"])


@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_a_long_cycles_frame_reports_progress_before_it_is_saved(
    endless_shot: Farm, blender: str
) -> None:
    shot = endless_shot
    shot.start_worker("--blender", blender)
    client = shot.client()
    job = client.render("shots/long.blend", "3")
    seen: list[tuple[float, str]] = []

    def estimated_or_over() -> bool:
        [task] = job.tasks()
        if not _frame(shot, 3).exists() and task["state"] == "leased":
            seen.append((task["progress"], task["progress_message"]))
        estimated = any(0.05 < value < 1 and "left" in text for value, text in seen)
        return estimated or task["state"] not in ("queued", "leased")

    wait_for(estimated_or_over, timeout=300, interval=0.05)
    assert job.status()["state"] == "running"  # frame 3 is far from done: it is still rendering
    assert not _frame(shot, 3).exists()
    between = [(value, message) for value, message in seen if 0.05 < value < 1]
    assert between, f"no progress between 0 and 1 while frame 3 rendered: {seen[-5:]}"
    assert any("left" in message for _, message in between), between[-3:]
    job.cancel()
    wait_for(lambda: job.status()["state"] == "cancelled", timeout=60)


@pytest.mark.parametrize("how", ["warm", "per-task"])
@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_a_cancelled_chunk_keeps_the_frames_it_saved(
    endless_shot: Farm, blender: str, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shot = endless_shot  # frame 3 is still rendering when the cancel comes, on any machine
    # Warm: frames move on bpy_render.py's line; per-task binary: on Blender's Saved: line.
    monkeypatch.setenv("BUILDCAT_BLENDER_WARM", "1" if how == "warm" else "0")
    shot.start_worker("--blender", blender)
    client = shot.client()
    job = client.render("shots/long.blend", "1-3", chunk=3)

    def two_in_place() -> bool:
        return _frame(shot, 2).exists() or job.status()["state"] in ("done", "failed", "cancelled")

    wait_for(two_in_place, timeout=300, interval=0.05)  # frame 3 takes minutes
    job.cancel()
    wait_for(lambda: job.status()["state"] == "cancelled", timeout=60)
    assert _frame(shot, 1).stat().st_size > 0
    assert _frame(shot, 2).stat().st_size > 0
    assert not _frame(shot, 3).exists()


def _attempts(log: str) -> list[str]:
    """A task log cut at each attempt's header line."""
    return re.split(r"^--- .* attempt \S+ on .*$", log, flags=re.MULTILINE)[1:]


@pytest.mark.parametrize("farm", [("--lease-timeout", "2")], indirect=True)
@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_a_killed_workers_chunk_is_retried_for_the_missing_frame_only(
    shot: Farm, blender: str
) -> None:
    # A stale frame from an earlier job at the same path never counts as delivered.
    _frame(shot, 2).parent.mkdir(parents=True)
    _frame(shot, 2).write_bytes(b"an earlier job's frame 2")
    first = shot.start_worker("--blender", blender, name="first")
    client = shot.client()
    job = client.render("shots/long.blend", "1-3", chunk=3)

    def two_in_place() -> bool:
        return _frame(shot, 2).read_bytes().startswith(b"\x89PNG") or job.status()["state"] in (
            "done",
            "failed",
            "cancelled",
        )

    wait_for(two_in_place, timeout=300, interval=0.05)  # frame 3 takes minutes
    first.kill()  # SIGKILL: frame 3 is rendering
    first.wait()
    assert _frame(shot, 2).read_bytes().startswith(b"\x89PNG")  # the new frame 2, in place
    shot.start_worker("--blender", blender, name="second")
    job.wait(timeout=300)
    [task] = job.tasks()
    assert task["attempts"] == 2
    log = client.log(task["id"])
    first_attempt, retry = _attempts(log)
    assert first_attempt.count("Saved: '") == 2
    assert retry.count("Saved: '") == 1  # frame 3 alone
    assert "Fra:3" in retry and "Fra:1 " not in retry and "Fra:2 " not in retry
    for frame in (1, 2, 3):
        assert _frame(shot, frame).read_bytes().startswith(b"\x89PNG")
    [result] = job.results()
    assert [info["frame"] for info in result["frames_info"]] == [1, 2, 3]
    assert [info["worker"] for info in result["frames_info"]] == ["first", "first", "second"]


@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_every_frame_has_a_record_shown_by_farm_perf(shot: Farm, blender: str) -> None:
    shot.start_worker("--blender", blender, name="renderer")
    client = shot.client()
    job = client.render("shots/long.blend", "1-2", chunk=1)
    job.wait(timeout=300)
    version = _worker_version(shot, "renderer")
    records = [info for result in job.results() for info in result["frames_info"]]
    assert [info["frame"] for info in records] == [1, 2]
    for info in records:
        assert info["seconds"] > 0
        assert info["peak_memory_mb"] > 0
        assert info["blender"] == version
        assert info["worker"] == "renderer"
        assert info["device"] == "CPU"  # a worker without --gpu (a GPU slot names its own)
    perf = shot.cli("perf", job.id)
    assert perf.returncode == 0, perf.stderr
    assert re.search(rf"^1\s+{job.id}\.0\s+renderer\s+{re.escape(version)}\s", perf.stdout, re.M)
    as_csv = shot.cli("perf", job.id, "--csv")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [row["frame"] for row in rows] == ["1", "2"]
    assert all(row["worker"] == "renderer" and row["blender"] == version for row in rows)
    assert all(float(row["seconds"]) > 0 and float(row["peak_memory_mb"]) > 0 for row in rows)
    figures = json.loads(shot.cli("perf", job.id, "--json").stdout)
    assert [row["frame"] for row in figures["frames"]] == [1, 2]


def test_farm_wait_on_a_finished_job_measures_from_the_jobs_start(jobs_farm: Farm) -> None:
    jobs_farm.start_worker()
    client = jobs_farm.client()
    job = client.map("farm_jobs:slow", [0.6, 0.6])
    job.wait(timeout=60)
    status = job.status()
    span = status["finished_at"] - status["started_at"]
    assert span >= 0.6
    waited = jobs_farm.cli("wait", job.id)
    assert waited.returncode == 0, waited.stderr
    [elapsed] = re.findall(r"([\d.]+)s elapsed", waited.stdout)
    assert float(elapsed) == pytest.approx(span, abs=0.06)
    [rate] = re.findall(r"([\d.]+) tasks/s", waited.stdout)
    assert float(rate) == pytest.approx(2 / span, rel=0.1)


@needs_binary
def test_the_dashboard_shows_each_frames_record_in_the_task_view(
    shot: Farm,
    browser: object,
) -> None:
    shot.start_worker(name="renderer")
    client = shot.client()
    job = client.render("shots/long.blend", "1-2", chunk=2)
    job.wait(timeout=300)
    version = _worker_version(shot, "renderer")
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(dashboard_link(shot))
    page.locator(f'tr[data-job="{job.id}"]').click()
    page.locator(f'#tasks tr[data-task="{job.id}.0"]').click()
    rows = page.locator("#task-frames tr.frame")
    rows.nth(1).wait_for(timeout=30_000)
    cells = [rows.nth(i).locator("td").all_inner_texts() for i in range(rows.count())]
    assert [row[0] for row in cells] == ["1", "2"]
    for _, render_time, memory, blender, worker in cells:
        assert render_time.endswith("s") and memory.endswith(" MB")
        assert float(memory.split()[0]) > 0
        assert (blender, worker) == (version, "renderer")
