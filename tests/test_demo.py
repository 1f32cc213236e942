"""`farm demo`, the first command a new user runs, end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from buildcat.blender import find_blender
from buildcat.imaging import read_png


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in command:
            found.append(command)
    return found


def test_farm_demo_runs_to_completion(tmp_path: Path) -> None:
    root = tmp_path / "demo-root"
    finished = subprocess.run(
        [sys.executable, "-m", "buildcat", "demo", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "demo-worker-1:" in finished.stdout
    assert "demo-worker-2:" in finished.stdout
    assert finished.stdout.rstrip().endswith("Farm stopped.")
    if find_blender() is None:  # a developer's machine without Blender: the fallback job
        image = root / "demo" / "mandelbrot.png"
        assert f"Image: {image}" in finished.stdout
        width, height, rgb = read_png(image)
        assert (width, height) == (960, 640)
    else:
        frames = sorted((root / "demo" / "frames").glob("frame_*.png"))
        assert [f.name for f in frames] == [f"frame_{n:04d}.png" for n in range(1, 25)]
        assert "24/24 tasks" not in finished.stdout  # 8 tasks of 3 frames
        assert "8/8 tasks 100%" in finished.stdout
        sheet = root / "demo" / "contact_sheet.png"
        assert f"Contact sheet: {sheet}" in finished.stdout
        width, height, rgb = read_png(sheet)
        assert (width, height) == (6 * 64 + 7 * 2, 4 * 64 + 5 * 2)
        first, last = read_png(frames[0])[2], read_png(frames[-1])[2]
        assert first != last  # an animation: the frames differ
    assert len(set(rgb[i : i + 3] for i in range(0, len(rgb), 3 * 97))) > 20  # a picture
    assert _processes_mentioning(str(root)) == []


def test_ctrl_c_stops_the_demo_and_leaves_no_process(tmp_path: Path) -> None:
    root = tmp_path / "interrupted"
    demo = subprocess.Popen(
        [sys.executable, "-m", "buildcat", "demo", "--root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a shell job
    )
    assert demo.stdout is not None
    for line in demo.stdout:
        if "demo-worker-2" in line:
            break
    os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    rest = demo.stdout.read()
    demo.stdout.close()
    assert demo.wait(timeout=60) != 0 or "Farm stopped." in rest
    assert "Farm stopped." in rest
    assert "Traceback" not in rest
    assert _processes_mentioning(str(root)) == []
