"""Helpers for the Blender tests: which Blenders are here, and the processes below a worker."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from buildcat.blender import BPY

BINARY = shutil.which("blender")


def _bpy_works() -> bool:
    done = subprocess.run([sys.executable, "-c", "import bpy"], capture_output=True, check=False)
    return done.returncode == 0


HAS_BPY = _bpy_works()
# A developer's machine may lack a Blender; CI installs both, and there a skip fails.
needs_binary = pytest.mark.skipif(BINARY is None, reason="Debian's blender is not installed")
needs_bpy = pytest.mark.skipif(not HAS_BPY, reason="the bpy module is not installed")
#: ``--blender`` values of both Blenders, each skipped (a failure in CI) where missing.
BOTH_BLENDERS = [
    pytest.param(BINARY or "blender", id="binary-3.4", marks=needs_binary),
    pytest.param(BPY, id="bpy-4.5", marks=needs_bpy),
]


def run_in_blender(blender: str, script: str) -> str:
    """Run a Python script in a real Blender (a binary's path, or ``bpy`` for a Python that
    imports the module); fail the test with Blender's output if it fails; return stdout."""
    if blender == BPY:
        command = [sys.executable, "-c", script]
    else:
        command = [blender, "-b", "--factory-startup", "--python-exit-code", "1",
                   "--python-expr", script]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def _processes() -> tuple[dict[int, int], dict[int, str]]:
    """Parent pid and command line of every process there is now."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
        commands[int(entry.name)] = command.decode(errors="replace").strip()
    return parents, commands


def descendants(ancestor: int) -> dict[int, str]:
    """Every live process below ``ancestor`` (children, theirs, ...), with its command line."""
    parents, commands = _processes()

    def below(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == ancestor:
                return True
        return False

    return {pid: command for pid, command in commands.items() if below(pid) and not gone(pid)}


def power_off(ancestor: int) -> list[int]:
    """SIGKILL ``ancestor`` and every process below it as one, as a machine losing power
    would: the tree is frozen (SIGSTOP) until no new process appears in it, so a Blender
    being started at that moment cannot escape as an orphan, then all of it is killed.
    Returns the pids killed below ``ancestor``."""
    frozen: set[int] = set()
    while True:
        tree = {ancestor, *descendants(ancestor)} - frozen
        if not tree:
            break
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        frozen |= tree
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return sorted(frozen - {ancestor})


def warm_blenders(worker: subprocess.Popen[bytes]) -> list[int]:
    """Pids of the warm Blender processes (``blender/warm.py``) below a worker process."""
    return sorted(pid for pid, command in descendants(worker.pid).items() if "warm.py" in command)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")
