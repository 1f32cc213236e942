"""Archiving and deleting jobs: hidden from the default lists but kept, or gone with their
logs while their outputs stay; refused (changing nothing) for unfinished jobs, unknown
ids and jobs an unfinished job runs after; kept across restarts and snapshots."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import buildcat
from buildcat import protocol
from buildcat.errors import UnknownJob
from buildcat.server import journal, snapshot
from buildcat.server.scheduler import Conflict, JobState, NotFound, Scheduler, TaskSpec
from tests.conftest import Farm, secret_header, wait_for

HERE = Path(__file__).parent


# ---- the scheduler alone ----------------------------------------------------------------------


def specs(count: int = 1) -> list[TaskSpec]:
    return [TaskSpec(payload={"n": n}) for n in range(count)]


def finish_all(queue: Scheduler, now: float) -> None:
    while True:
        leased = queue.lease("w", 8, now)
        if not leased:
            return
        for task in leased:
            queue.complete("w", task.id, task.index, now)


@pytest.fixture
def queue() -> Scheduler:
    scheduler = Scheduler()
    scheduler.register("w", 4, {}, 0, worker_id="w")
    return scheduler


def test_only_an_ended_job_is_archived_and_a_refusal_changes_nothing(queue: Scheduler) -> None:
    job = queue.submit(specs(2), 0, job_id="a")
    with pytest.raises(Conflict, match="job a is queued: only a job that has ended"):
        queue.archive("a", 1, "ana")
    assert not job.archived and job.history == []
    with pytest.raises(NotFound, match="no job 'nope'"):
        queue.archive("nope", 1)
    finish_all(queue, 2)
    queue.archive("a", 3, "ana")
    queue.archive("a", 4, "ana")  # archiving an archived job changes nothing
    assert job.archived and job.to_dict()["archived"] is True
    assert job.history == [{"at": 3, "action": "archive", "by": "ana"}]
    queue.archive("a", 5, "bo", archived=False)
    assert not job.archived and job.history[-1] == {"at": 5, "action": "unarchive", "by": "bo"}


def test_a_retried_job_is_no_longer_archived(queue: Scheduler) -> None:
    job = queue.submit(specs(), 0, job_id="a")
    queue.cancel("a", 1)
    queue.archive("a", 2)
    queue.retry("a", 3)
    assert job.state is JobState.QUEUED and not job.archived


def test_a_deleted_job_leaves_every_index(queue: Scheduler) -> None:
    queue.submit(specs(), 0, job_id="a", key="key-of-a-0001")
    b = queue.submit(specs(), 0, job_id="b", after=["a"])
    waiting = queue.submit(specs(), 0, job_id="c", after=["b"])
    queue.cancel("c", 1)  # cancelled while waiting: still listed as one that waits for b
    assert "c" in queue.after_dependents["b"]
    finish_all(queue, 2)
    assert b.state is JobState.DONE and waiting.state is JobState.CANCELLED
    queue.delete("a", 3)
    queue.delete("c", 3)
    assert set(queue.jobs) == {"b"}
    assert queue.submit_keys == {} and queue.after_dependents == {}
    assert "a" not in queue.after_named
    # b ran after a; it no longer names a job that is gone, so a retry or a snapshot of it
    # never looks for one.
    assert b.after == [] and not b.waiting_for
    assert queue.ready_total == 0 and queue._active == []
    restored = Scheduler()
    snapshot.load(restored, protocol.unpack(protocol.pack(snapshot.dump(queue)), trusted=True))
    assert set(restored.jobs) == {"b"}
    # The same submit sent again (its key) makes a new job: the old one is gone.
    again = queue.submit(specs(), 4, key="key-of-a-0001")
    assert queue.submitted("key-of-a-0001", "") is again


def test_a_job_end_notice_owed_is_still_delivered_after_the_job_is_deleted(
    queue: Scheduler,
) -> None:
    """A notice carries the job as it ended: a receiver waiting on it still hears."""
    queue.submit(specs(), 0, job_id="a", meta={"notify": ["http://127.0.0.1:9/hook"]})
    finish_all(queue, 1)
    [owed] = queue.notices.pending.values()
    queue.delete("a", 2)
    assert list(queue.notices.pending.values()) == [owed]
    assert owed.job["id"] == "a" and owed.job["state"] == "done"
    restored = Scheduler()
    snapshot.load(restored, protocol.unpack(protocol.pack(snapshot.dump(queue)), trusted=True))
    assert list(restored.notices.pending) == [owed.delivery] and "a" not in restored.jobs


def test_delete_is_refused_for_unfinished_jobs_and_jobs_an_unfinished_job_runs_after(
    queue: Scheduler,
) -> None:
    a = queue.submit(specs(), 0, job_id="a")
    with pytest.raises(Conflict, match="job a is queued: only a job that has ended is deleted"):
        queue.delete("a", 1)
    queue.submit(specs(2), 0, job_id="b", after=["a"])
    [task] = queue.lease("w", 1, 1)
    queue.complete("w", task.id, 1, 2)  # a is done; b runs
    assert a.state is JobState.DONE
    queue.lease("w", 1, 3)
    with pytest.raises(Conflict, match=r"job b \(running\) runs after job a"):
        queue.delete("a", 4)
    assert "a" in queue.jobs and queue.jobs["b"].after == ["a"]
    with pytest.raises(NotFound):
        queue.delete("nope", 4)


def test_archive_and_delete_replay_from_the_journal() -> None:
    events: list[list[Any]] = [
        ["register", 0.0, "w", "w", 2, {}, {}],
        ["submit", 1.0, "a", [[{"n": 0}, []]], "", "python", 0, [], 3, "", {}, None, "", ""],
        ["submit", 1.0, "b", [[{"n": 0}, []]], "", "python", 0, [], 3, "", {}, None, "", ""],
        ["lease", 2.0, "w", ["a.0", "b.0"]],
        ["complete", 3.0, "w", "a.0", 1, ""],
        ["complete", 3.0, "w", "b.0", 1, ""],
        ["archive", 4.0, "a", "ana"],
        ["delete", 5.0, "b", "ana"],
        ["archive", 6.0, "a", "bo"],  # again: changes nothing
    ]  # fmt: skip
    replayed = Scheduler()
    assert journal.replay(replayed, iter(events)) == len(events)
    assert list(replayed.jobs) == ["a"]
    assert replayed.jobs["a"].archived
    assert replayed.jobs["a"].history == [{"at": 4.0, "action": "archive", "by": "ana"}]
    journal.replay(replayed, iter([["unarchive", 7.0, "a", "bo"]]))
    assert not replayed.jobs["a"].archived


# ---- a real farm ---------------------------------------------------------------------------


def call(farm: Farm, method: str, path: str) -> tuple[int, dict[str, Any]]:
    """One request as a script would make it (JSON), with the farm secret."""
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    try:
        headers = {**secret_header(farm.root), "Content-Type": "application/json"}
        body = "{}" if method == "POST" else None
        connection.request(method, f"/api/v1{path}", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def cli_without_terminal(farm: Farm, *args: str) -> subprocess.CompletedProcess[str]:
    """``farm ARGS`` as a script runs it: stdin is no terminal (whatever runs the tests)."""
    environment = {**os.environ, "FARM_HOST": "127.0.0.1", "FARM_PORT": str(farm.port),
                   "BUILDCAT_ROOT": str(farm.root)}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "buildcat", *args], stdin=subprocess.DEVNULL,
        capture_output=True, text=True, env=environment, timeout=60,
    )  # fmt: skip


def kill_and_restart(farm: Farm, *options: str) -> None:
    """SIGKILL the server (no goodbye, nothing flushed on the way out) and start it again."""
    assert farm.server is not None
    farm.server.kill()
    farm.server.wait()
    farm.server.stdout.close()  # type: ignore[union-attr]
    farm.start_server(*options, port=farm.port)


def snapshots_written(farm: Farm) -> int:
    return farm.log_text("server").count("written (")


def force_snapshot(farm: Farm) -> None:
    """Run small jobs (journal events) until the server writes one more snapshot."""
    before = snapshots_written(farm)
    client = farm.client()

    def written() -> bool:
        client.submit("farm_jobs:square", 2).wait(timeout=60)
        return snapshots_written(farm) > before

    wait_for(written, timeout=120)


def snapshot_jobs(farm: Farm) -> dict[str, dict[str, Any]]:
    found = snapshot.read(farm.root / ".buildcat" / "snapshot.bin")
    assert found is not None
    return {job["id"]: job for job in found[1]["jobs"]}


SNAPSHOT_EVERY_TEN = ("--snapshot-every", "10")


@pytest.mark.parametrize("farm", [SNAPSHOT_EVERY_TEN], indirect=True)
def test_archived_jobs_are_hidden_kept_and_survive_restarts_and_snapshots(farm: Farm) -> None:
    shutil_copy_jobs(farm)
    farm.start_worker("--no-blender")
    client = farm.client()
    old = client.submit("farm_jobs:square", 3)
    new = client.submit("farm_jobs:square", 4)
    assert old.results() == [9] and new.results() == [16]

    archived = farm.cli("archive", old.id)
    assert archived.returncode == 0, archived.stderr
    assert archived.stdout.strip() == f"{old.id} archived"
    listing = farm.cli("status")
    assert new.id in listing.stdout and old.id not in listing.stdout
    assert "1 archived job(s) hidden: farm status --archived lists them" in listing.stdout
    everything = farm.cli("status", "--archived")
    assert old.id in everything.stdout and "done, archived" in everything.stdout
    assert "hidden" not in everything.stdout
    assert [job["id"] for job in json.loads(farm.cli("status", "--json").stdout)] == [new.id]
    assert [job["id"] for job in client.jobs()] == [new.id]
    assert {job["id"] for job in client.jobs(archived=True)} == {old.id, new.id}
    view = old.status()  # one job by its id is always shown
    assert view["archived"] is True and view["history"][-1]["action"] == "archive"
    assert "archived (farm unarchive" in farm.cli("status", old.id).stdout

    # The API does the same; an archived job stays archived through a SIGKILL (the journal).
    assert client.archive(new)["archived"] is True
    kill_and_restart(farm, *SNAPSHOT_EVERY_TEN)
    assert {job["id"] for job in client.jobs(archived=True) if job["archived"]} == {old.id, new.id}
    assert client.unarchive(new.id)["archived"] is False
    # ... and through a snapshot, which keeps it and the history of who did what.
    force_snapshot(farm)
    kept = snapshot_jobs(farm)
    assert kept[old.id]["archived"] is True and kept[new.id]["archived"] is False
    kill_and_restart(farm, *SNAPSHOT_EVERY_TEN)
    assert old.status()["archived"] is True and new.status()["archived"] is False
    assert [entry["action"] for entry in new.status()["history"]] == ["archive", "unarchive"]
    unarchived = farm.cli("unarchive", old.id)
    assert unarchived.returncode == 0 and unarchived.stdout.strip() == f"{old.id} listed again"
    assert old.id in farm.cli("status").stdout


def shutil_copy_jobs(farm: Farm) -> None:
    (farm.root / "farm_jobs.py").write_text((HERE / "farm_jobs.py").read_text())


@pytest.mark.parametrize("farm", [SNAPSHOT_EVERY_TEN], indirect=True)
def test_a_deleted_job_is_gone_with_its_logs_and_its_outputs_stay(farm: Farm) -> None:
    shutil_copy_jobs(farm)
    farm.start_worker("--no-blender")
    client = farm.client()
    doomed = client.submit_tasks(
        [{"payload": {"function": "farm_jobs:chatty", "args": [1]}},
         {"payload": {"function": "farm_jobs:write_file", "args": ["out/kept.txt", "kept"]}}],
    )  # fmt: skip
    other = client.submit("farm_jobs:chatty", 7)
    assert doomed.results() == [2, "out/kept.txt"] and other.results() == [8]
    logs = farm.root / ".buildcat" / "logs"
    assert "working on 1" in (logs / doomed.id / f"{doomed.id}.0.log").read_text()

    deleted = farm.cli("delete", "--yes", doomed.id)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == f"{doomed.id} deleted"
    with pytest.raises(UnknownJob):
        doomed.status()
    assert doomed.id not in {job["id"] for job in client.jobs(archived=True)}
    wait_for(lambda: not (logs / doomed.id).exists())
    assert (farm.root / "out" / "kept.txt").read_text() == "kept"  # outputs stay
    assert (logs / other.id / f"{other.id}.0.log").exists()  # other jobs' logs stay
    status, reply = call(farm, "DELETE", f"/jobs/{doomed.id}")
    assert status == 404 and doomed.id in reply["error"]

    # Gone after a SIGKILL (the journal replays the delete) and from the next snapshot.
    kill_and_restart(farm, *SNAPSHOT_EVERY_TEN)
    assert doomed.id not in {job["id"] for job in client.jobs(archived=True)}
    force_snapshot(farm)
    kept = snapshot_jobs(farm)
    assert doomed.id not in kept and other.id in kept
    kill_and_restart(farm, *SNAPSHOT_EVERY_TEN)
    assert doomed.id not in {job["id"] for job in client.jobs(archived=True)}
    assert other.results() == [8]
    # The Python API deletes too.
    assert client.delete(other) == other.id
    with pytest.raises(UnknownJob):
        other.status()


def test_refusals_say_why_and_change_nothing(farm: Farm) -> None:
    shutil_copy_jobs(farm)
    farm.start_worker("--no-blender", "--slots", "2")
    client = farm.client()
    first = client.submit("farm_jobs:square", 5)
    spare = client.submit("farm_jobs:square", 6)
    assert first.results() == [25] and spare.results() == [36]
    gate = farm.gate("refusals")
    running = client.submit("farm_jobs:gated", "refusals", "ok", after=[first])
    gate.wait_started()
    journal_file = farm.root / ".buildcat" / "journal.bin"
    size = journal_file.stat().st_size
    before = {job["id"]: job for job in client.jobs(archived=True)}

    for method, path, code, reason in [
        ("POST", f"/jobs/{running.id}/archive", 409,
         f"job {running.id} is running: only a job that has ended is archived"),
        ("POST", f"/jobs/{running.id}/unarchive", 409, "only a job that has ended"),
        ("DELETE", f"/jobs/{running.id}", 409,
         f"job {running.id} is running: only a job that has ended is deleted"),
        ("DELETE", f"/jobs/{first.id}", 409,
         f"job {running.id} (running) runs after job {first.id}"),
        ("POST", "/jobs/nosuchjob/archive", 404, "no job 'nosuchjob'"),
        ("DELETE", "/jobs/nosuchjob", 404, "no job 'nosuchjob'"),
    ]:  # fmt: skip
        status, reply = call(farm, method, path)
        assert (status, reason in reply["error"]) == (code, True), (method, path, reply)

    # The CLI: one clear line, a non-zero exit, and nothing changed for the other jobs named.
    for args, line in [
        (("archive", first.id, running.id),
         f"farm: error: job {running.id} is running: only a job that has ended is archived"),
        (("delete", "--yes", "nosuchjob"), "farm: error: no job 'nosuchjob'"),
        (("delete", "--yes", spare.id, first.id),  # the first of them is not deleted either
         f"farm: error: job {running.id} (running) runs after job {first.id}"),
        (("delete", spare.id), "farm: error: delete asks first and there is no terminal to "
         "ask on: add --yes"),
    ]:  # fmt: skip
        refused = cli_without_terminal(farm, *args)
        assert refused.returncode != 0
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(line), refused.stderr
    assert journal_file.stat().st_size == size  # nothing was journaled
    after = {job["id"]: job for job in client.jobs(archived=True)}
    assert {k: (v["archived"], v["state"]) for k, v in after.items()} == {
        k: (v["archived"], v["state"]) for k, v in before.items()
    }
    gate.open()
    assert running.results() == ["ok"]
    # Once the job that ran after it has ended, the first may go.
    assert farm.cli("delete", "--yes", first.id).returncode == 0
    assert running.status()["after"] == []  # it no longer names a job that is gone


def test_delete_asks_first_on_a_terminal(farm: Farm) -> None:
    shutil_copy_jobs(farm)
    farm.start_worker("--no-blender")
    client = farm.client()
    job = client.submit("farm_jobs:square", 6)
    assert job.results() == [36]

    def on_a_terminal(answer: str) -> tuple[int, str]:
        controller, terminal = os.openpty()
        try:
            environment = {**os.environ, "FARM_HOST": "127.0.0.1", "FARM_PORT": str(farm.port),
                           "BUILDCAT_ROOT": str(farm.root)}  # fmt: skip
            process = subprocess.Popen(
                [sys.executable, "-m", "buildcat", "delete", job.id],
                stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env=environment,
            )  # fmt: skip
            os.write(controller, answer.encode() + b"\n")
            output, _ = process.communicate(timeout=60)
            return process.returncode, output.decode()
        finally:
            os.close(controller)
            os.close(terminal)

    code, output = on_a_terminal("n")
    assert code != 0 and f"Delete 1 job(s) and their logs: {job.id}" in output
    assert "Their outputs stay." in output
    assert job.status()["state"] == "done"  # kept
    code, output = on_a_terminal("y")
    assert code == 0 and f"{job.id} deleted" in output
    with pytest.raises(UnknownJob):
        job.status()


def test_the_event_feed_tells_of_a_deleted_job(farm: Farm) -> None:
    shutil_copy_jobs(farm)
    client = farm.client()
    seen: list[dict[str, Any]] = []
    listening = threading.Event()

    def read() -> None:
        with buildcat.connect("127.0.0.1", farm.port, farm.root) as reader:
            for event in reader.events(count=3):
                if event["event"] == "hello":
                    listening.set()
                else:
                    seen.append(event)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert listening.wait(30)
    job = client.submit("farm_jobs:square", 2)  # no worker: it stays queued until cancelled
    job.cancel()
    client.delete(job)
    thread.join(60)
    assert not thread.is_alive()
    assert [(e["event"], e["job"]["id"]) for e in seen] == [
        ("job.submitted", job.id), ("job.cancelled", job.id), ("job.deleted", job.id),
    ]  # fmt: skip
