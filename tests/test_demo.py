"""`farm demo`, the first command a new user runs, end to end: the Blender animation, the
Mandelbrot fallback a machine without Blender gets (`--no-blender`), and Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from buildcat import imaging
from buildcat.blender import find_blender
from buildcat.imaging import read_rgb as read_png
from tests.conftest import wait_for

SHIM = '''#!{python}
"""Stands in front of the real Blender: notes every call, and holds a render until the
test opens the gate (so a test knows the demo is mid-render, on any machine). With no
real Blender it is only a tripwire: it notes the call, answers --version (so that what
calls it goes on, and the test sees the call) and fails anything else."""
import os, sys, time
with open({calls!r}, "a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "\\n")
if {blender!r} is None:
    if "--version" in sys.argv:
        sys.exit(print("Blender 4.5.0"))
    sys.exit("not Blender: a tripwire")
probe = "--version" in sys.argv or any(a.endswith("demo_scene.py") for a in sys.argv)
if not probe and {hold!r}:
    open({held!r}, "w").write(str(os.getpid()))
    while not os.path.exists({gate!r}):
        time.sleep(0.02)
os.execv({blender!r}, [{blender!r}, *sys.argv[1:]])
'''


def _blender_shim(folder: Path, hold: bool = False, real: str | None = None) -> dict[str, str]:
    """Environment that makes every Blender the demo or its workers look for this shim: it
    logs its calls to ``folder/calls``, then runs the ``real`` Blender; with ``hold``, a
    render first marks ``folder/held`` and waits for ``folder/go``."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "blender"
    shim.write_text(
        SHIM.format(
            python=sys.executable,
            calls=str(folder / "calls"),
            hold=hold,
            held=str(folder / "held"),
            gate=str(folder / "go"),
            blender=real,
        )
    )
    shim.chmod(0o755)
    return {
        **os.environ,
        "BLENDER": str(shim),
        "PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}",
    }


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


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time in clock ticks) of every process now."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def _descendants(pid: int) -> set[tuple[int, str]]:
    """(pid, start time) of every process below ``pid``: the start time tells a process
    from a later one that reuses its pid."""
    table = _process_table()
    found: set[tuple[int, str]] = set()
    parents = [pid]
    while parents:
        parent = parents.pop()
        for child, (ppid, started) in table.items():
            if ppid == parent and (child, started) not in found:
                found.add((child, started))
                parents.append(child)
    return found


def _still_running(processes: set[tuple[int, str]]) -> set[tuple[int, str]]:
    table = _process_table()
    return {(pid, started) for pid, started in processes if table.get(pid, (0, ""))[1] == started}


def _wait_ended(processes: set[tuple[int, str]], timeout: float = 10.0) -> None:
    try:
        wait_for(lambda: not _still_running(processes), timeout)
    except AssertionError:
        left = []
        for pid, _ in _still_running(processes):
            with contextlib.suppress(OSError):
                left.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "))
        raise AssertionError(f"still running {timeout}s after the demo ended: {left}") from None


def _per_worker(stdout: str, heading: str, unit: str) -> dict[str, int]:
    """The demo's "<heading>" block: worker name -> how many tasks it says it ran."""
    lines = stdout.splitlines()
    block = lines[lines.index(heading) + 1 :]
    counts = {}
    for line in block:
        match = re.fullmatch(rf"  (\S+): (\d+) {unit}\b.*", line)
        if match is None:
            break
        counts[match[1]] = int(match[2])
    return counts


def _check_mandelbrot(stdout: str, root: Path) -> None:
    """The fallback job: 16 tiles and one assemble task, shown and assembled right."""
    submitted = re.search(r"^Submitted job (\w+): 16 tiles and one assemble task$", stdout, re.M)
    assert submitted, stdout
    assert re.search(rf"^{submitted[1]} done: 17/17 tasks 100%", stdout, re.M), stdout
    # Every tile is counted once, each by a worker of this demo.
    tiles = _per_worker(stdout, "Tiles rendered per worker:", "tiles")
    assert sum(tiles.values()) == 16, stdout
    assert set(tiles) <= {"demo-worker-1", "demo-worker-2"}, stdout
    image = root / "demo" / "mandelbrot.png"
    assert f"Image: {image} (960x640 PNG)" in stdout
    assert f"Tiles: {root / 'demo' / 'tiles'}" in stdout
    assert len(list((root / "demo" / "tiles").glob("tile_*.rgb"))) == 16
    width, height, rgb = read_png(image)
    assert (width, height) == (960, 640)
    # The tiles, pasted where they belong, are the whole picture rendered in one go.
    assert rgb == imaging.mandelbrot_rgb(960, 640, 0, 0, 960, 640)
    assert len(set(rgb[i : i + 3] for i in range(0, len(rgb), 3 * 97))) > 20  # a picture


