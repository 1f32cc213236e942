"""One Blender version for a whole shot, and jobs that never write over each other's frames.

With the Debian binary (3.4) and the bpy module (4.5) online at once, every task of a render
job (frames, tiles, their stitch) runs on one Blender version: the first worker's to lease
one, or the one ``--blender-version`` pins; the frames equal a plain render of that Blender.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from buildcat import launch
from buildcat.errors import FarmError
from buildcat.server import journal, outputs, snapshot
from buildcat.server.scheduler import Scheduler, TaskSpec, requirement_met
from tests.blender_support import BINARY, HAS_BPY, needs_binary, needs_bpy
from tests.conftest import Farm, wait_for

BPY_VERSION = "4.5"
BINARY_VERSION = "3.4"

_BPY_PLAIN = """
import sys, bpy
scene_path, pattern, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bpy.ops.wm.open_mainfile(filepath=scene_path)
scene = bpy.context.scene
scene.render.filepath = pattern
scene.render.image_settings.file_format = "PNG"
scene.frame_start, scene.frame_end = first, last
bpy.ops.render.render(animation=True)
"""


@pytest.fixture(scope="module")
def plain_frames(scene_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Frames 1-6 of the test scene, rendered plainly by each Blender (made when first asked)."""
    folder = tmp_path_factory.mktemp("plain")
    made: dict[str, list[np.ndarray]] = {}

    def frames(version: str) -> list[np.ndarray]:
        key = version[:3]
        if key not in made:
            out = folder / key
            pattern = str(out / "f_####")
            if key == BINARY_VERSION:
                command = [BINARY or "blender", "-b", str(scene_file), "-o", pattern]
                command += ["-F", "PNG", "-s", "1", "-e", "6", "-a"]
            else:
                command = [sys.executable, "-c", _BPY_PLAIN, str(scene_file), pattern, "1", "6"]
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            made[key] = [pixels(out / f"f_{n:04d}.png") for n in range(1, 7)]
        return made[key]

    yield {"frames": frames}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def max_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a - b).max())


@pytest.fixture
def two_blenders(farm: Farm, scene_file: Path) -> Iterator[Farm]:
    """A farm with the 3.4 binary worker and the 4.5 bpy worker online together."""
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "spin.blend")
    farm.start_worker("--blender", BINARY or "blender", name="w34")
    farm.start_worker("--blender", "bpy", name="w45")
    farm.wait_workers(2, timeout=60)
    yield farm


