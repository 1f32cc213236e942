"""The scripts that run inside Blender, run in real Blender: the binary on PATH and bpy.

The bpy cases use the Python in ``$BUILDCAT_BPY_PYTHON`` (default: this one) when it can
``import bpy``; a case is skipped only when its Blender is missing.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[1] / "buildcat" / "blender"
BLENDER = shutil.which("blender")
BPY_PYTHON = os.environ.get("BUILDCAT_BPY_PYTHON") or sys.executable
NO_DENOISER = "buildcat: this Blender has no OpenImageDenoise; denoising turned off for this task"
SIZE = 64  # the demo scene's resolution
TIMEOUT = 120

Rows = list[bytes]


@functools.cache
def bpy_works() -> bool:
    try:
        done = subprocess.run(
            [BPY_PYTHON, "-c", "import bpy"], capture_output=True, timeout=TIMEOUT, check=False
        )
    except OSError:
        return False
    return done.returncode == 0


def need(kind: str) -> None:
    if kind == "binary" and BLENDER is None:
        pytest.skip("no Blender binary on PATH")
    if kind == "bpy" and not bpy_works():
        pytest.skip(f"bpy does not import in {BPY_PYTHON} (set BUILDCAT_BPY_PYTHON)")


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd="/"
    )


def output_of(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def run_script(kind: str, script: str, settings: dict) -> subprocess.CompletedProcess[str]:
    """compose.py or demo_scene.py in the Blender binary or with the bpy module."""
    path = str(SCRIPTS / script)
    document = json.dumps(settings)
    if kind == "binary":
        assert BLENDER is not None
        command = [BLENDER, "-b", "--factory-startup", "--python-exit-code", "1"]
        return run([*command, "--python", path, "--", document])
    return run([BPY_PYTHON, path, document])


def render(
    kind: str, blend: Path, frames: list[int], output: Path, settings: dict, *before: str
) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
    """Render ``frames`` with the overrides; return the process and the expected PNG paths."""
    settings = {"format": "PNG", **settings}
    if kind == "binary":
        assert BLENDER is not None
        done = run(
            [
                BLENDER, "-b", str(blend), *before,
                "--python-exit-code", "1", "--python", str(SCRIPTS / "override.py"),
                "-o", str(output), "-F", settings["format"], "-x", "1",
                "-f", ",".join(map(str, frames)),
                "--", json.dumps(settings),
            ]
        )  # fmt: skip
    else:
        job = {"blend": str(blend), "frames": frames, "output": str(output), "settings": settings}
        done = run([BPY_PYTHON, str(SCRIPTS / "bpy_render.py"), json.dumps(job)])
    pattern = str(output).replace("####", "{:04d}") + ".png"
    return done, [Path(pattern.format(frame)) for frame in frames]


def rendered(kind: str, blend: Path, frame: int, output: Path, settings: dict) -> Path:
    done, [path] = render(kind, blend, [frame], output, settings)
    assert done.returncode == 0, output_of(done)
    assert path.is_file(), output_of(done)
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def read_png(path: Path) -> tuple[int, int, Rows]:
    """An 8-bit RGB PNG's rows (top row first) of R, G, B bytes, read with Pillow."""
    with Image.open(path) as image:
        assert (image.format, image.mode) == ("PNG", "RGB"), "expected 8-bit RGB"
        width, height = image.size
        data = image.tobytes()
    stride = width * 3
    return width, height, [data[y * stride : (y + 1) * stride] for y in range(height)]


def differences(a: Path, b: Path) -> list[int]:
    wa, ha, rows_a = read_png(a)
    wb, hb, rows_b = read_png(b)
    assert (wa, ha) == (wb, hb)
    pairs = zip(b"".join(rows_a), b"".join(rows_b), strict=True)
    return [abs(x - y) for x, y in pairs]


