"""The README's pipeline tutorial (render, preview video, notice), run as a user pastes it:
the block is taken from README.md and run by bash against a real farm with a real worker,
Blender and ffmpeg; only the hook's port is changed, to one that is free here."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Farm, unused_port, wait_for

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- tested by tests/test_readme_pipeline.py, which runs this block as it is -->"


def pipeline_block() -> str:
    text = README.read_text()
    assert MARKER in text, "the README's pipeline block lost its marker"
    after = text.split(MARKER, 1)[1]
    found = re.match(r"\s*```sh\n(.*?)\n```", after, re.S)
    assert found, "no ```sh block right after the marker"
    return found.group(1)


def probe(path: Path) -> dict[str, str]:
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
         "stream=codec_name,pix_fmt,nb_read_frames", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    stream: dict[str, str] = json.loads(done.stdout)["streams"][0]
    return stream


@pytest.mark.timeout(600)  # 24 frames in Blender and a video, on a busy 2-core machine
def test_the_readme_pipeline_renders_makes_a_video_delivers_it_and_notifies(
    farm: Farm, scene_file: Path
) -> None:
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "spinning.blend")
    farm.start_worker()
    port = unused_port(avoid={farm.port})
    block = pipeline_block()
    assert block.count("8900") == 2  # the hook listens there and HOOK names it
    script = block.replace("8900", str(port))
    output = farm.logs / "pipeline.out"
    environment = {
        **os.environ,
        "FARM_HOST": "127.0.0.1",
        "FARM_PORT": str(farm.port),
        "BUILDCAT_ROOT": str(farm.root),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with output.open("w") as sink:
        shell = subprocess.Popen(
            ["bash", "-c", script], cwd=farm.root, env=environment, stdout=sink,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        code = shell.wait(timeout=540)
        assert code == 0, output.read_text()
        client = farm.client()
        jobs = {job["kind"]: job for job in client.jobs()}
        assert sorted(jobs) == ["blender", "command"]
        assert all(job["state"] == "done" for job in jobs.values())
        # Each job's end reached the hook, once (it prints as the notices arrive).
        expected = {f"notice: {job['id']} done" for job in jobs.values()}
        wait_for(lambda: expected <= set(output.read_text().splitlines()), timeout=60)
        notices = [line for line in output.read_text().splitlines() if line.startswith("notice")]
        assert sorted(notices) == sorted(expected)
    finally:
        os.killpg(shell.pid, signal.SIGTERM)  # the hook the block left running
    video = farm.root / "delivery" / "preview.mp4"
    assert video.is_file()
    stream = probe(video)
    assert stream["codec_name"] == "h264"
    assert stream["pix_fmt"] == "yuv420p"
    assert int(stream["nb_read_frames"]) == 24
    sheet = farm.root / "renders" / "spinning" / "Scene" / "contact-sheet.png"
    assert sheet.is_file()
    assert "renders/spinning/Scene/contact-sheet.png" in output.read_text()
