"""Restart benchmark: how long ``farm server`` takes to replay a big journal, and its peak memory.

Two journals, written in the server's own record format: a *flood* (one job, then pause
requests whose ``worker`` field is 30 MB each, as a dashboard cookie could send them) and
a *busy* one (jobs submitted, leased and completed, one task each). For each, the server
is started on it, timed until it listens, and its peak RSS (``VmHWM``) read.
Run: ``python benchmarks/restart.py [--flood-records 6] [--jobs 100000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import msgpack

from buildcat import launch

HEADER = struct.Struct(">II")


def record(event: list[Any]) -> bytes:
    body = msgpack.packb(event, use_bin_type=True)
    return HEADER.pack(len(body), zlib.crc32(body)) + body


def flood_journal(path: Path, records: int, megabytes: int) -> int:
    now = time.time()
    worker = "w" * (megabytes * 1024 * 1024)
    with open(path, "wb") as handle:
        handle.write(record(["generation", 0]))
        handle.write(record(["submit", now, "f100d", [[{"args": [1]}, []]], "farm_jobs:square",
                             "python", 0, [], 3, "me@host", {}, None]))  # fmt: skip
        for _ in range(records):
            handle.write(record(["pause", now, "f100d", worker]))
    return 1


def busy_journal(path: Path, jobs: int) -> int:
    now = time.time()
    worker = "w-bench"
    with open(path, "wb") as handle:
        handle.write(record(["generation", 0]))
        handle.write(record(["register", now, worker, "bench", 8, {"python": "3.11"}, {}]))
        for n in range(jobs):
            job = f"{n:08x}"
            handle.write(record(["submit", now, job, [[{"args": [n]}, []]], "farm_jobs:square",
                                 "python", 0, [], 3, "me@host", {}, None]))  # fmt: skip
            handle.write(record(["lease", now, worker, [f"{job}.0"]]))
            handle.write(record(["complete", now, worker, f"{job}.0", n * n, "", now, 0.001]))
    return jobs


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def restart(root: Path, log: Path) -> tuple[float, int]:
    started = time.perf_counter()
    with launch.free_log(log) as handle:
        server, _ = launch.start_server(root, "--no-discovery", log=handle, timeout=600)
    seconds = time.perf_counter() - started
    peak = peak_rss(server.pid)
    launch.stop(server)
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flood-records", type=int, default=6)
    parser.add_argument("--flood-megabytes", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="buildcat-restart-") as folder:
        for name in ("flood", "busy"):
            root = Path(folder) / name
            (root / ".buildcat").mkdir(parents=True)
            journal = root / ".buildcat" / "journal.bin"
            if name == "flood":
                flood_journal(journal, args.flood_records, args.flood_megabytes)
            else:
                busy_journal(journal, args.jobs)
            size = journal.stat().st_size
            pristine = journal.read_bytes() if size < 2**31 else b""
            runs = []
            for _ in range(args.rounds):
                journal.write_bytes(pristine)  # each run replays the same journal from scratch
                (root / ".buildcat" / "snapshot.bin").unlink(missing_ok=True)
                runs.append(restart(root, Path(folder) / f"{name}.log"))
            seconds = statistics.median(run[0] for run in runs)
            peak = max(run[1] for run in runs)
            figures[name] = {
                "journal_bytes": size,
                "restart_seconds_median": round(seconds, 2),
                "peak_rss_bytes": peak,
            }
            print(
                f"{name:5}  journal {size / 2**20:7.1f} MiB  restart {seconds:6.2f} s (median of "
                f"{args.rounds})  peak RSS {peak / 2**20:6.1f} MiB"
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
