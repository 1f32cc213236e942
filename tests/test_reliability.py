"""The promises of README's Reliability section and docs/concepts.md that no other test
checks, each against real ``farm`` processes: results that cannot travel, a journal that
cannot be written, ``--state-dir`` and ``--no-journal``, snapshots across a restart and
a crash in the middle of one, heartbeats, reports checked whole, workers that disconnect
or drain while the server is away, and SIGTERM to a worker's whole process group."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest

import buildcat
from buildcat import launch
from buildcat.server import snapshot
from buildcat.server.app import Farm as ServerFarm
from buildcat.server.app import ServerConfig
from buildcat.server.journal import read_events
from tests.conftest import Farm, secret_header, unused_port, wait_for

HERE = Path(__file__).parent


def new_farm(tmp_path: Path, name: str = "root") -> Farm:
    """A farm root holding the test job module, with no server started yet."""
    farm = Farm(root=tmp_path / name, logs=tmp_path / f"{name}-logs")
    farm.root.mkdir()
    shutil.copy(HERE / "farm_jobs.py", farm.root / "farm_jobs.py")
    return farm


def kill_server(farm: Farm) -> None:
    """SIGKILL: the server gets no chance to tidy up."""
    assert farm.server is not None
    farm.server.kill()
    farm.server.wait()
    if farm.server.stdout is not None:
        farm.server.stdout.close()


def log_times(text: str, needle: str) -> list[float]:
    """When each log line containing ``needle`` was written (the logs' own timestamps)."""
    stamps = []
    for line in text.splitlines():
        if needle in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            stamps.append(stamp.timestamp())
    return stamps


# ---- no result is lost silently -------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "args", "error"),
    [
        (
            "farm_jobs:unencodable",
            [],
            "ResultError: the result cannot be sent back: cannot encode set as msgpack",
        ),
        (
            "farm_jobs:nested",
            [65],
            "ResultError: the result cannot be sent back: body nested deeper than 64 levels",
        ),
        # 63 levels pass the task's own check, but the report around the result adds three
        # more and the server refuses the report: the worker turns that into a failure.
        (
            "farm_jobs:nested",
            [63],
            "the server refused this task's result: server refused POST /workers/",
        ),
    ],
    ids=["unencodable", "too-deep", "refused-by-the-server"],
)
def test_a_result_that_cannot_travel_fails_its_task_and_says_why(
    jobs_farm: Farm, function: str, args: list[Any], error: str
) -> None:
    jobs_farm.start_worker("--no-blender")
    client = jobs_farm.client()
    job = client.submit_tasks([{"payload": {"function": function, "args": args}}], max_attempts=1)
    with pytest.raises(buildcat.JobFailed) as raised:
        job.wait(timeout=60)
    assert error in raised.value.error
    [task] = job.tasks()
    assert task["state"] == "failed" and task["failures"] == 1
    assert error in task["error"]
    waited = jobs_farm.cli("wait", job.id)
    assert waited.returncode == 1 and error in waited.stderr
    # The worker goes on: the next result travels.
    assert client.map("farm_jobs:nested", [3]).results() == [[[["bottom"]]]]


# ---- the journal ------------------------------------------------------------------------------


def test_a_journal_that_cannot_be_written_answers_503_and_acknowledges_nothing_else(
    tmp_path: Path,
) -> None:
    """A file-size limit on the server process (RLIMIT_FSIZE, as a full disk would) makes
    its journal writes fail for real: every acknowledged job survives, no other does."""
    farm = new_farm(tmp_path)
    port = unused_port()
    log = launch.free_log(tmp_path / "server.log")
    limit = 48 * 1024
    server, _ = launch.start_server(
        farm.root, "--no-discovery", port=port, log=log, wrap=["prlimit", f"--fsize={limit}"]
    )
    try:
        client = buildcat.connect("127.0.0.1", port, farm.root)
        acknowledged: list[str] = []
        refusal: buildcat.RequestRejected | None = None
        payload = "x" * 2000  # about 2 KB journalled per submit
        for _ in range(100):
            try:
                job = client.submit("farm_jobs:echo", payload)
            except buildcat.RequestRejected as exc:
                refusal = exc
                break
            acknowledged.append(job.id)
        assert refusal is not None, "the journal never filled"
        assert refusal.status == 503
        assert str(refusal).startswith("the server cannot record changes: cannot write the journal")
        assert "File too large" in str(refusal)
        assert 10 <= len(acknowledged) < 30
        # It keeps refusing changes it cannot record; reading still works.
        with pytest.raises(buildcat.RequestRejected) as again:
            client.submit("farm_jobs:echo", payload)
        assert again.value.status == 503
        assert client.job(acknowledged[0]).status()["id"] == acknowledged[0]
        # The failed write was cut back to the last whole record: a change that still fits
        # is accepted, and the journal goes on replaying.
        client.job(acknowledged[0]).pause()
        client.close()
    finally:
        server.kill()
        server.wait()
        server.stdout.close()  # type: ignore[union-attr]
        log.close()
    # Back without the limit: exactly the acknowledged jobs, whole and runnable.
    farm.start_server(port=port)
    try:
        client = farm.client()
        assert [job["id"] for job in client.jobs()] == acknowledged
        assert [job["state"] for job in client.jobs()] == ["paused"] + ["queued"] * (
            len(acknowledged) - 1
        )
        client.job(acknowledged[0]).resume()
        farm.start_worker("--no-blender")
        for job_id in acknowledged:
            assert client.job(job_id).results() == [payload]
    finally:
        farm.stop()


