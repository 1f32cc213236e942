"""What Blender jobs promise about their outputs and inputs, with both real Blenders: JPEG and
OpenEXR frames, EEVEE under each version's name, .blend versions inside compressed files,
the scene's own frame range, and a Blender started per task (``BUILDCAT_BLENDER_WARM=0``)."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildcat.blender import BPY, blend_file_version
from buildcat.imaging import read_rgb as read_png
from tests.blender_support import (
    BINARY,
    BOTH_BLENDERS,
    descendants,
    gone,
    needs_binary,
    needs_bpy,
)
from tests.conftest import Farm


@pytest.fixture
def blender_farm(farm: Farm, scene_file: Path) -> Iterator[Farm]:
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "spin.blend")
    yield farm


def _worker_with(farm: Farm, blender: str) -> subprocess.Popen[bytes]:
    worker = farm.start_worker("--blender", blender)
    farm.wait_workers(1)
    return worker


def jpeg_size(data: bytes) -> tuple[int, int, int]:
    """Width, height and colour components from a JPEG's start-of-frame segment."""
    assert data[:3] == b"\xff\xd8\xff", data[:4]  # SOI, then a marker
    at = 2
    while at + 4 <= len(data):
        assert data[at] == 0xFF, f"no marker at byte {at}"
        marker = data[at + 1]
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height, data[at + 9]
        at += 2 + length
    raise AssertionError("no start-of-frame segment in the JPEG")


def exr_header(data: bytes) -> dict[str, bytes]:
    """The attributes of an OpenEXR file's header, by name (the raw value bytes)."""
    assert data[:4] == b"\x76\x2f\x31\x01", data[:4]  # the OpenEXR magic number
    at = 8  # magic, then version and flags
    attributes: dict[str, bytes] = {}
    while data[at] != 0:
        name_end = data.index(b"\0", at)
        type_end = data.index(b"\0", name_end + 1)
        (size,) = struct.unpack("<i", data[type_end + 1 : type_end + 5])
        attributes[data[at:name_end].decode()] = data[type_end + 5 : type_end + 5 + size]
        at = type_end + 5 + size
    return attributes


def exr_size_and_channels(data: bytes) -> tuple[int, int, dict[str, int]]:
    """Width, height and {channel: pixel type (0 uint, 1 half, 2 float)} of an OpenEXR file."""
    header = exr_header(data)
    x_min, y_min, x_max, y_max = struct.unpack("<4i", header["dataWindow"])
    channels: dict[str, int] = {}
    listing = header["channels"]
    at = 0
    while listing[at] != 0:
        name_end = listing.index(b"\0", at)
        (pixel_type,) = struct.unpack("<i", listing[name_end + 1 : name_end + 5])
        channels[listing[at:name_end].decode()] = pixel_type
        at = name_end + 1 + 16  # type, pLinear + 3 reserved, x and y sampling
    return x_max - x_min + 1, y_max - y_min + 1, channels


@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_jpeg_and_openexr_frames_are_those_formats_at_the_asked_size(
    blender_farm: Farm, blender: str
) -> None:
    _worker_with(blender_farm, blender)
    farm = blender_farm.client()
    common = {"resolution": (40, 24), "samples": 2}
    jpeg = farm.render("shots/spin.blend", "3", format="JPEG", output="jpeg/f_####", **common)
    exr = farm.render("shots/spin.blend", "3", format="OPEN_EXR", output="exr/f_####", **common)
    jpeg.wait(timeout=300)
    exr.wait(timeout=300)
    assert jpeg.results()[0]["outputs"] == ["jpeg/f_0003.jpg"]
    assert exr.results()[0]["outputs"] == ["exr/f_0003.exr"]
    assert jpeg_size((blender_farm.root / "jpeg" / "f_0003.jpg").read_bytes()) == (40, 24, 3)
    width, height, channels = exr_size_and_channels(
        (blender_farm.root / "exr" / "f_0003.exr").read_bytes()
    )
    assert (width, height) == (40, 24)
    # --format changes the format only: the scene's RGB stays, and Blender's nearest depth
    # to the scene's 8 bits in EXR is 32-bit float.
    assert channels == {"B": 2, "G": 2, "R": 2}


#: Each Blender, the version it is, and its name for EEVEE.
VERSIONS = [
    pytest.param(BINARY or "blender", "3.4", "BLENDER_EEVEE", id="binary-3.4", marks=needs_binary),
    pytest.param(BPY, "4.5", "BLENDER_EEVEE_NEXT", id="bpy-4.5", marks=needs_bpy),
]


@pytest.mark.parametrize(("blender", "version", "eevee"), VERSIONS)
def test_eevee_renders_with_each_blenders_own_eevee(
    blender_farm: Farm, blender: str, version: str, eevee: str
) -> None:
    _worker_with(blender_farm, blender)
    farm = blender_farm.client()
    [worker] = farm.workers()
    assert worker["capabilities"]["blender"].startswith(f"{version}.")
    job = farm.render("shots/spin.blend", "1", engine="eevee", samples=2, resolution=(16, 16))
    job.wait(timeout=300)
    log = farm.log(f"{job.id}.0")
    assert f"buildcat: engine {eevee}\n" in log
    # EEVEE's own progress line; Cycles would count "Sample N/M" instead.
    assert "Rendering 2 / 2 samples" in log
    assert not re.search(r"Sample \d+/\d+", log)
    (output,) = job.results()[0]["outputs"]
    assert read_png(blender_farm.root / output)[:2] == (16, 16)


