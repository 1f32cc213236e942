"""Chaos with real processes: workers and the server are SIGKILLed during a job of 200
tasks. At the end every task is done exactly once and every output file is whole."""

from __future__ import annotations

import random
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import buildcat
from buildcat.server.journal import read_events
from tests.conftest import Farm

HERE = Path(__file__).parent
TASKS = 200


def test_nothing_is_lost_when_processes_die(tmp_path: Path) -> None:
    farm = Farm(root=tmp_path / "root", logs=tmp_path / "logs")
    farm.root.mkdir()
    shutil.copy(HERE / "farm_jobs.py", farm.root / "farm_jobs.py")
    server_options = ("--lease-timeout", "2")
    farm.start_server(*server_options)
    rng = random.Random(7)
    kills = restarts = 0
    try:
        for _ in range(3):
            farm.start_worker("--no-blender")
        client = farm.client()
        job = client.map("farm_jobs:chaos_task", range(TASKS))
        started = time.monotonic()
        restart_at = [started + 2.0, started + 5.0]
        next_kill = started + 1.0
        deadline = started + 240
        state = "queued"
        while state not in ("done", "failed", "cancelled"):
            now = time.monotonic()
            assert now < deadline, f"job still {state} after 240 s"
            if restart_at and now >= restart_at[0]:
                restart_at.pop(0)
                assert farm.server is not None
                farm.server.send_signal(signal.SIGKILL)
                farm.server.wait()
                if farm.server.stdout is not None:
                    farm.server.stdout.close()
                farm.start_server(*server_options, port=farm.port)
                restarts += 1
            if now >= next_kill:
                alive = [w for w in farm.workers if w.poll() is None]
                victim = rng.choice(alive)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                kills += 1
                farm.start_worker("--no-blender", name=f"worker-{len(farm.workers) + 1}")
                next_kill = now + 1.5
            try:
                state = job.wait(timeout=0.2) and "done"
            except buildcat.JobTimeout:
                continue
            except buildcat.ConnectionFailed:
                continue  # the server is down for a moment: so is everyone's view of it
        assert state == "done"

        status = job.status()
        assert status["tasks"]["done"] == TASKS
        assert job.results() == [f"chaos/out_{i:03d}.txt" for i in range(TASKS)]
        for index in range(TASKS):
            text = (farm.root / "chaos" / f"out_{index:03d}.txt").read_text()
            assert text == f"task {index}\n" * 100, f"output {index} is not whole"
        assert not list((farm.root / "chaos").glob(".*.tmp"))
        completions = Counter(
            event[3]
            for event in read_events(farm.root / ".buildcat" / "journal.bin")
            if event[0] == "complete"
        )
        assert set(completions) == {f"{job.id}.{i}" for i in range(TASKS)}
        assert max(completions.values()) == 1, "a task was recorded done twice"
        assert all(not w["tasks"] for w in client.workers()), "something is still leased"
        lost = TASKS - status["tasks"]["done"]
        print(
            f"\nchaos: {TASKS} tasks, {kills} worker kills, {restarts} server kills and "
            f"restarts, {lost} lost, {time.monotonic() - started:.1f}s"
        )
    finally:
        farm.stop()