def test_state_dir_holds_the_journal_and_no_journal_forgets_everything(tmp_path: Path) -> None:
    farm = new_farm(tmp_path)
    state = tmp_path / "elsewhere" / "state"
    farm.start_server("--state-dir", str(state))
    try:
        job = farm.client().submit("farm_jobs:square", 7)
        kill_server(farm)
        assert [e[0] for e in read_events(state / "journal.bin")] == ["generation", "submit"]
        assert not (farm.root / ".buildcat" / "journal.bin").exists()
        # The secret stays in the root, where workers and clients read it.
        assert (farm.root / ".buildcat" / "secret").is_file()
        assert not (state / "secret").exists()
        farm.start_server("--state-dir", str(state), port=farm.port)
        assert job.status()["state"] == "queued"
        farm.start_worker("--no-blender")
        assert job.results() == [49]
        launch.stop_all(farm.workers)
        kill_server(farm)
        # The root's own state folder has no journal: a server without --state-dir starts
        # empty, and one with --no-journal writes none and forgets its jobs when it stops.
        farm.start_server("--no-journal", port=farm.port)
        client = farm.client()
        assert client.jobs() == []
        forgotten = client.submit("farm_jobs:square", 8)
        assert [j["id"] for j in client.jobs()] == [forgotten.id]
        kill_server(farm)
        # No journal: only the secret and what members read beside it (dashboard salt, TLS,
        # and the record of where the --state-dir server listened: members know the root).
        state = sorted(p.name for p in (farm.root / ".buildcat").iterdir())
        assert state == ["dashboard", "secret", "server.json", "tls.json"]
        farm.start_server("--no-journal", port=farm.port)
        assert farm.client().jobs() == []
    finally:
        farm.stop()


# ---- snapshots ----------------------------------------------------------------------------------


def job_record(client: buildcat.Client, job_id: str) -> dict[str, Any]:
    status = client.job(job_id).status()
    keep = ("state", "tasks", "error", "traceback", "blocked", "priority", "finished_at")
    tasks = client.job(job_id).tasks()
    return {
        **{key: status[key] for key in keep},
        "tasks_detail": [
            {key: task[key] for key in ("state", "attempts", "failures", "error", "worker_name")}
            for task in tasks
        ],
        "results": client.request("GET", f"/jobs/{job_id}/results")["results"],
    }


def snapshots_written(farm: Farm) -> int:
    return len(re.findall(r"journal: snapshot \d+ written", farm.log_text("server")))