def mean_error(a: Path, b: Path) -> float:
    values = differences(a, b)
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def demo_blend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo scene, 64x64, 4 samples, 3 frames, built by the binary (else by bpy: files
    saved by bpy 4.5 do not open in Blender 3.4)."""
    kind = "binary" if BLENDER is not None else "bpy"
    need(kind)
    path = tmp_path_factory.mktemp("demo") / "demo.blend"
    done = run_script(kind, "demo_scene.py", {"output": str(path), "frames": 3, "samples": 4})
    assert done.returncode == 0, output_of(done)
    assert path.read_bytes()[:7] == b"BLENDER"
    return path


@pytest.mark.parametrize("kind", ["binary", "bpy"])
def test_renders_frames_with_overrides(kind: str, demo_blend: Path, tmp_path: Path) -> None:
    need(kind)
    settings = {"resolution": [32, 32], "engine": "cycles", "samples": 2, "seed": 1}
    done, paths = render(kind, demo_blend, [1, 2], tmp_path / "frame_####", settings)
    text = output_of(done)
    assert done.returncode == 0, text
    assert "buildcat: resolution 32x32" in text
    for path in paths:
        assert png_size(path) == (32, 32)
        assert text.count(f"Saved: '{path}'") == 1, text
    assert max(differences(*paths)) > 64, "the demo scene's frames should differ visibly"


def test_demo_scene_builds_with_bpy(tmp_path: Path) -> None:
    need("bpy")
    path = tmp_path / "demo45.blend"
    done = run_script("bpy", "demo_scene.py", {"output": str(path), "frames": 2})
    assert done.returncode == 0, output_of(done)
    assert path.read_bytes()[:7] == b"BLENDER"


@pytest.mark.parametrize("kind", ["binary", "bpy"])
def test_stitching_one_full_input_reproduces_it(
    kind: str, demo_blend: Path, tmp_path: Path
) -> None:
    need(kind)
    source = rendered(kind, demo_blend, 3, tmp_path / "in_####", {})
    output = tmp_path / "out" / "copy.png"
    settings = {
        "mode": "stitch",
        "inputs": [str(source)],
        "rects": [[0, 0, SIZE, SIZE]],
        "width": SIZE,
        "height": SIZE,
        "output": str(output),
        "format": "PNG",
    }
    done = run_script(kind, "compose.py", settings)
    assert done.returncode == 0, output_of(done)
    assert max(differences(source, output)) <= 1
    assert sorted(p.name for p in output.parent.iterdir()) == ["copy.png"]  # no temporary left


@pytest.mark.parametrize("kind", ["binary", "bpy"])
def test_tiles_stitch_back_into_the_full_frame(kind: str, demo_blend: Path, tmp_path: Path) -> None:
    need(kind)
    full = rendered(kind, demo_blend, 1, tmp_path / "full_####", {"seed": 7})
    half = SIZE // 2
    tiles, rects = [], []
    for x0, y0 in [(0, 0), (half, 0), (0, half), (half, half)]:
        x1, y1 = x0 + half, y0 + half
        # Each border reaches one pixel past its rect, so rounding cannot leave a gap.
        border = [max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, SIZE), min(y1 + 1, SIZE)]
        settings = {"seed": 7, "border": [v / SIZE for v in border]}
        tiles.append(rendered(kind, demo_blend, 1, tmp_path / f"tile{x0}_{y0}_####", settings))
        rects.append([x0, y0, x1, y1])
    assert max(differences(tiles[0], full)) > 64, "a tile alone is not the whole frame"

    stitched = tmp_path / "stitched.png"
    settings = {
        "mode": "stitch",
        "inputs": [str(t) for t in tiles],
        "rects": rects,
        "width": SIZE,
        "height": SIZE,
        "output": str(stitched),
        "format": "PNG",
    }
    done = run_script(kind, "compose.py", settings)
    assert done.returncode == 0, output_of(done)
    assert max(differences(stitched, full)) <= 1  # measured: identical


@pytest.mark.parametrize("kind", ["binary", "bpy"])
def test_merged_sample_splits_beat_each_part(kind: str, demo_blend: Path, tmp_path: Path) -> None:
    need(kind)
    small = {"resolution": [32, 32], "samples": 4}
    parts = [
        rendered(kind, demo_blend, 2, tmp_path / f"seed{seed}_####", {**small, "seed": seed})
        for seed in range(4)
    ]
    reference = rendered(
        kind, demo_blend, 2, tmp_path / "ref_####", {**small, "samples": 64, "seed": 99}
    )
    merged = tmp_path / "merged.png"
    settings = {
        "mode": "merge",
        "inputs": [str(p) for p in parts],
        "width": 32,
        "height": 32,
        "output": str(merged),
        "format": "PNG",
    }
    done = run_script(kind, "compose.py", settings)
    assert done.returncode == 0, output_of(done)
    merged_error = mean_error(merged, reference)
    part_errors = [mean_error(part, reference) for part in parts]
    assert merged_error < min(part_errors), (merged_error, part_errors)


@pytest.mark.parametrize(
    ("kind", "settings", "message"),
    [
        ("binary", {"camera": "NoSuchCamera"}, "no camera named 'NoSuchCamera'"),
        ("bpy", {"camera": "NoSuchCamera"}, "no camera named 'NoSuchCamera'"),
        ("bpy", {"engine": "povray"}, "unknown engine 'povray'"),
        ("bpy", {"scene": "Nowhere"}, "no scene named 'Nowhere'"),
    ],
)
def test_bad_override_fails_the_render(
    kind: str, settings: dict, message: str, demo_blend: Path, tmp_path: Path
) -> None:
    need(kind)
    done, [path] = render(kind, demo_blend, [1], tmp_path / "frame_####", settings)
    assert done.returncode != 0
    # "buildcat: job error: " where the job is wrong (no such scene or camera)
    assert re.search(rf"buildcat: (job )?error: {re.escape(message)}", output_of(done))
    assert not path.exists()


@pytest.mark.parametrize("choose", [True, False])
def test_binary_renders_another_scene_only_when_chosen_with_dash_s(
    choose: bool, demo_blend: Path, tmp_path: Path
) -> None:
    """A script cannot change the scene that ``-f`` renders: it refuses rather than render
    the wrong one."""
    need("binary")
    make_other = "import bpy; bpy.context.scene.copy().name = 'Other'"
    before = ["--python-expr", make_other, *(["-S", "Other"] if choose else [])]
    settings = {"scene": "Other", "resolution": [16, 16]}
    done, [path] = render("binary", demo_blend, [1], tmp_path / "f_####", settings, *before)
    if choose:
        assert done.returncode == 0, output_of(done)
        assert png_size(path) == (16, 16)
    else:
        assert done.returncode != 0
        assert "pass -S 'Other' before --python" in output_of(done)
        assert not path.exists()


def test_missing_denoiser_turns_denoising_off(tmp_path: Path) -> None:
    need("binary")
    blend = tmp_path / "denoised.blend"
    built = run_script(
        "binary", "demo_scene.py", {"output": str(blend), "frames": 1, "denoise": True}
    )
    assert built.returncode == 0, output_of(built)
    probe = "import _cycles; print('oidn:', bool(_cycles.with_openimagedenoise))"
    done, [path] = render(
        "binary", blend, [1], tmp_path / "frame_####", {"resolution": [16, 16]},
        "--python-expr", probe,
    )  # fmt: skip
    text = output_of(done)
    assert done.returncode == 0, text
    assert path.is_file()
    if "oidn: False" in text:
        assert NO_DENOISER in text
    else:
        assert "oidn: True" in text and NO_DENOISER not in text
