"""Absurd jobs are refused at once, before anything is built or sent: one line naming the
documented limit. Each refusal runs with its address space capped (``prlimit --as``), so
a client that built the job first (gigabytes, for the jobs below) could not answer at
all."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import buildcat
from tests.conftest import Farm, secret_header

#: Enough for the farm command and a million frame numbers, far from enough to build a
#: million tasks (today's client took 1.1-2.0 GB for the jobs below).
ADDRESS_SPACE = 300_000_000


@pytest.fixture
def shot_farm(farm: Farm, scene_file: Path) -> Farm:
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "a.blend")
    return farm


def capped_submit(farm: Farm, *args: str) -> subprocess.CompletedProcess[str]:
    """``farm submit blender shots/a.blend ARGS`` with its memory capped."""
    return subprocess.run(
        ["prlimit", f"--as={ADDRESS_SPACE}", sys.executable, "-m", "buildcat",
         "submit", "blender", "shots/a.blend", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FARM_HOST": "127.0.0.1", "FARM_PORT": str(farm.port),
             "BUILDCAT_ROOT": str(farm.root)},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--frames", "1", "--tiles", "1000x1000"],
            "tiles 1000x1000: at most 64 tiles along each side (4,096 a frame)",
        ),
        (
            ["--frames", "0-999999", "--chunk", "1"],
            "this job would be 1,000,000 tasks, about 106 MiB to send",  # renders/a/Scene/...
        ),
        (
            ["--frames", "1", "--resolution", "100000x100000"],
            "resolution 100000x100000: each side is 4 to 65,536 pixels (Blender's own range)",
        ),
        (
            ["--frames", "1", "--samples", "99999999"],
            "samples 99999999: Cycles takes 1 to 16,777,216 samples",
        ),
        (
            ["--frames", "0-999999", "--tiles", "2x2"],
            "this render would be 5,000,000 tasks; a job may have at most 1,000,000: render "
            "more frames per task (--chunk) or fewer frames",
        ),
    ],
    ids=["tiles", "million-tasks", "resolution", "samples", "tiles-times-frames"],
)
def test_an_absurd_render_is_one_line_before_anything_is_built(
    shot_farm: Farm, args: list[str], line: str
) -> None:
    refused = capped_submit(shot_farm, *args)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith(f"farm: error: {line}")
    assert len(refused.stderr.strip().splitlines()) == 1
    assert shot_farm.client().jobs() == []


def test_the_size_refusal_says_how_big_and_what_to_do(shot_farm: Farm) -> None:
    refused = capped_submit(shot_farm, "--frames", "0-999999", "--chunk", "1")
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(
        "MiB to send; a request may be at most 32 MiB: render more frames per task (--chunk), "
        "or fewer frames or tiles"
    )


def test_jobs_at_the_limits_are_taken(shot_farm: Farm) -> None:
    client = shot_farm.client()
    # Its own output: two unfinished jobs may not write the same frame.
    tiled = client.render(
        "shots/a.blend", "1", tiles=(64, 64), resolution=(65_536, 4), output="tiled/frame_####"
    )
    assert tiled.status()["total"] == 64 * 64 + 1
    many = capped_submit(shot_farm, "--frames", "0-99999", "--chunk", "10", "--json")
    assert many.returncode == 0, many.stderr
    job = client.job(json.loads(many.stdout)["id"])
    assert job.status()["total"] == 10_000
    for each in (tiled, job):
        each.cancel()  # nobody is to render these


def test_the_python_api_refuses_the_same_before_sending(shot_farm: Farm) -> None:
    client = shot_farm.client()
    with pytest.raises(buildcat.FarmError, match="at most 64 tiles along each side"):
        client.render("shots/a.blend", "1", tiles=(1000, 1000))
    with pytest.raises(buildcat.FarmError, match="each side is 4 to 65,536 pixels"):
        client.render("shots/a.blend", "1", resolution=(100_000, 100_000))
    with pytest.raises(
        buildcat.FarmError, match="this job would be 1,000,001 tasks; a job may have at most"
    ):
        client.map("farm_jobs:square", range(1_000_001))
    with pytest.raises(buildcat.FarmError, match=r"about 39 MiB to send; a request may be at"):
        client.map("farm_jobs:echo", ["x" * 1000] * 40_000)
    with pytest.raises(buildcat.FarmError, match=r"1,000,000 tasks, about \d+ MiB to send"):
        client.map_frames("farm_jobs:square", "1-1000000", chunk=1, kwargs={"pad": "x" * 30})
    assert client.jobs() == []


def test_the_server_refuses_the_same_settings_from_any_client(farm: Farm) -> None:
    task = {
        "payload": {
            "step": "render",
            "scene": "shots/a.blend",
            "frames": [1],
            "output": "renders/a/frame_####",
            "settings": {"resolution": [100_000, 100_000]},
        }
    }
    body = json.dumps({"kind": "blender", "tasks": [task]}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    connection.request(
        "POST",
        "/api/v1/jobs",
        body=body,
        headers={"Content-Type": "application/json", **secret_header(farm.root)},
    )
    response = connection.getresponse()
    reply = json.loads(response.read())
    connection.close()
    assert response.status == 400
    assert reply["error"] == (
        "task 0: resolution 100000x100000: each side is 4 to 65,536 pixels (Blender's own range)"
    )
    assert farm.client().jobs() == []
