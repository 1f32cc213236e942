"""Watching the farm from a terminal: the progress bar in a real pty, `farm logs --follow`,
`farm perf`, readable tables, and /metrics against `farm status --json`."""

from __future__ import annotations

import http.client
import io
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pexpect
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Farm, secret_header, wait_for


def test_progress_bar_moves_and_ends_at_100_percent_in_a_terminal(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender")
    jobs_farm.wait_workers(1)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "buildcat", "submit", "python", "farm_jobs:gated_frames", "bar",
         "--frames", "1-10", "--wait"],
        env={**os.environ, "FARM_HOST": "127.0.0.1", "FARM_PORT": str(jobs_farm.port),
             "BUILDCAT_ROOT": str(jobs_farm.root), "COLUMNS": "200"},
        encoding="utf-8",
        timeout=60,
        dimensions=(24, 200),
    )  # fmt: skip
    screen = io.StringIO()
    child.logfile_read = screen
    try:
        # The test paces the job: each frame's task waits for its gate, and the next gate
        # opens only once the terminal showed the bar for the frames done so far.
        widths = []
        opened: set[int] = set()
        for done in range(11):
            if done:
                frame = wait_for(lambda: _waiting_frame(jobs_farm, range(1, 11), opened))
                jobs_farm.gate(f"bar-{frame}").open()
                opened.add(frame)
            child.expect(rf"\[(#*)\.*\] \w+ \w+: {done}/10 tasks")
            widths.append(len(child.match.group(1)))
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, screen.getvalue()
    # A 30-character bar: 3 more # for each tenth of the job, from empty to full.
    assert widths == [3 * done for done in range(11)]
    # A terminal gets one line redrawn with \r: the bar only fills up, frames and rate shown.
    redraws = [part for part in screen.getvalue().split("\r") if part.startswith("[")]
    filled = [part.split("]")[0].count("#") for part in redraws]
    assert filled == sorted(filled)
    assert re.search(r"\[#{30}\] \w+ done: 10/10 tasks 100%, frames 10/10", screen.getvalue())
    assert "tasks/s" in redraws[-1] and "eta" in redraws[-1]


def _waiting_frame(farm: Farm, frames: range, opened: set[int]) -> int | None:
    """The frame whose gate a task waits at now (one worker, one task at a time)."""
    return next((n for n in frames if n not in opened and farm.gate(f"bar-{n}").started()), None)


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
    job = jobs_farm.client().map_frames("farm_jobs:gated_frames", "1-3", "follow", chunk=3)
    follower = subprocess.Popen(
        [sys.executable, "-m", "buildcat", "logs", f"{job.id}.0", "--follow"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "FARM_HOST": "127.0.0.1", "FARM_PORT": str(jobs_farm.port),
             "BUILDCAT_ROOT": str(jobs_farm.root)},
    )  # fmt: skip
    lines = _Lines(follower)
    try:
        printed: list[str | None] = []
        for frame in (1, 2, 3):
            # The task prints "rendering frame N" and then waits for a gate that only the
            # test opens: the follower can show the line only by streaming it.
            while not printed or printed[-1] != f"rendering frame {frame}":
                printed.append(lines.next())
                assert printed[-1] is not None, f"the follower ended early: {printed}"
            assert job.tasks()[0]["state"] == "leased"
            jobs_farm.gate(f"follow-{frame}").open()
        while printed[-1] is not None:
            printed.append(lines.next())
        assert follower.wait(60) == 0
    finally:
        lines.close()
    body = [line for line in printed[:-1] if line is not None and not line.startswith("---")]
    assert body == [f"{verb} frame {n}" for n in (1, 2, 3) for verb in ("rendering", "saved")]
    assert job.status()["state"] == "done"


class _Lines:
    """A process's stdout lines as they come, so that a test can wait for the next one with
    a deadline (``None`` at the end of the output)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def next(self, timeout: float = 60.0) -> str | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s") from None

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self.thread.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()


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
    submitted = time.time()
    job = jobs_farm.client().map_frames("farm_jobs:print_frames", "1-12", 0.1, chunk=1)
    job.wait(60)
    finished = time.time()
    report = jobs_farm.cli("perf", job.id, "--json")
    assert report.returncode == 0, report.stderr
    figures = json.loads(report.stdout)
    tasks = job.tasks()
    # Every task slept its 0.1 s, and ran inside the time this test saw the job take.
    for task in tasks:
        assert task["seconds"] >= 0.1, task
        assert submitted <= task["started_at"] < task["started_at"] + task["seconds"] <= finished
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
    assert workers[0].split()[:7] == [
        "WORKER", "STATUS", "SLOTS", "TAGS", "GPU", "SCHEDULE", "CURRENT"]  # fmt: skip
    assert workers[1].split()[:9] == ["render-7", "idle", "1", "gpu", "-", "-", "-", "3", "0"]


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


def _process_start(pid: int) -> float:
    """When a process started (epoch seconds), from /proc, rounded down: never later than
    the real start."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[19])  # field 22 of stat(5): start time in clock ticks after boot
    boot = next(
        int(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def test_metrics_parse_and_match_farm_status(jobs_farm: Farm) -> None:
    began = time.time()  # the fixture's server was listening before this
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
    # The server started after its process did and before this test began; ping says the same.
    started = samples[("buildcat_server_start_time_seconds", ())]
    assert jobs_farm.server is not None
    assert _process_start(jobs_farm.server.pid) <= started <= began
    assert abs(started - client.ping()["started_at"]) < 1e-3


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
