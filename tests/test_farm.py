"""End to end: real `farm server` and `farm worker` processes on loopback."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
from pathlib import Path

import pytest

import buildcat
from buildcat import launch
from tests.conftest import Farm, wait_for

HERE = Path(__file__).parent


def task_states(job: buildcat.Job) -> list[str]:
    return [task["state"] for task in job.tasks()]


def test_map_returns_results_in_order(jobs_farm: Farm) -> None:
    jobs_farm.start_worker()
    jobs_farm.start_worker("--slots", "2")
    farm = jobs_farm.client()
    job = farm.map("farm_jobs:square", range(100))
    job.wait(timeout=60)
    assert job.results() == [x * x for x in range(100)]
    status = job.status()
    assert status["state"] == "done"
    assert status["tasks"]["done"] == 100


def test_function_in_a_file_under_the_root(jobs_farm: Farm) -> None:
    (jobs_farm.root / "shots" / "tools").mkdir(parents=True)
    (jobs_farm.root / "shots" / "tools" / "double.py").write_text(
        "def double(x, twice=False):\n    return x * (4 if twice else 2)\n"
    )
    jobs_farm.start_worker()
    farm = jobs_farm.client()
    assert farm.submit("shots/tools/double.py:double", 21).results() == [42]
    assert farm.submit("shots/tools/double.py:double", 5, twice=True).results() == [20]


def test_failing_function_raises_job_failed_with_remote_traceback(jobs_farm: Farm) -> None:
    jobs_farm.start_worker()
    farm = jobs_farm.client()
    job = farm.submit("farm_jobs:boom", "the lights went out")
    with pytest.raises(buildcat.JobFailed) as raised:
        job.wait(timeout=60)
    assert "RuntimeError: boom: the lights went out" in str(raised.value)
    assert 'raise RuntimeError(f"boom: {message}")' in raised.value.traceback
    assert "in boom" in raised.value.traceback
    (task,) = job.tasks()
    assert task["state"] == "failed"
    assert task["attempts"] == 3  # the default max_attempts, then the job fails

    waited = jobs_farm.cli("wait", job.id)
    assert waited.returncode != 0
    assert "RuntimeError: boom: the lights went out" in waited.stderr
    assert "Traceback" in waited.stderr


def test_farm_wait_and_results_on_the_command_line(jobs_farm: Farm) -> None:
    jobs_farm.start_worker()
    submitted = jobs_farm.cli("submit", "python", "--json", "--map", "farm_jobs:square", "3", "4")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    waited = jobs_farm.cli("wait", job_id)
    assert waited.returncode == 0, waited.stderr
    assert "done" in waited.stdout
    results = jobs_farm.cli("results", "--json", job_id)
    assert json.loads(results.stdout) == [9, 16]
    status = json.loads(jobs_farm.cli("status", "--json", job_id).stdout)
    assert status["id"] == job_id
    assert status["state"] == "done"
    assert status["tasks"]["done"] == 2
    listing = jobs_farm.cli("status")
    assert job_id in listing.stdout
    workers = json.loads(jobs_farm.cli("workers", "--json").stdout)
    assert [w["name"] for w in workers] == ["worker-1"]
    assert workers[0]["tasks_done"] == 2


def test_submit_wait_with_kwargs(jobs_farm: Farm) -> None:
    jobs_farm.start_worker()
    done = jobs_farm.cli(
        "submit", "python", "--wait", "--json", "farm_jobs:slow", "0.1", "-k", 'result={"a": 1}'
    )
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["state"] == "done"
    assert jobs_farm.client().job(status["id"]).results() == [{"a": 1}]


def test_worker_killed_mid_task_loses_no_task(tmp_path: Path) -> None:
    farm = Farm(root=tmp_path / "root", logs=tmp_path / "logs")
    farm.root.mkdir()
    shutil.copy(HERE / "farm_jobs.py", farm.root / "farm_jobs.py")
    farm.start_server("--lease-timeout", "1")
    try:
        doomed = farm.start_worker(name="doomed")
        client = farm.client()
        gate = farm.gate("mid-task")
        job = client.map("farm_jobs:gated", ["mid-task"] * 6)
        gate.wait_started()  # the doomed worker is inside its first task: it finishes none
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        gate.open()
        farm.start_worker(name="survivor")
        job.wait(timeout=60)
        assert job.results() == [None] * 6
        tasks = job.tasks()
        assert all(task["state"] == "done" for task in tasks)
        assert {task["worker"] for task in tasks} == {
            w["id"] for w in client.workers() if w["name"] == "survivor"
        }
    finally:
        farm.stop()


def test_child_crash_fails_only_its_task_and_is_replaced(jobs_farm: Farm) -> None:
    jobs_farm.start_worker()
    farm = jobs_farm.client()
    crashed = farm.submit_tasks(
        [{"payload": {"function": "farm_jobs:crash", "args": [3]}}], max_attempts=1
    )
    with pytest.raises(buildcat.JobFailed, match="exited with code 3"):
        crashed.wait(timeout=60)
    # The same worker goes on with a fresh child process.
    assert farm.map("farm_jobs:square", [5, 6]).results() == [25, 36]
    # A crash is an attempt like any other: the retry succeeds.
    assert farm.submit("farm_jobs:crash_once", "marker.txt").results() == ["second time lucky"]


def test_child_processes_stay_alive_between_tasks(jobs_farm: Farm) -> None:
    jobs_farm.start_worker()
    pids = jobs_farm.client().map("farm_jobs:pid", range(20)).results()
    assert len(set(pids)) == 1


def test_task_output_and_progress_reach_the_server(jobs_farm: Farm) -> None:
    jobs_farm.start_worker()
    farm = jobs_farm.client()
    job = farm.map_frames("farm_jobs:gated_frames", "1-2", "progress", chunk=2)
    jobs_farm.gate("progress-1").open()
    jobs_farm.gate("progress-2").wait_started()  # half done, and waiting for the test
    [task] = wait_for(lambda: [t for t in job.tasks() if t["progress"] == 0.5])
    assert task["progress_message"] == "frame 1"
    assert job.status()["state"] == "running"
    jobs_farm.gate("progress-2").open()
    job.wait(timeout=60)
    chatty = farm.submit("farm_jobs:chatty", 1)
    assert chatty.results() == [2]
    assert "working on 1" in farm.task(f"{chatty.id}.0")["log"]
    logs = jobs_farm.cli("logs", chatty.id)
    assert logs.returncode == 0, logs.stderr
    assert f"===== {chatty.id}.0 (done)" in logs.stdout
    assert "attempt 1 on worker-1" in logs.stdout
    assert "working on 1" in logs.stdout


def test_sigterm_drains_the_running_task(jobs_farm: Farm) -> None:
    worker = jobs_farm.start_worker()
    farm = jobs_farm.client()
    job = farm.map("farm_jobs:gated", ["drain-1", "drain-2"], max_attempts=1)
    jobs_farm.gate("drain-1").wait_started()
    worker.send_signal(signal.SIGTERM)
    wait_for(lambda: "draining: signal received" in jobs_farm.log_text("worker-1"))
    jobs_farm.gate("drain-1").open()
    jobs_farm.gate("drain-2").open()
    assert worker.wait(timeout=60) == 0
    tasks = job.tasks()
    assert sorted(t["state"] for t in tasks) == ["done", "queued"]  # finished one, took none
    jobs_farm.start_worker()
    job.wait(timeout=60)


@pytest.mark.parametrize("farm", [("--lease-timeout", "300")], indirect=True)
def test_second_signal_gives_the_task_back(jobs_farm: Farm) -> None:
    worker = jobs_farm.start_worker()
    farm = jobs_farm.client()
    job = farm.submit("farm_jobs:gated", "never", "finished")
    jobs_farm.gate("never").wait_started()
    worker.send_signal(signal.SIGTERM)
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=60) == 1
    # Given back by the worker, not after the 300 s lease timeout; not counted as a failure.
    wait_for(lambda: task_states(job) == ["queued"], timeout=60)
    assert job.tasks()[0]["failures"] == 0


def test_cancel_stops_a_running_task(jobs_farm: Farm) -> None:
    # A long grace: only the cancel itself (TaskCancelled inside the task) can free the slot.
    jobs_farm.start_worker("--cancel-grace", "600")
    farm = jobs_farm.client()
    gate = jobs_farm.gate("cancel-me")
    job = farm.submit("farm_jobs:gated", "cancel-me")
    gate.wait_started()
    cancelled = jobs_farm.cli("cancel", job.id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"{job.id} cancelled"
    assert task_states(job) == ["cancelled"]
    assert jobs_farm.cli("wait", job.id).returncode == 1
    # The task, which would wait forever, got TaskCancelled and the slot is free: the next
    # job runs on the same one-slot worker, in the same child process.
    wait_for(gate.cancelled)
    next_job = farm.submit("farm_jobs:pid")
    next_job.wait(timeout=60)
    assert next_job.results() == [int((jobs_farm.root / "gates/cancel-me.started").read_text())]
    assert f"task {job.id}.0 cancelled" in jobs_farm.log_text("worker-1")


def test_a_task_that_ignores_the_cancel_is_killed_and_its_process_replaced(
    jobs_farm: Farm,
) -> None:
    jobs_farm.start_worker("--cancel-grace", "1")
    farm = jobs_farm.client()
    gate = jobs_farm.gate("stubborn")
    job = farm.submit("farm_jobs:stubborn", "stubborn")
    gate.wait_started()
    stubborn_pid = int((jobs_farm.root / "gates/stubborn.started").read_text())
    job.cancel()
    wait_for(gate.cancelled)  # it was told, and carried on regardless
    # After the grace period the worker kills that process and starts a fresh one.
    wait_for(lambda: not Path(f"/proc/{stubborn_pid}").exists())
    after = farm.submit("farm_jobs:pid")
    after.wait(timeout=60)
    [fresh_pid] = after.results()
    assert fresh_pid != stubborn_pid
    assert job.status()["state"] == "cancelled"
    assert f"task {job.id}.0 ignored the cancel; killing its process" in jobs_farm.log_text(
        "worker-1"
    )


def test_worker_info(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--slots", "2", name="render-01")
    answered = jobs_farm.cli("worker-info", "--json")
    assert answered.returncode == 0, answered.stderr
    info = json.loads(answered.stdout)
    assert info["worker"] == "render-01"
    assert info["slots"] == 2
    assert Path(info["root"]) == jobs_farm.root.resolve()
    # The worker runs on this machine, with this Python.
    assert info["python"] == platform.python_version()
    assert info["hostname"] == socket.gethostname()
    assert info["platform"] == platform.platform()


@pytest.mark.parametrize(
    ("function", "complaint"),
    [
        ("/etc/passwd.py:steal", "is absolute"),
        ("../outside.py:escape", "escapes the farm root"),
        ("jobs/../../outside.py:escape", "escapes the farm root"),
        ("not a function", "must look like module:function"),
    ],
)
def test_paths_outside_the_root_are_refused(farm: Farm, function: str, complaint: str) -> None:
    refused = farm.cli("submit", "python", function)
    assert refused.returncode != 0
    assert complaint in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "Traceback" not in refused.stderr
    assert farm.client().jobs() == []


def test_server_refuses_escapes_the_client_did_not_check(farm: Farm) -> None:
    client = farm.client()
    with pytest.raises(buildcat.RequestRejected, match="is absolute") as raised:
        client.request("POST", "/jobs", {"tasks": [{"payload": {"function": "/x.py:f"}}]})
    assert raised.value.status == 400


def test_exit_when_idle_and_max_tasks(jobs_farm: Farm) -> None:
    farm = jobs_farm.client()
    job = farm.map("farm_jobs:square", range(5))
    limited = jobs_farm.start_worker("--max-tasks", "2", name="limited")
    assert limited.wait(timeout=30) == 0
    assert job.status()["tasks"]["done"] == 2
    idle = jobs_farm.start_worker("--exit-when-idle", name="idle")
    assert idle.wait(timeout=30) == 0
    assert job.results() == [0, 1, 4, 9, 16]


def test_unreachable_server_is_one_clear_line(tmp_path: Path) -> None:
    farm = Farm(root=tmp_path, logs=tmp_path / "logs", port=1)
    failed = farm.cli("status", FARM_TOKEN="t" * 43)
    assert failed.returncode != 0
    assert failed.stderr.strip().startswith("farm: error: cannot reach the farm server")
    assert len(failed.stderr.strip().splitlines()) == 1


def test_server_shutdown_releases_waiting_workers(jobs_farm: Farm) -> None:
    for _ in range(3):
        jobs_farm.start_worker("--no-blender")
    client = jobs_farm.client()
    wait_for(lambda: client.ping()["waiting_workers"] == 3)  # three parked long-polls
    assert jobs_farm.server is not None
    assert launch.stop(jobs_farm.server) == 0
    # Each parked poll was answered before the server went, saying why, instead of being
    # cut off at the end of aiohttp's shutdown timeout; the workers took it in their stride.
    assert "shutting down: answered 3 waiting lease request(s)" in jobs_farm.log_text("server")
    for name in ("worker-1", "worker-2", "worker-3"):
        assert "the server is shutting down; waiting for it" in jobs_farm.log_text(name)
    for worker in jobs_farm.workers:
        assert worker.poll() is None
    # They carry on: back on the same port, the server hands a task to each of them.
    jobs_farm.start_server(port=jobs_farm.port)
    names = [f"back-{n}" for n in range(3)]
    job = client.map("farm_jobs:gated", names)
    for name in names:
        jobs_farm.gate(name).wait_started()
    running = {task["worker_name"] for task in job.tasks() if task["state"] == "leased"}
    assert running == {"worker-1", "worker-2", "worker-3"}
    for name in names:
        jobs_farm.gate(name).open()
    job.wait(timeout=60)


def test_worker_rides_out_a_server_restart(jobs_farm: Farm) -> None:
    worker = jobs_farm.start_worker()
    farm = jobs_farm.client()
    assert farm.submit("farm_jobs:square", 3).results() == [9]
    assert jobs_farm.server is not None
    launch.stop(jobs_farm.server)
    jobs_farm.start_server(port=jobs_farm.port)
    # The worker finds the server again by itself; the server remembers it.
    assert farm.map("farm_jobs:square", [4, 5]).results() == [16, 25]
    assert worker.poll() is None
    assert [w["name"] for w in farm.workers()] == ["worker-1"]


def test_jobs_survive_a_server_crash_in_every_state(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--slots", "2")
    farm = jobs_farm.client()
    done = farm.map("farm_jobs:square", range(5))
    done.wait(timeout=60)
    failed = farm.submit_tasks(
        [{"payload": {"function": "farm_jobs:boom", "args": ["x"]}}], max_attempts=1
    )
    with pytest.raises(buildcat.JobFailed):
        failed.wait(timeout=60)
    cancelled = farm.submit("farm_jobs:gated", "never")
    cancelled.cancel()
    running = farm.submit("farm_jobs:gated", "survivor", "survived")
    jobs_farm.gate("survivor").wait_started()  # running when the server dies, until we say
    paused = farm.map("farm_jobs:square", [7, 8], priority=-1)
    paused.pause()
    before = {job.id: job.status() for job in (done, failed, cancelled, running, paused)}

    assert jobs_farm.server is not None
    jobs_farm.server.kill()  # SIGKILL: no goodbye
    jobs_farm.server.wait()
    jobs_farm.server.stdout.close()  # type: ignore[union-attr]
    jobs_farm.start_server(port=jobs_farm.port)

    for job_id, status in before.items():
        after = farm.job(job_id).status()
        assert after["state"] == status["state"], job_id
        assert after["tasks"] == status["tasks"], job_id
        assert after["error"] == status["error"]
    assert done.results() == [0, 1, 4, 9, 16]
    # The task that was running when the server died finishes and is recorded once.
    assert running.status()["state"] == "running"
    jobs_farm.gate("survivor").open()
    assert running.results() == ["survived"]
    assert [t["attempts"] for t in running.tasks()] == [1]
    paused.resume()
    assert paused.results() == [49, 64]
    assert "event(s) replayed" in jobs_farm.log_text("server")


def test_a_torn_journal_record_is_skipped(jobs_farm: Farm) -> None:
    farm = jobs_farm.client()
    job = farm.submit("farm_jobs:square", 6)
    assert jobs_farm.server is not None
    launch.stop(jobs_farm.server)
    journal = jobs_farm.root / ".buildcat" / "journal.bin"
    with open(journal, "ab") as handle:
        handle.write(b"\x00\x00\x10\x00garbage")  # half a record: a crash mid-write
    jobs_farm.start_server(port=jobs_farm.port)
    assert "skipped a torn record" in jobs_farm.log_text("server")
    jobs_farm.start_worker()
    assert job.results() == [36]


def test_frames_are_split_into_chunks(jobs_farm: Farm) -> None:
    jobs_farm.start_worker()
    submitted = jobs_farm.cli(
        "submit", "python", "--json", "--wait", "farm_jobs:render_frames", "shot_a",
        "--frames", "1-10,20-30:5", "--chunk", "4", "-k", "size=16",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = jobs_farm.client().job(json.loads(submitted.stdout)["id"])
    assert [t["label"] for t in job.tasks()] == ["1-4", "5-8", "9-10,20,25", "30"]
    frames = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 25, 30]
    assert [path for paths in job.results() for path in paths] == [
        f"renders/shot_a/frame_{f:04d}.txt" for f in frames
    ]
    assert (jobs_farm.root / "renders/shot_a/frame_0025.txt").read_text() == "shot_a 16"


def test_bad_frame_spec_is_one_clear_line(farm: Farm) -> None:
    refused = farm.cli("submit", "python", "m:f", "--frames", "1-10,20-")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "farm: error: bad frame spec part '20-': expected N, A-B or A-B:STEP (or A..B)"
    )
    assert farm.client().jobs() == []


def test_too_big_a_result_fails_the_task_with_advice(jobs_farm: Farm) -> None:
    jobs_farm.start_worker()
    farm = jobs_farm.client()
    job = farm.submit_tasks(
        [{"payload": {"function": "farm_jobs:big_result", "args": [5]}}], max_attempts=1
    )
    with pytest.raises(buildcat.JobFailed, match="write large outputs to files"):
        job.wait(timeout=60)
    assert farm.submit("farm_jobs:square", 2).results() == [4]


def test_an_edited_job_module_is_imported_again(jobs_farm: Farm) -> None:
    jobs_farm.start_worker()
    farm = jobs_farm.client()
    assert farm.submit("farm_jobs:version").results() == ["v1"]
    module = jobs_farm.root / "farm_jobs.py"
    module.write_text(module.read_text().replace('return "v1"', 'return "v2"'))
    stat = module.stat()
    os.utime(module, (stat.st_atime, stat.st_mtime + 2))  # a later edit, whatever the clock
    assert farm.submit("farm_jobs:version").results() == ["v2"]


def test_remote_traceback_starts_in_the_users_code(jobs_farm: Farm) -> None:
    jobs_farm.start_worker()
    job = jobs_farm.client().submit_tasks(
        [{"payload": {"function": "farm_jobs:boom", "args": ["x"]}}], max_attempts=1
    )
    with pytest.raises(buildcat.JobFailed) as raised:
        job.wait(timeout=60)
    assert "buildcat/worker" not in raised.value.traceback
    assert "farm_jobs.py" in raised.value.traceback


def test_wait_json_prints_the_failed_status(jobs_farm: Farm) -> None:
    jobs_farm.start_worker()
    job = jobs_farm.client().submit_tasks(
        [{"payload": {"function": "farm_jobs:boom", "args": ["y"]}}], max_attempts=1
    )
    waited = jobs_farm.cli("wait", "--json", job.id)
    assert waited.returncode == 1
    status = json.loads(waited.stdout)
    assert status["state"] == "failed"
    assert "boom: y" in status["error"]
    slow = jobs_farm.client().submit("farm_jobs:gated", "never")
    jobs_farm.gate("never").wait_started()
    timed_out = jobs_farm.cli("wait", "--timeout", "0.2", slow.id)
    assert timed_out.returncode == 3
    assert timed_out.stderr.strip() == f"farm: job {slow.id} still running after 0.2s"
    slow.cancel()


def test_a_missing_function_file_is_refused_at_submit(farm: Farm) -> None:
    refused = farm.cli("submit", "python", "shots/missing.py:render")
    assert refused.returncode != 0
    assert "shots/missing.py does not exist under the farm root" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_a_retry_goes_to_another_worker(jobs_farm: Farm) -> None:
    jobs_farm.start_worker(name="broken")
    jobs_farm.wait_workers(1)
    farm = jobs_farm.client()
    job = farm.submit_tasks(
        [{"payload": {"function": "farm_jobs:fails_on", "args": ["broken"]}}], max_attempts=10
    )
    wait_for(lambda: job.tasks()[0]["failures"] >= 1)
    jobs_farm.start_worker(name="healthy")
    assert job.results() == ["healthy"]
    (task,) = job.tasks()
    assert 1 <= task["failures"] <= 3  # "broken" is blocked from the job after 3


def test_a_worker_that_keeps_failing_a_job_is_blocked_and_can_be_cleared(jobs_farm: Farm) -> None:
    jobs_farm.start_worker(name="broken")
    jobs_farm.wait_workers(1)
    farm = jobs_farm.client()
    job = farm.submit_tasks(
        [{"payload": {"function": "farm_jobs:fails_on", "args": ["broken"]}}] * 4,
        max_attempts=5,
    )
    wait_for(lambda: job.status()["blocked"] == ["broken"])
    status = jobs_farm.cli("status", job.id)
    assert "blocked workers: broken" in status.stdout
    assert "every worker that can run it is blocked (broken)" in status.stdout
    unblocked = jobs_farm.cli("unblock", job.id)
    assert unblocked.returncode == 0, unblocked.stderr
    assert "blocked workers: none" in unblocked.stdout
    wait_for(lambda: job.status()["blocked"] == ["broken"])  # it fails again, blocked again
    jobs_farm.start_worker(name="healthy")
    assert job.results() == ["healthy"] * 4


def test_farm_retry_runs_a_failed_job_again(jobs_farm: Farm) -> None:
    jobs_farm.start_worker(name="broken")
    farm = jobs_farm.client()
    job = farm.submit_tasks(
        [{"payload": {"function": "farm_jobs:fails_on", "args": ["broken"]}}], max_attempts=1
    )
    with pytest.raises(buildcat.JobFailed):
        job.wait(timeout=60)
    jobs_farm.start_worker(name="healthy")
    jobs_farm.wait_workers(2)
    retried = jobs_farm.cli("retry", job.id)
    assert retried.returncode == 0, retried.stderr
    assert jobs_farm.cli("wait", job.id).returncode == 0
    assert job.results() == ["healthy"]


def test_a_task_past_its_timeout_is_stopped_and_retried(jobs_farm: Farm) -> None:
    jobs_farm.start_worker()
    done = jobs_farm.cli(
        "submit", "python", "--wait", "--json", "--timeout", "1", "--max-attempts", "2",
        "farm_jobs:slow", "30",
    )  # fmt: skip
    assert done.returncode == 1
    status = json.loads(done.stdout)
    assert status["state"] == "failed"
    assert "timed out after 1s" in status["error"]
    (task,) = jobs_farm.client().job(status["id"]).tasks()
    assert task["failures"] == 2
    # The worker stopped the task and is free again.
    assert jobs_farm.client().submit("farm_jobs:square", 3).results() == [9]


def test_snapshots_keep_the_journal_short_and_restore_everything(tmp_path: Path) -> None:
    farm = Farm(root=tmp_path / "root", logs=tmp_path / "logs")
    farm.root.mkdir()
    shutil.copy(HERE / "farm_jobs.py", farm.root / "farm_jobs.py")
    farm.start_server("--snapshot-every", "10")
    try:
        farm.start_worker()
        client = farm.client()
        done = client.map("farm_jobs:square", range(30))
        assert done.results() == [x * x for x in range(30)]
        state = farm.root / ".buildcat"
        wait_for(lambda: "snapshot 1 written" in farm.log_text("server"))
        launch.stop_all(farm.workers)  # so the next job cannot finish before it is paused
        paused = client.map("farm_jobs:square", [5, 6], priority=-5)
        paused.pause()
        assert farm.server is not None
        farm.server.kill()
        farm.server.wait()
        farm.server.stdout.close()  # type: ignore[union-attr]
        assert (state / "snapshot.bin").stat().st_size > 0
        assert (state / "journal.bin").stat().st_size < 4096  # only what came after it
        farm.start_server("--snapshot-every", "10", port=farm.port)
        assert done.status()["tasks"]["done"] == 30
        assert done.results() == [x * x for x in range(30)]
        assert paused.status()["state"] == "paused"
        farm.start_worker(name="after-restart")
        paused.resume()
        assert paused.results() == [25, 36]
    finally:
        farm.stop()


def test_a_worker_fed_quick_tasks_does_not_hoard_a_slow_job(jobs_farm: Farm) -> None:
    """Prefetch sized for no-op tasks must not grab every task of the next, slower job."""
    jobs_farm.start_worker("--no-blender", name="a")
    jobs_farm.start_worker("--no-blender", name="b")
    jobs_farm.wait_workers(2)
    client = jobs_farm.client()
    assert client.map("farm_jobs:square", list(range(200))).results()[-1] == 199**2
    slow = client.map("farm_jobs:gated", ["slow"] * 6)

    def one_each() -> bool:
        tasks = slow.tasks()
        holders = [task["worker_name"] for task in tasks if task["state"] == "leased"]
        return sorted(holders) == ["a", "b"]

    # Whichever worker took the slow job first kept one task for its one slot and gave
    # the rest back, so the other worker is running one too (a hoarder would hold five).
    wait_for(one_each, timeout=60)
    assert [task["state"] for task in slow.tasks()].count("queued") == 4
    jobs_farm.gate("slow").open()
    slow.wait(60)
