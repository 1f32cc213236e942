"""Watching the farm from a terminal: the progress bar in a real pty, `farm logs --follow`,
`farm perf`, readable tables, and /metrics against `farm status --json`."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time

import pexpect
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Farm, secret_header, wait_for


def test_progress_bar_moves_and_ends_at_100_percent_in_a_terminal(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender")
    jobs_farm.wait_workers(1)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "buildcat", "submit", "python", "farm_jobs:print_frames", "0.15",
         "--frames", "1-10", "--wait"],
        env={**os.environ, "FARM_HOST": "127.0.0.1", "FARM_PORT": str(jobs_farm.port),
             "BUILDCAT_ROOT": str(jobs_farm.root), "COLUMNS": "200"},
        encoding="utf-8",
        timeout=60,
        dimensions=(24, 200),
    )  # fmt: skip
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    screen = child.before
    # A terminal gets one line redrawn with \r: the bar fills up, frames and rate shown.
    redraws = [part for part in screen.split("\r") if part.startswith("[")]
    filled = [part.split("]")[0].count("#") for part in redraws]
    assert len(set(filled)) >= 3, redraws
    assert filled == sorted(filled)
    assert re.search(r"\[#{30}\] \w+ done: 10/10 tasks 100%, frames 10/10", screen)
    assert "tasks/s" in redraws[-1] and "eta" in redraws[-1]


def test_progress_is_plain_lines_when_not_a_terminal(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender")
    done = jobs_farm.cli("submit", "python", "farm_jobs:print_frames", "0.05", "--frames", "1-4",
                         "--wait")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout and "[" not in done.stdout
    assert (
        done.stdout.strip()
        .splitlines()[-1]
        .split(": ", 1)[1]
        .startswith("4/4 tasks 100%, frames 4/4")
    )


def test_logs_follow_streams_while_the_task_runs(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender")
    client = jobs_farm.client()
    job = client.map_frames("farm_jobs:print_frames", "1-5", 0.4, chunk=5)
    lines = []
    with subprocess.Popen(
        [sys.executable, "-m", "buildcat", "logs", f"{job.id}.0", "--follow"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "FARM_HOST": "127.0.0.1", "FARM_PORT": str(jobs_farm.port),
             "BUILDCAT_ROOT": str(jobs_farm.root)},
    ) as follower:  # fmt: skip
        assert follower.stdout is not None
        for line in follower.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("rendering frame 1"):
                # The first frame's line arrives while the task still renders the rest.
                assert job.status()["state"] != "done"
        assert follower.wait(30) == 0
    printed = [line for line in lines if not line.startswith("---")]
    assert printed == [f"{verb} frame {n}" for n in range(1, 6) for verb in ("rendering", "saved")]
    assert job.status()["state"] == "done"


def test_logs_follow_a_whole_job_prefixes_each_task(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender", "--slots", "2")
    job = jobs_farm.client().map_frames("farm_jobs:print_frames", "1-4", 0.1, chunk=2)
    followed = jobs_farm.cli("logs", job.id, "-f")
    assert followed.returncode == 0, followed.stderr
    body = [line for line in followed.stdout.splitlines() if "---" not in line]
    assert sorted(body) == sorted(
        [f"{job.id}.0 | {verb} frame {n}" for n in (1, 2) for verb in ("rendering", "saved")]
        + [f"{job.id}.1 | {verb} frame {n}" for n in (3, 4) for verb in ("rendering", "saved")]
    )


def test_perf_figures_match_the_recorded_task_times(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender", name="fast")
    jobs_farm.start_worker("--no-blender", name="steady")
    jobs_farm.wait_workers(2)
    job = jobs_farm.client().map_frames("farm_jobs:print_frames", "1-12", 0.1, chunk=1)
    job.wait(60)
    report = jobs_farm.cli("perf", job.id, "--json")
    assert report.returncode == 0, report.stderr
    figures = json.loads(report.stdout)
    tasks = job.tasks()
    # Every task ran about 0.1 s and the worker said so.
    assert all(0.1 <= task["seconds"] < 5 for task in tasks)
    start = min(task["started_at"] for task in tasks)
    end = max(task["started_at"] + task["seconds"] for task in tasks)
    assert abs(figures["span_seconds"] - (end - start)) < 1e-6
    assert abs(figures["tasks_per_hour"] - 12 / (end - start) * 3600) < 1e-3
    mean = sum(task["seconds"] for task in tasks) / 12
    assert abs(figures["mean_task_seconds"] - mean) < 1e-9
    per_worker = {row["worker"]: row for row in figures["workers"]}
    assert sum(row["tasks_done"] for row in per_worker.values()) == 12
    for name, row in per_worker.items():
        ran = [task for task in tasks if task["worker_name"] == name]
        assert row["tasks_done"] == len(ran)
        busy = sum(task["seconds"] for task in ran)
        assert abs(row["busy_seconds"] - busy) < 1e-9
        assert abs(row["utilisation"] - min(1.0, busy / (end - start))) < 1e-9
    table = jobs_farm.cli("perf", job.id)
    assert table.returncode == 0
    assert "tasks/hour" in table.stdout and "UTILISATION" in table.stdout
    for name in per_worker:
        assert re.search(rf"^{name}\s+\d+\s+0\s", table.stdout, re.MULTILINE), table.stdout


def test_status_and_workers_print_tables(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender", "--tags", "gpu", name="render-7")
    job = jobs_farm.client().map("farm_jobs:square", [1, 2, 3])
    job.wait(30)
    status = jobs_farm.cli("status").stdout.splitlines()
    assert status[0].split() == [
        "JOB", "STATE", "TASKS", "FRAMES", "DONE", "PRIO", "ELAPSED", "ETA", "OWNER", "NAME"
    ]  # fmt: skip
    assert status[1].split()[:5] == [job.id, "done", "3/3", "-", "100%"]
    workers = jobs_farm.cli("workers").stdout.splitlines()
    assert workers[0].split()[:3] == ["WORKER", "STATE", "SLOTS"]
    assert workers[1].split()[:6] == ["render-7", "idle", "1", "-", "3", "0"]
    assert "gpu" in workers[1]


def scrape(farm: Farm) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=10)
    connection.request("GET", "/metrics", headers=secret_header(farm.root))
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_parse_and_match_farm_status(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender", name="m1")
    client = jobs_farm.client()
    done = client.map("farm_jobs:square", list(range(20)))
    done.wait(60)
    failed = client.submit("farm_jobs:boom", "x")
    wait_for(lambda: failed.status()["state"] == "failed")
    client.map("farm_jobs:square", [1, 2], requires=["gpu"])  # no worker has one: queued
    client.map("farm_jobs:square", [3], requires=["gpu"]).pause()
    samples = scrape(jobs_farm)
    jobs = json.loads(jobs_farm.cli("status", "--json").stdout)
    by_state: dict[str, int] = {}
    tasks_by_state: dict[str, int] = {}
    for job in jobs:
        by_state[job["state"]] = by_state.get(job["state"], 0) + 1
        for state, count in job["tasks"].items():
            tasks_by_state[state] = tasks_by_state.get(state, 0) + count
    for state in ("queued", "running", "paused", "done", "failed", "cancelled"):
        assert samples[("buildcat_jobs", (("state", state),))] == by_state.get(state, 0), state
    for state in ("queued", "leased", "done", "failed", "cancelled"):
        assert samples[("buildcat_tasks", (("state", state),))] == tasks_by_state.get(state, 0)
    workers = json.loads(jobs_farm.cli("workers", "--json").stdout)
    for state in ("idle", "busy", "offline"):
        expected = sum(worker["state"] == state for worker in workers)
        assert samples[("buildcat_workers", (("state", state),))] == expected
    # 20 + 3 attempts of boom ran: each was leased once and reported its run time.
    assert samples[("buildcat_dispatch_latency_seconds_count", ())] == 23
    assert samples[("buildcat_task_duration_seconds_count", ())] == 23
    assert samples[("buildcat_task_duration_seconds_bucket", (("le", "+Inf"),))] == 23
    assert samples[("buildcat_task_duration_seconds_sum", ())] > 0
    started = time.time() - samples[("buildcat_server_start_time_seconds", ())]
    assert 0 < started < 300


def test_priority_command_moves_a_job_ahead(jobs_farm: Farm) -> None:
    client = jobs_farm.client()
    first = client.map("farm_jobs:square", [1])
    second = client.map("farm_jobs:square", [2])
    moved = jobs_farm.cli("priority", second.id, "5")
    assert moved.returncode == 0 and moved.stdout.strip() == f"{second.id} priority 5"
    assert second.status()["priority"] == 5
    jobs_farm.start_worker("--no-blender")
    second.wait(30)
    first.wait(30)
    assert second.tasks()[0]["started_at"] < first.tasks()[0]["started_at"]
    bad = jobs_farm.cli("priority", second.id, "high")
    assert bad.returncode == 2
    late = jobs_farm.cli("priority", second.id, "1")
    assert late.returncode == 1 and "no longer matters" in late.stderr
