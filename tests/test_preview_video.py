"""Preview videos with real Blender, real farm processes and real ffmpeg: the video a render
ends with (``--preview-video``), one made after the fact (``farm video``), decoded again
with ffprobe and ffmpeg to check what a person would see."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import numpy
import pytest
from PIL import Image

import buildcat
from buildcat.errors import FarmError
from buildcat.ffmpeg import frame_files, frame_rate
from buildcat.jobs import blender as blender_jobs
from buildcat.jobs import video
from buildcat.server.outputs import claimed_frames, pattern_key
from tests.blender_support import BINARY, needs_binary, needs_bpy
from tests.conftest import Farm
from tests.media_support import FPS, SIZE, build_colour_scene, colour_of, mean_colours, probe

#: Padded to even sides for yuv420p.
VIDEO_SIZE = (SIZE[0] + SIZE[0] % 2, SIZE[1] + SIZE[1] % 2)
#: H.264 at CRF 18 of a solid colour comes back within a few levels.
TOLERANCE = 10


@pytest.fixture
def colour_farm(farm: Farm) -> Farm:
    build_colour_scene(BINARY or "bpy", farm.root / "shots" / "colours.blend")
    return farm


def check_video(path: Path, frames: list[int], fps: str = f"{FPS}/1") -> numpy.ndarray:
    stream = probe(path)
    assert stream["codec_name"] == "h264"
    assert stream["pix_fmt"] == "yuv420p"
    assert (stream["width"], stream["height"]) == VIDEO_SIZE
    assert stream["r_frame_rate"] == fps
    assert stream["avg_frame_rate"] == fps
    assert int(str(stream["nb_read_frames"])) == len(frames)
    means = mean_colours(path, *VIDEO_SIZE, crop=SIZE)
    expected = numpy.array([colour_of(frame) for frame in frames], dtype=float)
    assert numpy.abs(means - expected).max() <= TOLERANCE, (means.round(), expected)
    return means


@needs_binary
def test_a_render_ends_with_its_preview_video(colour_farm: Farm) -> None:
    farm = colour_farm
    farm.start_worker("--blender", BINARY or "blender")
    # Gaps and a chunk that straddles one: the video has the frames in order, no holes.
    submitted = farm.cli(
        "submit", "blender", "shots/colours.blend", "--frames", "2,5-8", "--chunk", "2",
        "--preview-video", "--json",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    waited = farm.cli("wait", job_id, timeout=300)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    client = farm.client()
    tasks = client.job(job_id).tasks()
    assert [t["label"] for t in tasks] == ["frames 2,5", "frames 6-7", "frames 8", "preview video"]
    assert tasks[-1]["depends"] == [0, 1, 2]
    folder = farm.root / "renders" / "colours" / "Scene"
    check_video(folder / "preview.mp4", [2, 5, 6, 7, 8])
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
    results = json.loads(farm.cli("results", job_id, "--json").stdout)
    assert results[-1] == {
        "video": "renders/colours/Scene/preview.mp4", "frames": [2, 5, 6, 7, 8], "fps": "12/1",
    }  # fmt: skip
    status = client.job(job_id).status()
    # The video finishes no frame of its own and hides none: every frame counted once.
    assert status["frames"] == {"done": 5, "total": 5}
    assert status["meta"]["preview_video"] == "renders/colours/Scene/preview.mp4"
    assert "ffmpeg" in farm.cli("logs", f"{job_id}.3").stdout


@needs_binary
def test_a_tiled_render_ends_with_a_video_of_its_stitched_frames(colour_farm: Farm) -> None:
    farm = colour_farm
    farm.start_worker("--blender", BINARY or "blender")
    client = farm.client()
    job = client.render(
        "shots/colours.blend", "3-4", output="tiled/f_####", tiles=(2, 1), preview_video=True
    )
    job.wait(timeout=300)
    tasks = job.tasks()
    assert [t["label"] for t in tasks][-1] == "preview video"
    stitches = [i for i, t in enumerate(tasks) if t["label"].endswith("stitch")]
    assert tasks[-1]["depends"] == stitches == [2, 5]
    check_video(farm.root / "tiled" / "preview.mp4", [3, 4])
    assert job.status()["frames"] == {"done": 2, "total": 2}
    assert not (farm.root / "tiled" / ".buildcat-parts").exists()


@needs_bpy
def test_an_exr_render_gives_the_same_picture_as_png(colour_farm: Farm) -> None:
    """EXR frames are linear light: the video applies the sRGB curve, so it looks like the
    PNG render of the same scene (Blender's Standard view), not dark or washed out."""
    farm = colour_farm
    farm.start_worker("--blender", "bpy")
    client = farm.client()
    png = client.render("shots/colours.blend", "1-4", output="png/f_####", preview_video=True)
    exr = client.render(
        "shots/colours.blend", "1-4", output="exr/f_####", format="OPEN_EXR",
        preview_video=True, fps=25,
    )  # fmt: skip
    png.wait(timeout=300)
    exr.wait(timeout=300)
    assert sorted(p.name for p in (farm.root / "exr").glob("f_*")) == [
        f"f_{n:04d}.exr" for n in range(1, 5)
    ]
    from_png = check_video(farm.root / "png" / "preview.mp4", [1, 2, 3, 4])
    from_exr = check_video(farm.root / "exr" / "preview.mp4", [1, 2, 3, 4], fps="25/1")
    assert numpy.abs(from_png - from_exr).max() <= 6


@needs_binary
def test_farm_video_makes_one_after_the_fact(colour_farm: Farm) -> None:
    farm = colour_farm
    farm.start_worker("--blender", BINARY or "blender")
    client = farm.client()
    job = client.render("shots/colours.blend", "1-4", output="later/f_####")
    job.wait(timeout=300)
    assert not (farm.root / "later" / "preview.mp4").exists()
    (farm.root / "later" / "f_0003.png").unlink()  # a frame lost: the video has the others
    made = farm.cli("video", job.id, "--fps", "24", "--wait", timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    video_job = client.job(made.stdout.split()[0])
    assert video_job.results() == [
        {"video": "later/preview.mp4", "frames": [1, 2, 4], "fps": "24/1"}
    ]
    check_video(farm.root / "later" / "preview.mp4", [1, 2, 4], fps="24/1")
    assert video_job.status()["meta"]["video_of"] == job.id
    # Without --fps: the rate the render recorded (the scene's).
    again = job.video()
    assert again.results()[0]["fps"] == f"{FPS}/1"
    check_video(farm.root / "later" / "preview.mp4", [1, 2, 4])


@needs_binary
def test_farm_video_of_a_render_still_running_waits_for_its_end(colour_farm: Farm) -> None:
    farm = colour_farm
    client = farm.client()
    job = client.render("shots/colours.blend", "1-3", output="queued/f_####")
    made = farm.cli("video", job.id, "--json")  # no worker yet: the render has not started
    assert made.returncode == 0, made.stderr
    video_job = client.job(json.loads(made.stdout)["id"])
    assert video_job.status()["state"] == "queued"
    farm.start_worker("--blender", BINARY or "blender")
    video_job.wait(timeout=300)
    assert job.status()["state"] == "done"
    assert video_job.results()[0]["frames"] == [1, 2, 3]
    check_video(farm.root / "queued" / "preview.mp4", [1, 2, 3])


def test_a_worker_without_ffmpeg_fails_the_video_with_one_line(
    farm: Farm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (farm.root / "shots").mkdir()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(farm.root / "shots" / "f_0001.png")
    # This worker finds no ffmpeg: none on PATH, and imageio-ffmpeg's pointed nowhere.
    empty = tmp_path / "no-ffmpeg-here"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(empty / "ffmpeg"))
    farm.start_worker("--no-blender", name="without-ffmpeg")
    task = video.video_task("shots/f_####", [1], 24, depends=[])
    made = farm.client().submit_tasks([task], max_attempts=1)
    with pytest.raises(buildcat.JobFailed):
        made.wait(timeout=120)
    [failed] = made.tasks()
    assert failed["error"].startswith("no ffmpeg on this machine: install one"), failed["error"]
    assert "Traceback" not in failed["error"]
    assert not (farm.root / "shots" / "preview.mp4").exists()


def test_the_video_task_claims_no_frames_and_waits_for_stitches() -> None:
    """Planned with tiles, the video waits for the stitches (which finish frames), not the
    tiles; the frames are still claimed by their stitches, as without a video."""
    tasks = blender_jobs.plan_render(
        "shots/a.blend", [1, 3], output="out/f_####", tiles=(2, 1), preview_video=True, fps=12
    )
    last = tasks[-1]
    assert last["payload"]["kind"] == "python"
    assert last["payload"]["label"] == "preview video"
    stitches = [i for i, t in enumerate(tasks) if t["payload"].get("step") == "stitch"]
    assert last["depends"] == stitches
    listed = [(t["payload"], t.get("depends", [])) for t in tasks]
    assert claimed_frames("blender", listed, {}) == {pattern_key("out/f_####"): [1, 3]}
    plain = blender_jobs.plan_render("shots/a.blend", [1, 2], preview_video=True)
    listed = [(t["payload"], t.get("depends", [])) for t in plain]
    assert claimed_frames("blender", listed, {}) == {pattern_key("renders/a/frame_####"): [1, 2]}


@needs_binary
def test_bad_video_requests_are_refused_with_one_line(colour_farm: Farm) -> None:
    farm = colour_farm
    client = farm.client()
    cases = [
        (["submit", "blender", "shots/colours.blend", "--fps", "24"], "give --preview-video"),
        (
            ["submit", "blender", "shots/colours.blend", "--preview-video", "--fps", "fast"],
            "frame rate 'fast'",
        ),
        (["video", "nosuchjob"], "nosuchjob"),
    ]
    python_job = client.submit("builtins:len", [1, 2])
    cases.append((["video", python_job.id], "is not a render job"))
    cases.append((["contact-sheet", python_job.id], "is not a render job"))
    for args, reason in cases:
        refused = farm.cli(*args)
        assert refused.returncode != 0, args
        assert reason in refused.stderr, (args, refused.stderr)
        assert "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert [job["id"] for job in client.jobs()] == [python_job.id]  # nothing else queued


def test_the_frames_of_a_video_are_those_that_exist_in_order(tmp_path: Path) -> None:
    for name in ("f_0001.png", "f_0002.exr", "f_0004.jpg", "f_0005.txt", "f_0006.png"):
        (tmp_path / name).write_bytes(b"x")
    newer = tmp_path / "f_0002.png"  # frame 2 again, later, in another format: this one
    newer.write_bytes(b"x")
    os.utime(newer, ns=(2**62, 2**62))
    (tmp_path / "f_0006.png").write_bytes(b"")  # an empty file is no frame
    found = frame_files(tmp_path / "f_####", [4, 1, 2, 3, 5, 6, 1])
    assert [(frame, path.name) for frame, path in found] == [
        (4, "f_0004.jpg"), (1, "f_0001.png"), (2, "f_0002.png"),
    ]  # fmt: skip
    assert frame_files(tmp_path / "missing" / "f_####", [1]) == []
    assert frame_rate(24) == 24
    assert frame_rate(24 / 1.001) == Fraction(24000, 1001)
    assert frame_rate("30000/1001") == Fraction(30000, 1001)
    for bad in ("fast", "0", "-24", "1/0", 100_000):
        with pytest.raises(FarmError, match="frame rate"):
            frame_rate(bad)
