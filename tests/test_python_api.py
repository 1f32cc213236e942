"""The Python API's smaller promises against a real farm: `Job.retry`, `Job.unblock`,
`Job.perf`, `Client.follow`, `Client.jobs(state=...)` (and `GET /api/v1/jobs?state=`),
plus `farm submit --requires` and `farm wait` interrupted by Ctrl-C."""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import time

import pexpect
import pytest

import buildcat
from tests.conftest import Farm, secret_header, wait_for


def test_retry_reruns_only_unfinished_tasks_with_fresh_attempts(jobs_farm: Farm) -> None:
    # Two workers, so that three failed runs of one task cannot block both from the job.
    jobs_farm.start_worker("--no-blender")
    jobs_farm.start_worker("--no-blender")
    client = jobs_farm.client()
    # Task 1 waits for task 0, then fails its first three runs; two attempts per task.
    job = client.submit_tasks(
        [
            {"payload": {"function": "farm_jobs:square", "args": [3]}},
            {"payload": {"function": "farm_jobs:fails_times", "args": ["retry/runs", 3]},
             "depends": [0]},
        ],
        max_attempts=2,
    )  # fmt: skip
    with pytest.raises(buildcat.JobFailed) as failed:
        job.wait(60)
    assert failed.value.state == "failed"
    assert "run 2 of retry/runs fails" in failed.value.error
    before = job.tasks()
    assert [task["state"] for task in before] == ["done", "failed"]

    view = job.retry()
    assert view["id"] == job.id and view["state"] in ("queued", "running")
    assert view["error"] == ""
    # Run 3 fails and run 4 succeeds: only fresh attempts leave room for both.
    assert job.wait(60)["state"] == "done"
    assert job.results() == [9, 4]
    after = job.tasks()
    assert after[0]["started_at"] == before[0]["started_at"]  # the done task did not run again
    assert (jobs_farm.root / "retry" / "runs").read_text() == "4"

    with pytest.raises(buildcat.RequestRejected, match="only failed or cancelled jobs retry"):
        job.retry()


def test_retry_requeues_a_cancelled_job(jobs_farm: Farm) -> None:
    client = jobs_farm.client()
    job = client.map("farm_jobs:square", [2, 3])  # no worker yet: it stays queued
    assert job.cancel()["state"] == "cancelled"
    assert job.retry()["state"] == "queued"
    jobs_farm.start_worker("--no-blender")
    assert job.wait(60)["state"] == "done"
    assert job.results() == [4, 9]