def test_a_snapshot_brings_back_failed_and_cancelled_jobs_errors_and_blocklists(
    tmp_path: Path,
) -> None:
    farm = new_farm(tmp_path)
    farm.start_server("--snapshot-every", "10")
    try:
        farm.start_worker("--no-blender", name="broken")
        client = farm.client()
        failed = client.submit_tasks(
            [{"payload": {"function": "farm_jobs:boom", "args": ["for good"]}}], max_attempts=1
        )
        with pytest.raises(buildcat.JobFailed):
            failed.wait(timeout=60)
        blocked = client.submit_tasks(
            [{"payload": {"function": "farm_jobs:fails_on", "args": ["broken"]}}] * 4,
            max_attempts=10,
        )
        wait_for(lambda: blocked.status()["blocked"] == ["broken"])
        launch.stop_all(farm.workers)
        cancelled = client.map("farm_jobs:square", [1, 2])
        cancelled.cancel()
        done_before = snapshots_written(farm)
        # Ten more events (ten submits) and the next snapshot holds all of the above.
        filler = [client.submit("farm_jobs:square", n) for n in range(10)]
        wait_for(lambda: snapshots_written(farm) > done_before)
        ids = [failed.id, blocked.id, cancelled.id, *(job.id for job in filler)]
        before = {job_id: job_record(client, job_id) for job_id in ids}
        kill_server(farm)
        # Their submits are in the snapshot, not in the (fresh) journal: a restart can only
        # find them there.
        journal = list(read_events(farm.root / ".buildcat" / "journal.bin"))
        submitted = {event[2] for event in journal if event[0] == "submit"}
        assert not submitted & {failed.id, blocked.id, cancelled.id}

        farm.start_server("--snapshot-every", "10", port=farm.port)
        after = {job_id: job_record(client, job_id) for job_id in ids}
        assert after == before
        assert after[failed.id]["state"] == "failed"
        assert "RuntimeError: boom: for good" in after[failed.id]["error"]
        assert 'raise RuntimeError(f"boom: {message}")' in after[failed.id]["traceback"]
        assert after[blocked.id]["blocked"] == ["broken"]
        assert after[cancelled.id]["state"] == "cancelled"
        # The blocklist still works: "broken" is kept off the job, a healthy worker runs it.
        farm.start_worker("--no-blender", name="broken")
        farm.start_worker("--no-blender", name="healthy")
        assert client.job(blocked.id).results() == ["healthy"] * 4
    finally:
        farm.stop()


def test_a_crash_in_the_middle_of_a_snapshot_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """A running server's snapshot is written by a forked child while the journal goes on;
    it names the journal generation and offset it holds. A crash after it is renamed into
    place but before the journal restarts leaves it beside the old journal, whose records
    after that offset it does not hold; a crash while writing leaves a partial
    ``snapshot.tmp`` beside the old snapshot. Neither may lose or repeat a thing."""
    farm = new_farm(tmp_path)
    state = farm.root / ".buildcat"
    farm.start_server()
    try:
        client = farm.client()
        first = [client.submit("farm_jobs:square", n) for n in range(7)]
        kill_server(farm)
        # What the child writes, from the queue of the first seven jobs, set aside.
        server = ServerFarm(ServerConfig(root=farm.root, discovery=False))
        assert server.journal is not None
        mark = (server.journal.generation, server.journal.size)
        snapshot.write(state / "next.bin", server.generation + 1, server.scheduler, mark)
        server.journal.close()
        # Three more jobs are journaled after the mark while the child writes ...
        farm.start_server(port=farm.port)
        later = [client.submit("farm_jobs:square", n) for n in (10, 11, 12)]
        before = client.jobs()
        kill_server(farm)
        # ... and the crash comes between its rename and the journal's restart.
        os.replace(state / "next.bin", state / "snapshot.bin")
        (state / "snapshot.tmp").write_bytes(b"\x85half a snapsh")  # and a torn next one
        assert read_events(state / "journal.bin").__next__() == ["generation", mark[0]]
        farm.start_server(port=farm.port)
        assert client.jobs() == before  # the later jobs once each, none twice
        assert "snapshot generation 1 and 3 event(s) replayed: 10 job(s)" in farm.log_text("server")
        # The start made the journal generation 1, holding only what the snapshot lacks.
        assert [e[0] for e in read_events(state / "journal.bin")] == ["generation"] + ["submit"] * 3
        assert next(read_events(state / "journal.bin")) == ["generation", 1]
        kill_server(farm)
        farm.start_server(port=farm.port)
        assert client.jobs() == before
        farm.start_worker("--no-blender")
        assert [job.results() for job in first + later] == [
            [n * n] for n in (*range(7), 10, 11, 12)
        ]
        assert len(client.jobs()) == 10
    finally:
        farm.stop()


# ---- leases, heartbeats and reports -----------------------------------------------------------


def test_heartbeats_keep_a_long_task_leased_far_beyond_the_lease_timeout(tmp_path: Path) -> None:
    farm = new_farm(tmp_path)
    farm.start_server("--lease-timeout", "1")
    try:
        farm.start_worker("--no-blender")
        client = farm.client()
        gate = farm.gate("long")
        job = client.submit("farm_jobs:gated", "long", "kept")
        gate.wait_started()
        [task] = job.tasks()
        leased_at = task["leased_at"]

        def outlived_five_lease_timeouts() -> bool:
            [now] = job.tasks()
            assert now["state"] == "leased" and now["attempts"] == 1, now
            assert now["leased_at"] == leased_at
            return time.time() - leased_at > 5 * 1.0

        wait_for(outlived_five_lease_timeouts)
        assert "ran out" not in farm.log_text("server")
        gate.open()
        assert job.results() == ["kept"]
        [task] = job.tasks()
        assert task["attempts"] == 1 and task["failures"] == 0
    finally:
        farm.stop()