def _submit(farm: Farm, *args: str) -> str:
    done = farm.cli("submit", "blender", "shots/spin.blend", "--json", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return str(json.loads(done.stdout)["id"])


def _versions_used(farm: Farm, job_id: str) -> set[str]:
    """The Blender version of every worker that ran a task of the job."""
    client = farm.client()
    capabilities = {w["name"]: w["capabilities"] for w in client.workers()}
    tasks = client.job(job_id).tasks()
    assert all(t["state"] == "done" for t in tasks)
    return {capabilities[t["worker_name"]]["blender"] for t in tasks}


# ---- the requirement syntax and the scheduler's rule (pure) ----------------------------------


def test_equals_requirement_matches_the_release_series() -> None:
    assert requirement_met("blender==3.4", {"blender": "3.4.1"})
    assert requirement_met("blender==3.4", {"blender": "3.4"})
    assert requirement_met("blender==4.5.15", {"blender": "4.5.15"})
    assert requirement_met("blender==4.5.0", {"blender": "4.5"})
    assert not requirement_met("blender==3.4", {"blender": "4.5.15"})
    assert not requirement_met("blender==4.5.1", {"blender": "4.5.15"})
    assert not requirement_met("blender==3.4", {"python": "3.11.2"})
    assert not requirement_met("blender==3.4", {"blender": ""})


def _two_version_farm() -> Scheduler:
    scheduler = Scheduler()
    scheduler.register("w34", 1, {"blender": "3.4.1"}, 0.0, worker_id="w34")
    scheduler.register("w45", 1, {"blender": "4.5.15"}, 0.0, worker_id="w45")
    return scheduler


def test_a_render_job_holds_the_version_of_its_first_worker() -> None:
    scheduler = _two_version_farm()
    job = scheduler.submit([TaskSpec({"frame": n}) for n in range(4)], 1.0, kind="blender")
    python = scheduler.submit([TaskSpec({"n": n}) for n in range(2)], 1.0, kind="python")
    assert job.blender_version == ""
    assert [t.job.id for t in scheduler.lease("w45", 1, 2.0)] == [job.id]
    assert job.blender_version == "4.5.15"
    assert job.to_dict()["blender_version"] == "4.5.15"
    # The 3.4 worker gets the python job's tasks, never the render's.
    assert {t.job.id for t in scheduler.lease("w34", 4, 3.0)} == {python.id}
    assert len(scheduler.lease("w45", 4, 4.0)) == 3
    assert python.blender_version == ""


def test_the_held_version_survives_journal_replay_and_snapshot() -> None:
    events = [
        ["register", 0.0, "w34", "w34", 1, {"blender": "3.4.1"}, {}],
        ["register", 0.0, "w45", "w45", 1, {"blender": "4.5.15"}, {}],
        ["submit", 1.0, "j1", [[{"frame": n}, []] for n in range(3)], "", "blender", 0, [], 3,
         "", {}, None],
        ["lease", 2.0, "w34", ["j1.0"]],
    ]  # fmt: skip
    replayed = Scheduler()
    journal.replay(replayed, iter(events))
    assert replayed.jobs["j1"].blender_version == "3.4.1"
    assert replayed.lease("w45", 2, 3.0) == []
    restored = Scheduler()
    snapshot.load(restored, snapshot.dump(replayed))
    assert restored.jobs["j1"].blender_version == "3.4.1"
    assert restored.lease("w45", 2, 3.0) == []
    assert [t.id for t in restored.lease("w34", 2, 3.0)] == ["j1.1", "j1.2"]


def test_frames_claimed_by_pattern_without_extension_and_parts() -> None:
    tiled = [({"output": "a/f_####", "frames": [3]}, []), ({"output": "a/f_####", "frame": 3}, [0])]
    assert outputs.claimed_frames("blender", tiled, {}) == {("a/f_", 4, ""): [3]}
    assert outputs.pattern_key("./a/f_####.PNG") == ("a/f_", 4, "")
    assert outputs.pattern_key("a/f_##_beauty.exr") == ("a/f_", 2, "_beauty")
    assert outputs.claimed_frames("python", tiled, {}) == {}
    claims = outputs.OutputClaims()
    claims.claim("j1", {("a/f_", 4, ""): [1, 2, 3]})
    assert claims.conflict({("a/f_", 4, ""): [4, 5]}, lambda job: True) is None
    assert claims.conflict({("a/f_", 4, ""): [5, 3]}, lambda job: True) == ("j1", "a/f_0003")
    assert claims.conflict({("a/f_", 4, ""): [3]}, lambda job: True, "j1") is None
    assert claims.conflict({("a/f_", 4, ""): [3]}, lambda job: False) is None  # j1 finished
    assert claims.by_job == {} and claims.by_pattern == {}


# ---- both Blenders online at once (real farm, real Blender) ----------------------------------


@needs_binary
@needs_bpy
def test_every_task_of_a_job_runs_on_one_version(two_blenders: Farm, plain_frames: dict) -> None:
    frames_job = _submit(two_blenders, "--frames", "1-6", "--chunk", "1", "--output", "a/f_####")
    tiles_job = _submit(two_blenders, "--frames", "1", "--tiles", "2x2", "--output", "b/f_####")
    for job_id in (frames_job, tiles_job):
        done = two_blenders.cli("wait", job_id, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    for job_id, folder, numbers in ((frames_job, "a", range(1, 7)), (tiles_job, "b", [1])):
        used = _versions_used(two_blenders, job_id)
        assert len(used) == 1, f"job {job_id} ran on {sorted(used)}"
        (version,) = used
        status = two_blenders.client().job(job_id).status()
        assert status["blender_version"] == version
        plain = plain_frames["frames"](version)
        other = plain_frames["frames"](BPY_VERSION if version.startswith("3.") else "3.4")
        for number in numbers:
            farm_frame = pixels(two_blenders.root / folder / f"f_{number:04d}.png")
            assert max_difference(farm_frame, plain[number - 1]) == 0, (job_id, number)
            # The other Blender renders this scene visibly otherwise (mean 7.5, max 102 here).
            assert max_difference(farm_frame, other[number - 1]) > 16
        shown = two_blenders.cli("status", job_id).stdout
        assert f"blender: {version} (every task of the job)" in shown


@pytest.mark.parametrize(
    ("pin", "worker"),
    [
        pytest.param(BINARY_VERSION, "w34", id="pin-3.4", marks=[needs_binary, needs_bpy]),
        pytest.param(BPY_VERSION, "w45", id="pin-4.5", marks=[needs_binary, needs_bpy]),
    ],
)
def test_blender_version_pins_the_job(
    two_blenders: Farm, plain_frames: dict, pin: str, worker: str
) -> None:
    job_id = _submit(
        two_blenders, "--frames", "2-3", "--output", "pinned/f_####", "--blender-version", pin
    )
    done = two_blenders.cli("wait", job_id, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    tasks = two_blenders.client().job(job_id).tasks()
    assert {t["worker_name"] for t in tasks} == {worker}
    (version,) = _versions_used(two_blenders, job_id)
    assert version.startswith(pin + ".")
    plain = plain_frames["frames"](version)
    for number in (2, 3):
        farm_frame = pixels(two_blenders.root / "pinned" / f"f_{number:04d}.png")
        assert max_difference(farm_frame, plain[number - 1]) == 0


@needs_binary
@needs_bpy
def test_the_held_version_survives_a_server_restart(farm: Farm, scene_file: Path) -> None:
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "spin.blend")
    farm.start_worker("--blender", BINARY or "blender", "--max-tasks", "1", name="w34")
    farm.wait_workers(1, timeout=60)
    job_id = _submit(farm, "--frames", "1-2", "--resolution", "16x16", "--samples", "1")
    client = farm.client()
    wait_for(lambda: client.job(job_id).status()["tasks"]["done"] == 1, timeout=300)
    assert client.job(job_id).status()["blender_version"].startswith("3.4.")
    launch.stop(farm.server)  # type: ignore[arg-type]
    farm.start_server(port=farm.port)
    farm.start_worker("--blender", "bpy", name="w45")
    wait_for(
        lambda: any(w["name"] == "w45" and w["state"] != "offline" for w in client.workers()),
        timeout=60,
    )
    status = client.job(job_id).status()
    assert status["blender_version"].startswith("3.4.")
    assert "Blender 3.4." in status["waiting"], status["waiting"]
    assert status["tasks"]["queued"] == 1
    farm.start_worker("--blender", BINARY or "blender", name="w34")
    done = farm.cli("wait", job_id, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [t["worker_name"] for t in client.job(job_id).tasks()] == ["w34", "w34"]


# ---- requirements and the waiting line (no rendering) ----------------------------------------


@pytest.fixture
def scene_farm(farm: Farm, scene_file: Path) -> Iterator[Farm]:
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "spin.blend")
    yield farm


def test_requires_and_pins_reach_the_job(scene_farm: Farm) -> None:
    client = scene_farm.client()
    job = client.render("shots/spin.blend", "1", requires=["gpu", "blender==3.4"])
    assert {"gpu", "blender==3.4"} <= set(job.status()["requires"])
    cli_job = _submit(scene_farm, "--frames", "1", "--output", "o2/f_####", "--requires", "gpu")
    assert "gpu" in client.job(cli_job).status()["requires"]
    pinned = client.render("shots/spin.blend", "1", output="o3/f_####", blender_version="4.5")
    assert "blender==4.5" in pinned.status()["requires"]
    with pytest.raises(FarmError, match="blender version"):
        client.render("shots/spin.blend", "1", output="o4/f_####", blender_version="four")
    bad = scene_farm.cli(
        "submit", "blender", "shots/spin.blend", "--frames", "1", "--blender-version", "4.x"
    )
    assert bad.returncode != 0
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@needs_binary
def test_waiting_line_names_the_pinned_version(scene_farm: Farm) -> None:
    scene_farm.start_worker("--blender", BINARY or "blender", name="w34")
    scene_farm.wait_workers(1, timeout=60)
    job_id = _submit(scene_farm, "--frames", "1", "--blender-version", "9.9")
    status = scene_farm.client().job(job_id).status()
    assert "blender==9.9" in status["waiting"], status["waiting"]
    assert "w34 (blender 3.4." in status["waiting"]


@pytest.mark.skipif(not HAS_BPY, reason="the bpy module is not installed")
def test_waiting_line_suggests_the_bpy_worker(scene_farm: Farm) -> None:
    scene_farm.start_worker("--no-blender", name="plain")
    scene_farm.wait_workers(1)
    job_id = _submit(scene_farm, "--frames", "1")
    shown = scene_farm.cli("status", job_id)
    assert "waiting: no online worker meets blender>=" in shown.stdout
    assert "farm worker --blender bpy" in shown.stdout
    # Not when bpy cannot meet what the job needs.
    too_new = _submit(scene_farm, "--frames", "1", "--output", "n/f_####", "--requires",
                      "blender>=9.0")  # fmt: skip
    assert "--blender bpy" not in scene_farm.cli("status", too_new).stdout


# ---- two unfinished jobs never write the same frames ---------------------------------------


def test_a_second_job_writing_the_same_frames_is_refused(scene_farm: Farm) -> None:
    first = _submit(scene_farm, "--frames", "1-3", "--output", "shot/f_####")
    clash = scene_farm.cli(
        "submit", "blender", "shots/spin.blend", "--frames", "3-5", "--output", "shot/f_####"
    )
    assert clash.returncode != 0
    assert len(clash.stderr.strip().splitlines()) == 1, clash.stderr
    assert first in clash.stderr
    assert len(scene_farm.client().jobs()) == 1  # nothing changed
    # Other frames, or another pattern, or a tiled frame elsewhere: fine.
    _submit(scene_farm, "--frames", "4-5", "--output", "shot/f_####")
    _submit(scene_farm, "--frames", "1-3", "--output", "shot/g_####")
    tiled = scene_farm.cli(
        "submit", "blender", "shots/spin.blend", "--frames", "2", "--tiles", "2x1",
        "--output", "shot/f_####",
    )  # fmt: skip
    assert tiled.returncode != 0 and first in tiled.stderr
    # The claim survives a restart (rebuilt from the journal's jobs).
    launch.stop(scene_farm.server)  # type: ignore[arg-type]
    scene_farm.start_server(port=scene_farm.port)
    again = scene_farm.cli(
        "submit", "blender", "shots/spin.blend", "--frames", "2", "--output", "shot/f_####"
    )
    assert again.returncode != 0 and first in again.stderr
    # A finished (here cancelled) job claims nothing; retrying it then would clash.
    assert scene_farm.cli("cancel", first).returncode == 0
    second = _submit(scene_farm, "--frames", "2", "--output", "shot/f_####")
    retry = scene_farm.cli("retry", first)
    assert retry.returncode != 0 and second in retry.stderr
