"""The single executable: how long it takes to build, how big it is, how fast it starts.

    python benchmarks/binary.py [--runs 10]

Builds both layouts of ``packaging/build.py`` (one file; one folder) into a temporary
folder and prints, for each and for this pip install's ``farm``: the build's seconds
and size, and the median and slowest wall time of ``farm --help`` and of ``farm
--version`` over ``--runs`` starts. For the one-file build it also times a Python child
the executable starts as ``sys.executable`` (what a worker does for each slot): it
reuses the folder its parent unpacked, where a new instance unpacks again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = """
import os, subprocess, sys, time
env = dict(os.environ)
if sys.argv[1] == "fresh":
    env = {k: v for k, v in env.items() if not k.startswith("_PYI_")}
times = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    times.append(time.perf_counter() - started)
print(" ".join(str(t) for t in times))
"""


def build(dist: Path, onedir: bool) -> tuple[Path, float, float]:
    """Build one layout; returns the executable, seconds, MiB."""
    started = time.perf_counter()
    command = [sys.executable, str(HERE.parent / "packaging" / "build.py"), "--dist", str(dist)]
    subprocess.run([*command, *(["--onedir"] if onedir else [])], check=True,
                   capture_output=True, timeout=1800)  # fmt: skip
    seconds = time.perf_counter() - started
    executable = dist / "farm" / "farm" if onedir else dist / "farm"
    files = executable.parent.rglob("*") if onedir else [executable]
    size = sum(p.stat().st_size for p in files if p.is_file()) / 2**20
    return executable, seconds, size


def starts(command: list[str], runs: int) -> list[float]:
    times = []
    with tempfile.TemporaryDirectory(prefix="bench-binary-") as folder:
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(command, cwd=folder, capture_output=True, check=True, timeout=120)
            times.append(time.perf_counter() - started)
    return times


def child_starts(executable: Path, mode: str, runs: int) -> list[float]:
    done = subprocess.run([str(executable), "-c", CHILD, mode, str(runs)], check=True,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    return [float(t) for t in done.stdout.split()]


def line(label: str, times: list[float]) -> str:
    return (f"{label:<58} median {statistics.median(times) * 1000:6.0f} ms, "
            f"slowest {max(times) * 1000:6.0f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    options = parser.parse_args()
    pip_farm = shutil.which("farm", path=os.path.dirname(sys.executable))
    with tempfile.TemporaryDirectory(prefix="bench-binary-") as folder:
        onefile, onefile_s, onefile_mb = build(Path(folder) / "onefile", onedir=False)
        onedir, onedir_s, onedir_mb = build(Path(folder) / "onedir", onedir=True)
        print(f"one file:   built in {onefile_s:.0f} s, {onefile_mb:.1f} MiB")
        print(f"one folder: built in {onedir_s:.0f} s, {onedir_mb:.1f} MiB")
        for flag in ("--help", "--version"):
            if pip_farm:
                print(line(f"farm {flag}, pip install", starts([pip_farm, flag], options.runs)))
            print(line(f"farm {flag}, one file", starts([str(onefile), flag], options.runs)))
            print(line(f"farm {flag}, one folder", starts([str(onedir), flag], options.runs)))
        reused = child_starts(onefile, "reused", options.runs)
        fresh = child_starts(onefile, "fresh", options.runs)
        print(line("one file: a child as sys.executable (reuses the unpack)", reused))
        print(line("one file: a new instance (unpacks again)", fresh))


if __name__ == "__main__":
    main()