class RawWorker:
    """A worker spoken by hand over HTTP, to send what a real worker never would."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self.id = self.call("POST", "/api/v1/workers", {"name": "by-hand"})[1]["id"]

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.farm.port, timeout=30)
        try:
            data = msgpack.packb(body) if body is not None else None
            headers = {"Content-Type": "application/msgpack", **secret_header(self.farm.root)}
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def lease(self, want: int) -> list[dict[str, Any]]:
        status, reply = self.call("POST", f"/api/v1/workers/{self.id}/lease", {"want": want})
        assert status == 200, reply
        return list(reply["tasks"])

    def report(self, body: dict[str, Any]) -> tuple[int, Any]:
        return self.call("POST", f"/api/v1/workers/{self.id}/report", body)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"done": [{"id": "{1}", "ok": True, "seconds": "soon"}]}, "'seconds' must be a number"),
        ({"done": ["not a map"]}, "each 'done' entry must be a map"),
        ({"progress": [{"id": "{0}", "fraction": "half"}]}, "'fraction' must be a number"),
        ({"release": ["{1}", 7]}, "'release' must be a list of task ids"),
    ],
    ids=["bad-seconds", "not-a-map", "bad-progress", "bad-release"],
)
def test_a_report_is_checked_whole_before_any_of_it_applies(
    farm: Farm, bad: dict[str, Any], reason: str
) -> None:
    worker = RawWorker(farm)
    job = farm.client().submit_tasks([{"payload": {"function": "m:f"}}] * 2)
    first, second = (task["id"] for task in worker.lease(2))
    # A valid result for the first task, then something wrong in the same report.
    text = json.dumps(bad).replace("{0}", first).replace("{1}", second)
    body = json.loads(text)
    body["done"] = [{"id": first, "ok": True, "result": "A"}, *body.get("done", [])]
    status, reply = worker.report(body)
    assert status == 400 and reply["error"] == reason
    tasks = job.tasks()
    assert [task["state"] for task in tasks] == ["leased", "leased"]
    assert [task["progress"] for task in tasks] == [0.0, 0.0]
    # The same results, sent right, are taken.
    right = [{"id": first, "ok": True, "result": "A"}, {"id": second, "ok": True, "result": "B"}]
    status, reply = worker.report({"done": right})
    assert status == 200 and reply["accepted"] == [first, second]
    assert job.results() == ["A", "B"]


@pytest.mark.parametrize("farm", [("--lease-timeout", "300")], indirect=True)
def test_a_worker_that_hangs_up_mid_poll_is_handed_nothing(jobs_farm: Farm) -> None:
    ghost = RawWorker(jobs_farm)
    client = jobs_farm.client()
    for _ in range(3):
        connection = socket.create_connection(("127.0.0.1", jobs_farm.port), timeout=10)
        body = msgpack.packb({"want": 4, "wait": 60})
        token = secret_header(jobs_farm.root)["Authorization"]
        connection.sendall(
            (
                f"POST /api/v1/workers/{ghost.id}/lease HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {token}\r\nContent-Type: application/msgpack\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        wait_for(lambda: client.ping()["waiting_workers"] == 1)  # parked on the server
        connection.close()
        wait_for(lambda: client.ping()["waiting_workers"] == 0)
    # Work arrives after the hang-ups: a live worker gets it all, not the 300 s ghost.
    jobs_farm.start_worker("--no-blender", name="alive")
    job = client.map("farm_jobs:square", range(8))
    job.wait(timeout=60)
    assert {task["worker_name"] for task in job.tasks()} == {"alive"}
    assert all(task["attempts"] == 1 for task in job.tasks())


# ---- stopping workers ---------------------------------------------------------------------------


def start_worker_in_its_own_group(farm: Farm, name: str, *extra: str) -> subprocess.Popen[bytes]:
    """A worker that leads its own process group, as under systemd or a shell job."""
    process = subprocess.Popen(
        launch.farm_command(
            "worker", "--host", "127.0.0.1", "--port", str(farm.port), "--root", str(farm.root),
            "--name", name, "--no-blender", *extra,
        ),
        stdout=farm._log(name),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    farm.workers.append(process)
    return process


def test_sigterm_to_the_workers_whole_process_group_drains_it(jobs_farm: Farm) -> None:
    worker = start_worker_in_its_own_group(jobs_farm, "service")
    client = jobs_farm.client()
    gate = jobs_farm.gate("draining")
    job = client.map("farm_jobs:gated", ["draining", "draining"], max_attempts=1)
    gate.wait_started()
    child = int((jobs_farm.root / "gates/draining.started").read_text())
    # The task runs in a session (and group) of its own: the worker decides its fate.
    assert os.getsid(child) == os.getpgid(child) == child != worker.pid
    os.killpg(worker.pid, signal.SIGTERM)  # systemd's default: every process in the group
    wait_for(lambda: "draining: signal received" in jobs_farm.log_text("service"))
    assert Path(f"/proc/{child}").exists()  # the task's process took no notice
    gate.open()
    assert worker.wait(timeout=60) == 0
    tasks = job.tasks()
    # The running task finished and counted; the other was never started by this worker.
    assert [task["state"] for task in tasks] == ["done", "queued"]
    assert tasks[0]["failures"] == 0 and tasks[1]["attempts"] == 0


def test_a_draining_worker_delivers_to_a_server_that_comes_back(jobs_farm: Farm) -> None:
    worker = jobs_farm.start_worker("--no-blender", name="patient")
    client = jobs_farm.client()
    gate = jobs_farm.gate("delivery")
    job = client.submit("farm_jobs:gated", "delivery", "delivered")
    gate.wait_started()
    kill_server(jobs_farm)
    worker.send_signal(signal.SIGTERM)
    wait_for(lambda: "draining: signal received" in jobs_farm.log_text("patient"))
    gate.open()
    # It keeps the result and keeps trying while the server is away...
    wait_for(lambda: f"task {job.id}.0 done" in jobs_farm.log_text("patient"))
    wait_for(lambda: jobs_farm.log_text("patient").count("server unreachable") >= 3)
    assert worker.poll() is None
    jobs_farm.start_server(port=jobs_farm.port)
    # ...and delivers it once the server is back, then leaves.
    assert worker.wait(timeout=60) == 0
    assert job.results() == ["delivered"]
    assert job.tasks()[0]["worker_name"] == "patient"


def test_a_draining_worker_gives_up_on_an_absent_server_after_30_s(tmp_path: Path) -> None:
    farm = new_farm(tmp_path)
    farm.start_server("--lease-timeout", "1")
    try:
        worker = farm.start_worker("--no-blender", name="gives-up")
        client = farm.client()
        gate = farm.gate("lost")
        job = client.submit("farm_jobs:gated", "lost", "second run")
        gate.wait_started()
        kill_server(farm)
        worker.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining: signal received" in farm.log_text("gives-up"))
        gate.open()
        assert worker.wait(timeout=120) == 0
        text = farm.log_text("gives-up")
        assert (
            f"server gone while draining; 1 result(s) not delivered ({job.id}.0): the farm "
            "will run those tasks again" in text
        )
        # It tried for the 30 s the docs promise before giving up (a lower bound: a busy
        # machine only makes it later).
        [gave_up] = log_times(text, "server gone while draining")
        first_try = min(log_times(text, f"task {job.id}.0 done"))
        assert gave_up - first_try >= 30
        # The task runs again elsewhere (once its lease, if it reached the journal, runs out
        # on the restarted server).
        farm.start_server("--lease-timeout", "1", port=farm.port)
        farm.start_worker("--no-blender", name="elsewhere")
        assert job.results() == ["second run"]
        [task] = job.tasks()
        assert task["worker_name"] == "elsewhere" and task["failures"] == 0
    finally:
        farm.stop()


def test_a_worker_that_never_reached_the_server_stops_at_its_next_try(tmp_path: Path) -> None:
    farm = new_farm(tmp_path)
    farm.port = unused_port()  # nothing listens there
    (farm.root / ".buildcat").mkdir()
    (farm.root / ".buildcat" / "secret").write_text("s" * 43)
    worker = farm.start_worker("--no-blender", name="stranded")
    try:
        wait_for(lambda: "server unreachable" in farm.log_text("stranded"))
        worker.send_signal(signal.SIGTERM)
        # At its next try, within the 5 s backoff; a worker that waited out the 30 s given
        # to deliver results would miss this deadline.
        assert worker.wait(timeout=20) == 1
        text = farm.log_text("stranded")
        assert f"could not reach the farm server at http://127.0.0.1:{farm.port}" in text
        assert "Traceback" not in text
    finally:
        farm.stop()