def _run_in(blender: str, script: str) -> None:
    """Run a Python script in a real Blender: the binary, or a Python importing bpy."""
    if blender == BPY:
        command = [sys.executable, "-c", f"import bpy\n{script}"]
    else:
        command = [blender, "-b", "--factory-startup", "--python-exit-code", "1",
                   "--python-expr", f"import bpy\n{script}"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.parametrize(("blender", "version", "eevee"), VERSIONS)
def test_the_saving_version_is_read_from_zstd_and_gzip_blend_files(
    blender: str, version: str, eevee: str, tmp_path: Path
) -> None:
    plain, zstd, gzipped = tmp_path / "plain.blend", tmp_path / "zstd.blend", tmp_path / "gz.blend"
    _run_in(
        blender,
        f"bpy.ops.wm.save_as_mainfile(filepath={str(plain)!r}, compress=False)\n"
        f"bpy.ops.wm.save_as_mainfile(filepath={str(zstd)!r}, compress=True)",
    )
    # Blender before 3.0 compressed with gzip: the same file, gzipped.
    gzipped.write_bytes(gzip.compress(plain.read_bytes()))
    assert plain.read_bytes()[:7] == b"BLENDER"
    assert zstd.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # Blender's compression: zstd
    assert gzipped.read_bytes()[:2] == b"\x1f\x8b"
    assert [blend_file_version(path) for path in (plain, zstd, gzipped)] == [version] * 3


@needs_binary
@needs_bpy
def test_a_submit_without_frames_renders_the_scenes_own_range(blender_farm: Farm) -> None:
    scene = blender_farm.root / "shots" / "range.blend"
    _run_in(
        BINARY or "blender",
        f"bpy.ops.wm.open_mainfile(filepath={str(blender_farm.root / 'shots' / 'spin.blend')!r})\n"
        "scene = bpy.context.scene\n"
        "scene.frame_start, scene.frame_end, scene.frame_step = 2, 6, 2\n"
        f"bpy.ops.wm.save_as_mainfile(filepath={str(scene)!r})",
    )
    blender_farm.start_worker()
    options = ("--resolution", "16x16", "--samples", "1", "--json")
    # The submitting machine reads the range with its Blender: the binary, then bpy.
    by_binary = blender_farm.cli("submit", "blender", "shots/range.blend", *options)
    by_bpy = blender_farm.cli(
        "submit", "blender", "shots/range.blend", "--output", "bpy/frame_####", *options,
        BLENDER=BPY,
    )  # fmt: skip
    assert by_binary.returncode == 0, by_binary.stderr
    assert by_bpy.returncode == 0, by_bpy.stderr
    farm = blender_farm.client()
    for submitted, folder in ((by_binary, "renders/range/Scene"), (by_bpy, "bpy")):
        job = farm.job(json.loads(submitted.stdout)["id"])
        job.wait(timeout=300)
        assert [t["label"] for t in job.tasks()] == ["frames 2", "frames 4", "frames 6"]
        written = sorted(path.name for path in (blender_farm.root / folder).glob("*.png"))
        assert written == ["frame_0002.png", "frame_0004.png", "frame_0006.png"]


@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_blender_warm_0_starts_a_blender_for_each_task(
    blender_farm: Farm, blender: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDCAT_BLENDER_WARM", "0")
    worker = _worker_with(blender_farm, blender)
    farm = blender_farm.client()
    job = farm.render("shots/spin.blend", "1-3", chunk=1, resolution=(16, 16), samples=1)
    job.wait(timeout=300)
    pids = []
    for frame, task in enumerate(job.tasks(), start=1):
        log = farm.log(task["id"])
        assert "buildcat: starting" not in log and "buildcat: reusing" not in log
        assert re.search(rf"buildcat: .* \.\.\. frames {frame}\n", log), log[:500]
        [pid] = re.findall(r"buildcat: Blender started, pid (\d+)", log)
        pids.append(int(pid))
        assert re.search(rf"Saved: '.*_{frame:04d}\.png'", log)
    assert len(set(pids)) == 3  # a Blender of its own for each task
    assert all(gone(pid) for pid in pids)  # each left with its task
    # Nothing but the worker's child processes is left below it: no warm Blender.
    left = descendants(worker.pid).values()
    assert all("buildcat.worker.child" in command for command in left), left
    frames = [read_png(blender_farm.root / "renders" / "spin" / "Scene" / f"frame_{n:04d}.png")
              for n in (1, 2, 3)]  # fmt: skip
    assert all(frame[:2] == (16, 16) for frame in frames)
    assert len({bytes(frame[2]) for frame in frames}) == 3  # the cube moves: three pictures