def test_unblock_lets_a_blocked_worker_take_the_job_again(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender", name="flaky")
    client = jobs_farm.client()
    # Each job's only task fails its first three runs: the third blocks "flaky" from that
    # job (block after 3), while five attempts keep the job alive.
    first = client.submit_tasks(
        [{"payload": {"function": "farm_jobs:fails_times", "args": ["block/first", 3]}}],
        max_attempts=5,
    )
    second = client.submit_tasks(
        [{"payload": {"function": "farm_jobs:fails_times", "args": ["block/second", 3]}}],
        max_attempts=5,
    )
    for job in (first, second):
        wait_for(lambda job=job: job.status()["blocked"] == ["flaky"])
        assert job.tasks()[0]["state"] == "queued"
        assert "farm unblock" in job.status()["waiting"]

    with pytest.raises(buildcat.RequestRejected, match="'someone-else' is not blocked"):
        first.unblock("someone-else")  # a worker the job never blocked: an error, no change
    assert first.status()["blocked"] == ["flaky"]
    assert first.unblock("flaky")["blocked"] == []
    assert first.wait(60)["state"] == "done"
    assert first.results() == [4]
    assert first.tasks()[0]["worker_name"] == "flaky"
    # Unblocking is per job: "flaky" still may not touch the second one.
    assert second.status()["blocked"] == ["flaky"]
    assert second.tasks()[0]["state"] == "queued"
    assert second.unblock()["blocked"] == []  # no name: every worker
    assert second.wait(60)["state"] == "done"
    assert second.results() == [4]


def test_perf_counts_slots_failures_and_the_span(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender", "--slots", "2", name="twin")
    jobs_farm.wait_workers(1)
    client = jobs_farm.client()
    submitted = time.time()
    job = client.map("farm_jobs:slow", [0.2] * 6)
    job.wait(60)
    finished = time.time()
    figures = job.perf()
    tasks = job.tasks()
    for task in tasks:
        assert task["seconds"] >= 0.2
        assert submitted <= task["started_at"] < task["started_at"] + task["seconds"] <= finished
    start = min(task["started_at"] for task in tasks)
    end = max(task["started_at"] + task["seconds"] for task in tasks)
    busy = sum(task["seconds"] for task in tasks)
    assert figures["id"] == job.id and figures["state"] == "done"
    assert (figures["tasks"], figures["tasks_done"], figures["timed"]) == (6, 6, 6)
    assert abs(figures["span_seconds"] - (end - start)) < 1e-6
    assert abs(figures["tasks_per_hour"] - 6 / (end - start) * 3600) < 1e-3
    assert abs(figures["mean_task_seconds"] - busy / 6) < 1e-9
    [row] = figures["workers"]
    assert (row["worker"], row["slots"], row["tasks_done"], row["tasks_failed"]) == (
        "twin", 2, 6, 0
    )  # fmt: skip
    assert abs(row["busy_seconds"] - busy) < 1e-9
    # Two slots: busy time is shared between them.
    assert abs(row["utilisation"] - min(1.0, busy / ((end - start) * 2))) < 1e-9

    broken = client.submit_tasks(
        [{"payload": {"function": "farm_jobs:boom", "args": ["perf"]}}], max_attempts=1
    )
    with pytest.raises(buildcat.JobFailed):
        broken.wait(60)
    figures = broken.perf()
    assert (figures["state"], figures["tasks_done"], figures["timed"]) == ("failed", 0, 1)
    assert figures["mean_task_seconds"] == 0.0 and figures["tasks_per_hour"] == 0.0
    [row] = figures["workers"]
    assert (row["worker"], row["tasks_done"], row["tasks_failed"]) == ("twin", 0, 1)


def test_follow_yields_lines_while_the_task_still_runs(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender")
    client = jobs_farm.client()
    # Two tasks, one frame each; each prints "rendering frame N", then waits for its gate.
    job = client.map_frames("farm_jobs:gated_frames", "1-2", "api", chunk=1)
    gates = {n: jobs_farm.gate(f"api-{n}") for n in (1, 2)}
    # Should follow not stream, the gates open anyway after a while, so the job ends and
    # the checks below fail instead of the test hanging.
    fallback = threading.Timer(60, lambda: [gate.open() for gate in gates.values()])
    fallback.start()
    heard: list[tuple[str, str, bool]] = []  # task, line, whether its gate was still shut

    def listen(target: str) -> None:
        for task_id, text in client.follow(target, interval=0.05):
            assert text.endswith("\n")  # whole lines only
            for line in text.splitlines():
                if line.startswith("--- "):  # the log's heading for each attempt
                    assert f" task {task_id} attempt 1 on worker-1" in line, line
                    continue
                frame = int(line.rsplit(" ", 1)[1])
                shut = not (jobs_farm.root / "gates" / f"api-{frame}.go").exists()
                heard.append((task_id, line, shut))
                if line.startswith("rendering"):
                    gates[frame].open()

    try:
        listen(f"{job.id}.0")  # one task: ends when that task ends
        zero, one = f"{job.id}.0", f"{job.id}.1"
        assert heard == [(zero, "rendering frame 1", True), (zero, "saved frame 1", False)]
        assert job.tasks()[0]["state"] == "done" and job.tasks()[1]["state"] != "done"
        listen(job.id)  # the whole job: task 0's lines again, then task 1's as they come
    finally:
        fallback.cancel()
    assert heard[2:] == [
        (zero, "rendering frame 1", False), (zero, "saved frame 1", False),
        (one, "rendering frame 2", True), (one, "saved frame 2", False),
    ]  # fmt: skip
    assert job.status()["state"] == "done"


def test_submit_requires_from_the_command_line(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender", name="cpu-only")
    jobs_farm.wait_workers(1)
    submitted = jobs_farm.cli("submit", "python", "farm_jobs:square", "3", "--requires", "gpu")
    assert submitted.returncode == 0, submitted.stderr
    needs_gpu = jobs_farm.client().job(submitted.stdout.strip())
    assert needs_gpu.status()["requires"] == ["gpu"]
    # A job queued after it runs on cpu-only: that worker is polling, and passed it by.
    plain = jobs_farm.cli("submit", "python", "farm_jobs:square", "4", "--wait")
    assert plain.returncode == 0, plain.stderr
    status = needs_gpu.status()
    assert status["state"] == "queued" and status["tasks"]["queued"] == 1
    assert needs_gpu.tasks()[0]["attempts"] == 0
    assert "gpu" in status["waiting"]
    jobs_farm.start_worker("--no-blender", "--tags", "gpu", name="gpu-box")
    assert needs_gpu.wait(60)["state"] == "done"
    assert needs_gpu.results() == [9]
    assert needs_gpu.tasks()[0]["worker_name"] == "gpu-box"
    done = {w["name"]: w["tasks_done"] for w in jobs_farm.client().workers()}
    assert done == {"cpu-only": 1, "gpu-box": 1}


def test_jobs_filter_by_state_in_the_api_and_over_http(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender")
    client = jobs_farm.client()
    done = client.map("farm_jobs:square", [1])
    done.wait(60)
    failed = client.submit_tasks(
        [{"payload": {"function": "farm_jobs:boom", "args": ["x"]}}], max_attempts=1
    )
    wait_for(lambda: failed.status()["state"] == "failed")
    running = client.submit("farm_jobs:gated", "listed")
    jobs_farm.gate("listed").wait_started()
    # No worker has a gpu: these stay where the test puts them.
    queued = client.map("farm_jobs:square", [2], requires=["gpu"])
    paused = client.map("farm_jobs:square", [3], requires=["gpu"])
    paused.pause()
    cancelled = client.map("farm_jobs:square", [4], requires=["gpu"])
    cancelled.cancel()
    expected = {
        "done": done.id, "failed": failed.id, "running": running.id,
        "queued": queued.id, "paused": paused.id, "cancelled": cancelled.id,
    }  # fmt: skip
    try:
        for state, job_id in expected.items():
            listed = client.jobs(state=state)
            assert [job["id"] for job in listed] == [job_id], state
            assert listed[0]["state"] == state
            assert [job["id"] for job in _http_jobs(jobs_farm, f"?state={state}")] == [job_id]
        assert [job["id"] for job in client.jobs()] == list(expected.values())
        assert [job["id"] for job in _http_jobs(jobs_farm, "")] == list(expected.values())
    finally:
        jobs_farm.gate("listed").open()


def _http_jobs(farm: Farm, query: str) -> list[dict[str, object]]:
    """``GET /api/v1/jobs`` as any HTTP client sends it, answered in JSON."""
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    try:
        connection.request("GET", f"/api/v1/jobs{query}", headers=secret_header(farm.root))
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200, body
    assert response.getheader("Content-Type", "").startswith("application/json")
    return list(json.loads(body)["jobs"])


def test_ctrl_c_stops_farm_wait_with_status_130_and_one_line(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender")
    job = jobs_farm.client().submit("farm_jobs:gated", "waited")
    gate = jobs_farm.gate("waited")
    gate.wait_started()
    waiter = pexpect.spawn(
        sys.executable,
        ["-m", "buildcat", "wait", job.id],
        env={**os.environ, "FARM_HOST": "127.0.0.1", "FARM_PORT": str(jobs_farm.port),
             "BUILDCAT_ROOT": str(jobs_farm.root)},
        encoding="utf-8",
        timeout=60,
        dimensions=(24, 200),
    )  # fmt: skip
    try:
        # The bar is drawn: farm wait is in its wait loop when Ctrl-C comes.
        waiter.expect(rf"\[\.{{30}}\] {job.id} running: 0/1 tasks")
        waiter.sendintr()  # the terminal's Ctrl-C: SIGINT to the foreground process group
        waiter.expect(pexpect.EOF)
        rest = waiter.before
        waiter.close()
        assert waiter.exitstatus == 130, rest
        # One line after the progress bar, no traceback.
        lines = rest.replace("\r\n", "\n").rstrip("\n").split("\n")
        assert lines[-1] == "farm: interrupted", rest
        assert all("tasks/s" in line for line in lines[:-1]), rest
        assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
        # Only the waiting stopped: the job runs on, and ends when its gate opens.
        assert job.status()["state"] == "running"
    finally:
        waiter.close()
        gate.open()
    assert job.wait(60)["state"] == "done"
