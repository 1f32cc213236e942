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
#: The last tasks wait for the test, so every planned kill lands while the job runs.
HELD_FROM = 185
#: Done-task counts at which a worker is SIGKILLed (and replaced) and the server is
#: SIGKILLed (and restarted on its port).
WORKER_KILLS_AT = [10, 35, 60, 85, 110, 135, 160]
SERVER_KILLS_AT = [45, 125]


def test_nothing_is_lost_when_processes_die(tmp_path: Path) -> None:
    farm = Farm(root=tmp_path / "root", logs=tmp_path / "logs")
    farm.root.mkdir()
    shutil.copy(HERE / "farm_jobs.py", farm.root / "farm_jobs.py")
    server_options = ("--lease-timeout", "2")
    farm.start_server(*server_options)
    rng = random.Random(7)
    worker_kills: list[int] = []  # the done count at each kill
    server_kills: list[int] = []
    try:
        for _ in range(3):
            farm.start_worker("--no-blender")
        client = farm.client()
        job = client.submit_tasks(
            [{"payload": {"args": [i], "kwargs": {"hold_from": HELD_FROM}}} for i in range(TASKS)],
            common={"function": "farm_jobs:chaos_task"},
        )
        started = time.monotonic()
        deadline = started + 240
        worker_plan, server_plan = list(WORKER_KILLS_AT), list(SERVER_KILLS_AT)
        status = job.status()
        while status["state"] not in ("done", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"job still {status['state']} after 240 s"
            done = status["tasks"]["done"]
            if server_plan and done >= server_plan[0]:
                server_plan.pop(0)
                assert farm.server is not None
                farm.server.send_signal(signal.SIGKILL)
                farm.server.wait()
                if farm.server.stdout is not None:
                    farm.server.stdout.close()
                farm.start_server(*server_options, port=farm.port)
                server_kills.append(done)
            elif worker_plan and done >= worker_plan[0]:
                worker_plan.pop(0)
                alive = [w for w in farm.workers if w.poll() is None]
                victim = rng.choice(alive)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                farm.start_worker("--no-blender", name=f"worker-{len(farm.workers) + 1}")
                worker_kills.append(done)
            elif not server_plan and not worker_plan:
                farm.gate("chaos-tail").open()  # the chaos is over: let the tail finish
            try:
                status = job.wait(timeout=0.2)
            except buildcat.JobTimeout:
                status = job.status()
            except buildcat.ConnectionFailed:
                continue  # the server is down for a moment: so is everyone's view of it

        # Every planned kill happened, each while the job was still running.
        assert len(worker_kills) == len(WORKER_KILLS_AT), worker_kills
        assert len(server_kills) == len(SERVER_KILLS_AT), server_kills
        assert max(worker_kills + server_kills) < TASKS
        lost = TASKS - status["tasks"]["done"]
        print(
            f"\nchaos: {TASKS} tasks, worker kills at {worker_kills} done, server kills at "
            f"{server_kills} done, {lost} lost, {time.monotonic() - started:.1f}s"
        )
        assert status["state"] == "done" and lost == 0, status
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
    finally:
        farm.stop()