def _check_animation(stdout: str, root: Path) -> None:
    frames = sorted((root / "demo" / "frames").glob("frame_*.png"))
    assert [f.name for f in frames] == [f"frame_{n:04d}.png" for n in range(1, 25)]
    assert "24/24 tasks" not in stdout  # 8 tasks of 3 frames
    assert "8/8 tasks 100%" in stdout
    # Every task is counted once, each by a worker of this demo.
    tasks = _per_worker(stdout, "Tasks rendered per worker:", "tasks")
    assert sum(tasks.values()) == 8, stdout
    assert set(tasks) <= {"demo-worker-1", "demo-worker-2"}, stdout
    sheet = root / "demo" / "contact_sheet.png"
    assert f"Contact sheet: {sheet}" in stdout
    width, height, rgb = read_png(sheet)
    # 24 thumbnails 64 pixels wide, 6 a row, each with its frame number below it.
    gap, label = imaging.SHEET_GAP, imaging.sheet_label_height()
    assert (width, height) == (6 * (64 + gap) + gap, 4 * (64 + label + gap) + gap)
    assert len(set(rgb[i : i + 3] for i in range(0, len(rgb), 3 * 97))) > 20  # a picture
    first, last = read_png(frames[0])[2], read_png(frames[-1])[2]
    assert first != last  # an animation: the frames differ


def test_farm_demo_runs_to_completion(tmp_path: Path) -> None:
    root = tmp_path / "demo-root"
    finished = subprocess.run(
        [sys.executable, "-m", "buildcat", "demo", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert finished.stdout.rstrip().endswith("Farm stopped.")
    if find_blender() is None:  # a developer's machine without Blender: the fallback job
        assert "No Blender here" in finished.stdout
        _check_mandelbrot(finished.stdout, root)
    else:
        _check_animation(finished.stdout, root)
    assert _processes_mentioning(str(root)) == []


def test_farm_demo_without_blender_renders_the_mandelbrot_in_tiles(tmp_path: Path) -> None:
    root = tmp_path / "no-blender"
    shim = tmp_path / "shim"
    finished = subprocess.run(
        [sys.executable, "-m", "buildcat", "demo", "--no-blender", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_blender_shim(shim),  # a tripwire: nothing may call it
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    lines = finished.stdout.splitlines()
    assert lines[0] == f"Starting a local farm in {root} ..."
    assert "Without Blender (--no-blender): rendering a Mandelbrot image in tiles." in lines
    assert lines[-1] == "Farm stopped."
    _check_mandelbrot(finished.stdout, root)
    # Every Blender the demo or its workers could find is the tripwire, and none of them
    # started it, not even to ask its version.
    assert not (shim / "calls").exists(), (shim / "calls").read_text()
    assert _processes_mentioning(str(root)) == []


def test_ctrl_c_stops_the_demo_and_leaves_no_process(tmp_path: Path) -> None:
    real = find_blender(allow_bpy=False)
    if real is None:
        pytest.skip("no Blender binary installed")
    root = tmp_path / "interrupted"
    shim = tmp_path / "shim"
    demo = subprocess.Popen(
        [sys.executable, "-m", "buildcat", "demo", "--root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a shell job
        env=_blender_shim(shim, hold=True, real=real.path),
    )
    assert demo.stdout is not None
    seen: set[tuple[int, str]] = set()
    try:
        for line in demo.stdout:
            if line.startswith("Submitted job"):
                break

        # A worker is starting Blender for a task, and the shim holds it there: the
        # demo is certainly mid-render when Ctrl-C comes.
        def rendering() -> bool:
            seen.update(_descendants(demo.pid))
            return (shim / "held").exists()

        wait_for(rendering, timeout=120)
        seen.update(_descendants(demo.pid))
        assert len(seen) >= 4  # the server, two workers, their task processes, Blender
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rest = demo.stdout.read()
        status = demo.wait(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        demo.stdout.close()
    try:
        assert status == 130, rest
        assert rest.splitlines()[-2:] == ["Farm stopped.", "farm: interrupted"], rest
        assert "Contact sheet:" not in rest and "Traceback" not in rest
        # Every process the demo started, Blender (held in the shim) included, has ended.
        assert any(int((shim / "held").read_text()) == pid for pid, _ in seen)
        _wait_ended(seen)
        assert _processes_mentioning(str(root)) == []
    finally:
        for pid, _ in _still_running(seen):  # what a failing build left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
