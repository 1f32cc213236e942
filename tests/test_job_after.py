"""Jobs after jobs (``--after``): a job's tasks start only once the jobs it names are done;
it fails when one of them fails or is cancelled, unless ``--after-any``.

The scheduler rules first (pure, no I/O), then real ``farm`` processes on loopback whose
upstream tasks are held by gates the test opens, so "it has not started" is certain."""

from __future__ import annotations

import http.client
import json
import shutil
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

import buildcat
from buildcat import protocol
from buildcat.server import journal, snapshot
from buildcat.server.scheduler import (
    FINAL_JOB_STATES,
    Job,
    JobState,
    NotFound,
    Scheduler,
    SchedulerError,
    TaskSpec,
    TaskState,
)
from tests.conftest import Farm, secret_header, wait_for
from tests.test_dashboard import dashboard_link
from tests.test_scheduler import REQUIREMENTS, SchedulerMachine, job_specs, ready_tasks


def specs(count: int = 1) -> list[TaskSpec]:
    return [TaskSpec(payload={"n": n}) for n in range(count)]


def finish(scheduler: Scheduler, worker: str, now: float) -> list[str]:
    """Lease everything the worker can take and complete it; returns the task ids."""
    done = []
    for task in scheduler.lease(worker, 100, now):
        assert scheduler.complete(worker, task.id, "ok", now)
        done.append(task.id)
    return done


@pytest.fixture
def queue() -> Scheduler:
    scheduler = Scheduler()
    scheduler.register("w", 4, {}, 0, worker_id="w")
    return scheduler


# ---- the scheduler ------------------------------------------------------------------------------


def test_a_job_after_another_is_offered_only_once_that_one_is_done(queue: Scheduler) -> None:
    first = queue.submit(specs(2), 0, job_id="a")
    second = queue.submit(specs(2), 1, job_id="b", after=["a"])
    assert second.state is JobState.QUEUED and second.waiting_for == {"a"}
    # Out of every dispatch structure while it waits: no lease scans it.
    assert second not in queue._active and not second.ready
    assert queue.ready_total == 2
    assert {t.job.id for t in queue.lease("w", 4, 2)} == {"a"}
    assert queue.lease("w", 4, 2) == []
    view = second.to_dict()
    assert view["after"] == ["a"] and view["waiting_for"] == ["a"] and not view["after_any"]
    assert queue.waiting_reason(second) == "after job a (running) (until they are done)"
    for task in first.tasks:
        queue.complete("w", task.id, 1, 3)
    assert first.state is JobState.DONE
    assert second.waiting_for == set() and second in queue._active
    assert [t.id for t in queue.lease("w", 4, 4)] == ["b.0", "b.1"]
    assert all(t.ready_at == 3 for t in second.tasks)  # ready when released, not submitted


def test_a_failed_or_cancelled_job_fails_the_jobs_after_it_down_the_chain(
    queue: Scheduler,
) -> None:
    queue.submit(specs(), 0, job_id="a", max_attempts=1)
    b = queue.submit(specs(3), 1, job_id="b", after=["a"])
    c = queue.submit(specs(), 1, job_id="c", after=["b"])
    anyway = queue.submit(specs(), 1, job_id="anyway", after=["b"], after_any=True)
    [task] = queue.lease("w", 4, 2)
    assert queue.fail("w", task.id, "RuntimeError: boom", "tb", 3)
    assert b.state is JobState.FAILED and c.state is JobState.FAILED
    assert b.error == "job a it waits for failed: task a.0 failed after 1 attempt(s): " + (
        "RuntimeError: boom"
    )
    assert c.error.startswith("job b it waits for failed: job a it waits for failed: ")
    assert b.counts == {TaskState.QUEUED: 0, TaskState.CANCELLED: 3}
    assert all(t.attempts == 0 for t in b.tasks)  # none of them ran
    assert [j.id for j in queue.take_finished()] == ["a", "b", "c"]
    # after_any runs once the job ended, whatever its state.
    assert anyway.state is JobState.QUEUED and not anyway.waiting_for
    assert [t.job.id for t in queue.lease("w", 4, 4)] == ["anyway"]

    queue.submit(specs(), 5, job_id="x")
    y = queue.submit(specs(), 5, job_id="y", after=["x"])
    queue.cancel("x", 6)
    assert y.state is JobState.FAILED and y.error == "job x it waits for was cancelled"


def test_after_an_ended_job_runs_at_once_or_fails_at_once(queue: Scheduler) -> None:
    queue.submit(specs(), 0, job_id="a")
    finish(queue, "w", 1)
    queue.submit(specs(), 0, job_id="bad")
    queue.cancel("bad", 1)
    runs = queue.submit(specs(), 2, job_id="runs", after=["a"])
    assert runs in queue._active and queue.ready_total == 1
    fails = queue.submit(specs(), 2, job_id="fails", after=["a", "bad"])
    assert fails.state is JobState.FAILED and fails.error == "job bad it waits for was cancelled"
    assert fails not in queue._active and queue.ready_total == 1
    anyway = queue.submit(specs(), 2, job_id="anyway", after=["bad"], after_any=True)
    assert anyway in queue._active and queue.ready_total == 2


def test_unknown_jobs_itself_and_cycles_are_refused_and_change_nothing(queue: Scheduler) -> None:
    queue.submit(specs(), 0, job_id="a")
    with pytest.raises(NotFound, match="no job 'nope'"):
        queue.submit(specs(), 1, after=["a", "nope"])
    with pytest.raises(SchedulerError, match="job me cannot wait for itself"):
        queue.submit(specs(), 1, job_id="me", after=["me"])
    with pytest.raises(SchedulerError, match="after_any needs after"):
        queue.submit(specs(), 1, after_any=True)
    assert list(queue.jobs) == ["a"] and queue.after_dependents == {}
    # Ids are the server's and a job may name only jobs that exist, so only a queue made
    # by hand (a hand-edited snapshot) can name a job before it exists; the check holds
    # there too: "z" closing z -> a -> z is refused.
    queue.jobs["a"].after = ["z"]
    queue.after_named.add("z")
    with pytest.raises(SchedulerError, match=r"a cycle \(z -> a -> z\)"):
        queue.submit(specs(), 1, job_id="z", after=["a"])
    assert "z" not in queue.jobs
    assert queue.after_cycle("z", ["a"]) == ["z", "a", "z"]


def test_a_snapshot_whose_jobs_wait_for_each_other_in_a_cycle_is_refused(
    queue: Scheduler, tmp_path: Path
) -> None:
    queue.submit(specs(), 0, job_id="a")
    queue.submit(specs(), 0, job_id="b", after=["a"])
    queue.submit(specs(), 0, job_id="c", after=["b"])
    document = snapshot.dump(queue)
    restored = Scheduler()
    snapshot.load(restored, document)
    assert restored.find_cycle() == [] and restored.jobs["c"].waiting_for == {"b"}
    document["jobs"][0]["after"] = ["c"]  # a waits for c, which waits for b, for a
    with pytest.raises(ValueError, match="cycle: a -> c -> b -> a"):
        snapshot.load(Scheduler(), document)
    document["jobs"][0]["after"] = ["gone"]
    with pytest.raises(ValueError, match="waits for job gone, which is missing"):
        snapshot.load(Scheduler(), document)
    # On disk the server refuses to start from it, saying why.
    document["jobs"][0]["after"] = ["c"]
    path = tmp_path / "snapshot.bin"
    body = protocol.pack({"generation": 1, "state": document})
    path.write_bytes(snapshot.HEADER.pack(snapshot.MAGIC, len(body), zlib.crc32(body)) + body)
    with pytest.raises(snapshot.SnapshotDamaged, match="cycle"):
        snapshot.restore(Scheduler(), path)


def test_pause_priority_and_cancel_of_a_waiting_job(queue: Scheduler) -> None:
    queue.submit(specs(), 0, job_id="a")
    later = queue.submit(specs(), 0, job_id="later")
    waiting = queue.submit(specs(2), 0, job_id="b", after=["a"])
    queue.set_priority("b", 10)
    assert waiting.priority == 10 and waiting not in queue._active
    queue.pause("b")
    assert waiting.state is JobState.PAUSED
    [task] = [t for t in queue.lease("w", 1, 1)]
    assert task.job.id == "a"
    queue.complete("w", task.id, 1, 2)
    # Released while paused: ready, but not offered until resumed.
    assert len(waiting.ready) == 2 and queue.ready_total == 1
    assert [t.job for t in queue.lease("w", 4, 3)] == [later]
    queue.resume("b")
    assert waiting.state is JobState.QUEUED
    assert [t.id for t in queue.lease("w", 4, 4)] == ["b.0", "b.1"]  # priority 10 first

    queue.submit(specs(), 5, job_id="c")
    d = queue.submit(specs(), 5, job_id="d", after=["c"])
    queue.cancel("d", 6)
    assert d.state is JobState.CANCELLED and not d.waiting_for
    finish(queue, "w", 7)
    assert d.state is JobState.CANCELLED  # c ending leaves the cancelled job alone


def test_retrying_a_job_after_a_failed_one_waits_for_that_ones_retry(queue: Scheduler) -> None:
    queue.submit(specs(), 0, job_id="a", max_attempts=1)
    b = queue.submit(specs(), 0, job_id="b", after=["a"])
    [task] = queue.lease("w", 1, 1)
    queue.fail("w", task.id, "boom", "", 2)
    assert b.state is JobState.FAILED
    with pytest.raises(SchedulerError, match="retry a first"):
        queue.retry("b", 3)
    assert b.state is JobState.FAILED
    queue.retry("a", 3)
    queue.retry("b", 3)  # waits for a again
    assert b.state is JobState.QUEUED and b.waiting_for == {"a"} and b not in queue._active
    assert [t.job.id for t in queue.lease("w", 4, 4)] == ["a"]
    finish(queue, "w", 5)  # nothing to lease: a's task is held
    queue.complete("w", "a.0", 1, 5)
    assert [t.id for t in queue.lease("w", 4, 6)] == ["b.0"]


def test_a_long_chain_fails_through_without_recursion(queue: Scheduler) -> None:
    queue.submit(specs(), 0, job_id="j0")
    for n in range(1, 3000):
        queue.submit(specs(), n, job_id=f"j{n}", after=[f"j{n - 1}"])
    queue.cancel("j0", 5000)
    assert all(job.state in FINAL_JOB_STATES for job in queue.jobs.values())
    assert queue.jobs["j2999"].error.startswith("job j2998 it waits for failed: job j2997")
    assert len(queue.jobs["j2999"].error) <= 4096
    assert queue.after_dependents == {}


def test_the_journal_and_a_snapshot_keep_who_waits_for_whom(queue: Scheduler) -> None:
    events = [
        ["register", 0.0, "w", "w", 2, {}, {}],
        ["submit", 1.0, "a", [[{"n": 0}, []]], "", "python", 0, [], 3, "", {}, None, "", ""],
        ["submit", 1.0, "b", [[{"n": 0}, []], [{"n": 1}, [0]]], "", "python", 0, [], 3, "",
         {}, None, "", "", ["a"], False],
        ["submit", 1.0, "c", [[{"n": 0}, []]], "", "python", 0, [], 3, "", {}, None, "", "",
         ["a", "b"], True],
        ["lease", 2.0, "w", ["a.0"]],
    ]  # fmt: skip
    replayed = Scheduler()
    journal.replay(replayed, iter(events))
    b, c = replayed.jobs["b"], replayed.jobs["c"]
    assert b.waiting_for == {"a"} and c.waiting_for == {"a", "b"} and c.after_any
    restored = Scheduler()
    snapshot.load(restored, protocol.unpack(protocol.pack(snapshot.dump(replayed)), trusted=True))
    views = {job_id: replayed.jobs[job_id].to_dict() for job_id in "abc"}
    for scheduler in (replayed, restored):
        assert {k: sorted(v) for k, v in scheduler.after_dependents.items()} == {
            "a": ["b", "c"],
            "b": ["c"],
        }
        assert {job_id: scheduler.jobs[job_id].to_dict() for job_id in "abc"} == views
        assert scheduler.ready_total == 0 and [j.id for j in scheduler._active] == ["a"]
        assert scheduler.complete("w", "a.0", 1, 3)
        assert [t.id for t in scheduler.lease("w", 4, 4)] == ["b.0"]
        assert scheduler.complete("w", "b.0", 1, 5)
        assert [t.id for t in scheduler.lease("w", 4, 6)] == ["b.1"]
        assert scheduler.complete("w", "b.1", 1, 7)
        assert [t.id for t in scheduler.lease("w", 4, 8)] == ["c.0"]


# ---- real farms ------------------------------------------------------------------------------

FAILING = '''
import farm_jobs


def gated_failure(name):
    """Waits for its gate like farm_jobs.gated, then fails."""
    farm_jobs.gated(name)
    raise RuntimeError(f"{name} failed on purpose")
'''


@pytest.fixture
def after_farm(jobs_farm: Farm) -> Farm:
    """A farm with a two-slot worker (a job that could run would) and a failing gate."""
    (jobs_farm.root / "after_jobs.py").write_text(FAILING)
    jobs_farm.start_worker("--slots", "2", "--no-blender")
    jobs_farm.wait_workers(1)
    return jobs_farm


def submit_cli(farm: Farm, *args: str) -> str:
    printed = farm.cli("submit", *args, "--json")
    assert printed.returncode == 0, printed.stderr
    return str(json.loads(printed.stdout)["id"])


def certainly_held(client: buildcat.Client, job: buildcat.Job) -> None:
    """The worker has a free slot; a job submitted after ``job`` with nothing to wait for
    runs to the end. Had ``job``'s tasks been ready they would have left first (same
    priority, first come first served), so they are held."""
    probe = client.submit("farm_jobs:square", 3)
    assert probe.results() == [9]
    status = job.status()
    assert status["state"] in ("queued", "paused"), status
    assert all(task["attempts"] == 0 for task in job.tasks())


def test_b_after_a_runs_only_when_a_is_done_and_status_shows_it(after_farm: Farm) -> None:
    farm = after_farm
    client = farm.client()
    gate = farm.gate("a")
    a = client.submit("farm_jobs:gated", "a", "A done")
    gate.wait_started()
    b_id = submit_cli(farm, "python", "farm_jobs:write_file", "out/b.txt", "B", "--after", a.id)
    b = client.job(b_id)
    certainly_held(client, b)
    assert not (farm.root / "out" / "b.txt").exists()

    # What a user looks at: the JSON view, farm status (one job and the list).
    view = b.status()
    assert view["state"] == "queued"
    assert view["after"] == [a.id] and view["waiting_for"] == [a.id]
    assert view["after_any"] is False
    assert view["waiting"] == f"after job {a.id} (running) (until they are done)"
    shown = farm.cli("status", b_id)
    assert shown.returncode == 0, shown.stderr
    assert f"after: {a.id} (once they are done)" in shown.stdout
    assert f"waiting: after job {a.id} (running)" in shown.stdout
    listing = farm.cli("status")
    assert f"{b_id} waiting: after job {a.id} (running)" in listing.stdout
    assert "\nbuildcat_jobs_waiting 1\n" in metrics(farm)
    as_json = json.loads(farm.cli("status", b_id, "--json").stdout)
    assert as_json["after"] == [a.id] and as_json["waiting_for"] == [a.id]
    assert any(job["id"] == b_id and job["after"] == [a.id] for job in client.jobs())

    gate.open()
    assert b.results() == ["out/b.txt"]
    assert (farm.root / "out" / "b.txt").read_text() == "B"
    [a_task], [b_task] = a.tasks(), b.tasks()
    assert b_task["leased_at"] >= a_task["finished_at"]
    assert b.status()["waiting_for"] == [] and b.status()["waiting"] == ""
    assert "\nbuildcat_jobs_waiting 0\n" in metrics(farm)


def metrics(farm: Farm) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    try:
        connection.request("GET", "/metrics", headers=secret_header(farm.root))
        response = connection.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        connection.close()


def test_a_failed_upstream_fails_the_jobs_after_it_and_none_of_their_tasks_runs(
    after_farm: Farm,
) -> None:
    farm = after_farm
    client = farm.client()
    gate = farm.gate("doomed")
    a = client.submit_tasks(
        [{"payload": {"function": "after_jobs:gated_failure", "args": ["doomed"]}}],
        max_attempts=1,
    )
    gate.wait_started()
    b = client.map("farm_jobs:write_file", ["out/never.txt"], after=[a])
    c_id = submit_cli(farm, "python", "farm_jobs:square", "4", "--after", b.id)
    anyway_id = submit_cli(
        farm, "python", "farm_jobs:write_file", "out/anyway.txt", "ran", "--after", a.id,
        "--after-any",
    )  # fmt: skip
    certainly_held(client, b)
    gate.open()
    with pytest.raises(buildcat.JobFailed) as failed:
        b.wait(timeout=60)
    assert f"job {a.id} it waits for failed: task {a.id}.0 failed" in str(failed.value)
    assert "doomed failed on purpose" in str(failed.value)
    assert [task["state"] for task in b.tasks()] == ["cancelled"]
    assert [task["attempts"] for task in b.tasks()] == [0]
    assert not (farm.root / "out" / "never.txt").exists()
    waited = farm.cli("wait", c_id)
    assert waited.returncode == 1
    assert f"job {b.id} it waits for failed: job {a.id} it waits for failed" in waited.stderr
    # --after-any ran anyway, once a had ended.
    assert farm.cli("wait", anyway_id).returncode == 0
    assert (farm.root / "out" / "anyway.txt").read_text() == "ran"

    # Retrying the job after a failed one is refused until that one is retried.
    refused = farm.cli("retry", b.id)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"farm: error: job {b.id} runs after job {a.id}, which is failed: retry {a.id} first "
        "(this job then waits for it again)"
    ]


def test_a_cancelled_upstream_fails_the_job_after_it(after_farm: Farm) -> None:
    farm = after_farm
    client = farm.client()
    gate = farm.gate("cancelled-a")
    a = client.submit("farm_jobs:gated", "cancelled-a")
    gate.wait_started()
    b = client.submit("farm_jobs:write_file", "out/b.txt", "B", after=[a.id])
    certainly_held(client, b)
    assert farm.cli("cancel", a.id).returncode == 0
    status = wait_for(lambda: (s := b.status())["state"] == "failed" and s)
    assert status["error"] == f"job {a.id} it waits for was cancelled"
    assert not (farm.root / "out" / "b.txt").exists()


def test_after_a_job_that_already_failed_the_job_fails_at_once(after_farm: Farm) -> None:
    farm = after_farm
    client = farm.client()
    a = client.submit_tasks(
        [{"payload": {"function": "farm_jobs:boom", "args": ["early"]}}], max_attempts=1
    )
    with pytest.raises(buildcat.JobFailed):
        a.wait(timeout=60)
    b = client.submit("farm_jobs:square", 5, after=[a])
    status = b.status()
    assert status["state"] == "failed"
    assert status["error"].startswith(f"job {a.id} it waits for failed: task {a.id}.0 failed")
    # And after a job that is done, it runs at once.
    c = client.submit("farm_jobs:square", 6, after=[b.id, a.id], after_any=True)
    assert c.results() == [36]


def test_unknown_jobs_are_refused_and_nothing_is_queued(after_farm: Farm) -> None:
    farm = after_farm
    client = farm.client()
    a = client.submit("farm_jobs:square", 2)
    printed = farm.cli("submit", "python", "farm_jobs:square", "3", "--after", f"{a.id},deadbeef")
    assert printed.returncode == 1 and printed.stdout == ""
    assert printed.stderr.strip().splitlines() == [
        "farm: error: after: no job 'deadbeef' (a job can wait only for a job the farm knows)"
    ]
    printed = farm.cli("submit", "python", "farm_jobs:square", "3", "--after", "a,,b")
    assert printed.returncode == 1 and "Traceback" not in printed.stderr
    assert "--after takes job ids separated by commas" in printed.stderr
    with pytest.raises(buildcat.UnknownJob, match="no job 'nope'"):
        client.submit("farm_jobs:square", 3, after=["nope"])
    # Over HTTP: 404 for an unknown job, 400 for what is not a list of job ids.
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    headers = {**secret_header(farm.root), "Content-Type": "application/json"}
    task = {"payload": {"function": "farm_jobs:square", "args": [3]}}
    for after, status, reason in (
        (["nope"], 404, "no job 'nope'"),
        ([7], 400, "'after' must be a list of job ids"),
        ("abc", 400, "'after' must be a list"),
        (["x y"], 400, "'after' must be a list of job ids"),
    ):
        body = json.dumps({"tasks": [task], "after": after})
        connection.request("POST", "/api/v1/jobs", body=body, headers=headers)
        response = connection.getresponse()
        reply = json.loads(response.read())
        assert response.status == status, reply
        assert reason in reply["error"]
    body = json.dumps({"tasks": [task], "after_any": True})
    connection.request("POST", "/api/v1/jobs", body=body, headers=headers)
    response = connection.getresponse()
    assert (
        response.status == 400 and "after_any needs after" in json.loads(response.read())["error"]
    )
    connection.close()
    assert [job["id"] for job in client.jobs()] == [a.id]


SNAPSHOT_EVERY_TEN = ("--snapshot-every", "10")


@pytest.mark.parametrize(
    "farm", [(), SNAPSHOT_EVERY_TEN], indirect=True, ids=["journal", "snapshot"]
)
def test_a_waiting_job_survives_a_server_sigkill(
    farm: Farm, request: pytest.FixtureRequest
) -> None:
    """Restored from the journal alone, or from a snapshot written while B waits."""
    options = request.node.callspec.params["farm"]
    shutil.copy(Path(__file__).parent / "farm_jobs.py", farm.root / "farm_jobs.py")
    farm.start_worker("--slots", "2", "--no-blender")
    farm.wait_workers(1)
    client = farm.client()
    gate = farm.gate("restart-a")
    a = client.submit("farm_jobs:gated", "restart-a", "A")
    gate.wait_started()
    b = client.submit("farm_jobs:write_file", "out/b.txt", "B", after=[a])
    certainly_held(client, b)
    if options:
        # A snapshot holds B waiting ("journal: snapshot N written (...)"): more events
        # (jobs that run) until one is written.
        def snapshot_written() -> bool:
            client.submit("farm_jobs:square", 1).wait(timeout=60)
            return "written (" in farm.log_text("server")

        wait_for(snapshot_written, timeout=120)
    before = b.status()
    assert farm.server is not None
    farm.server.kill()  # SIGKILL: no goodbye
    farm.server.wait()
    farm.server.stdout.close()  # type: ignore[union-attr]
    farm.start_server(*options, port=farm.port)
    after = b.status()
    assert after["state"] == "queued" and after["waiting_for"] == [a.id]
    assert after["after"] == before["after"] == [a.id]
    certainly_held(client, b)
    gate.open()
    assert b.results() == ["out/b.txt"]
    assert a.results() == ["A"]


# ---- random operations, with jobs after jobs ----------------------------------------------------


class AfterMachine(SchedulerMachine):
    """The scheduler's state machine (tests/test_scheduler.py) with jobs submitted after
    others mixed in: a job that waits is never offered, never leased and never counted
    ready; it runs once the jobs it names are done (or ended, with after_any) and fails,
    with none of its tasks run, when one of them fails or is cancelled."""

    def _unfinished(self) -> list[Job]:
        # What the model may lease from: a job that waits offers nothing.
        return [job for job in super()._unfinished() if not job.waiting_for]

    @precondition(lambda self: self.submitted)
    @rule(
        data=st.data(),
        specs=job_specs(),
        requires=st.sampled_from(REQUIREMENTS),
        after_any=st.booleans(),
    )
    def submit_after(
        self,
        data: st.DataObject,
        specs: list[TaskSpec],
        requires: tuple[str, ...],
        after_any: bool,
    ) -> None:
        ids = [job.id for job in self.submitted]
        after = data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=3, unique=True))
        upstream = [self.farm.jobs[job_id] for job_id in after]
        broken = [j for j in upstream if j.state in (JobState.FAILED, JobState.CANCELLED)]
        ready_before = self.farm.ready_total

        job = self.farm.submit(
            specs,
            self.now,
            requires=requires,
            job_id=f"j{len(self.submitted)}",
            after=after,
            after_any=after_any,
        )
        self.submitted.append(job)

        if broken and not after_any:
            assert job.state is JobState.FAILED
            assert job.error.startswith(f"job {broken[0].id} it waits for ")
        else:
            assert job.waiting_for == {j.id for j in upstream if j.state not in FINAL_JOB_STATES}
        waits = job.waiting_for or job.state is JobState.FAILED
        assert self.farm.ready_total == ready_before + (0 if waits else len(ready_tasks(job)))

    @invariant()
    def ready_queues_and_ready_total_agree(self) -> None:
        expected = 0
        for job in self.submitted:
            assert len(set(job.ready)) == len(job.ready), "a task queued twice"
            if job.state in FINAL_JOB_STATES or job.waiting_for:
                assert not job.ready
                continue
            assert sorted(job.ready) == [task.index for task in ready_tasks(job)]
            if not job.paused:
                expected += len(job.ready)
        assert self.farm.ready_total == expected

    @invariant()
    def job_counts_and_states_match_the_tasks(self) -> None:
        held_back = [j for j in self.submitted if j.state is JobState.FAILED and not j.traceback]
        for job in held_back:
            if " it waits for " in job.error:  # failed by a job it waited for
                assert all(t.state is TaskState.CANCELLED and t.attempts == 0 for t in job.tasks)
        others = [job for job in self.submitted if job not in held_back]
        saved, self.submitted = self.submitted, others
        try:
            super().job_counts_and_states_match_the_tasks()
        finally:
            self.submitted = saved

    @invariant()
    def a_job_runs_only_after_the_jobs_it_names(self) -> None:
        for job in self.submitted:
            if not job.after:
                continue
            upstream = [self.farm.jobs[job_id] for job_id in job.after]
            if job.waiting_for:
                assert job.state in (JobState.QUEUED, JobState.PAUSED)
                assert job not in self.farm._active
                assert job.waiting_for == {
                    j.id for j in upstream if j.state not in FINAL_JOB_STATES
                }
                assert all(t.state is TaskState.QUEUED and t.attempts == 0 for t in job.tasks)
            ran = any(
                t.attempts or t.state in (TaskState.LEASED, TaskState.DONE, TaskState.FAILED)
                for t in job.tasks
            )
            if ran or (job.state not in FINAL_JOB_STATES and not job.waiting_for):
                assert all(j.state in FINAL_JOB_STATES for j in upstream)
                if not job.after_any and not job.error.startswith("job "):
                    assert all(j.state is JobState.DONE for j in upstream)
            if job.state is JobState.FAILED and " it waits for " in job.error:
                named = self.farm.jobs[job.error.split()[1]]
                assert named.state in (JobState.FAILED, JobState.CANCELLED)
                assert not job.after_any

    def teardown(self) -> None:
        for job in self.submitted:  # also those still waiting: released later, not paused
            self.farm.resume(job.id)
        super().teardown()


TestAfterMachine = AfterMachine.TestCase
TestAfterMachine.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def first_update(farm: Farm) -> dict[str, object]:
    """The dashboard's first ``update`` event: the overview its page draws."""
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    try:
        connection.request("GET", "/api/v1/events", headers=secret_header(farm.root))
        response = connection.getresponse()
        assert response.status == 200
        while True:
            line = response.fp.readline().decode()
            if line.startswith("data: "):
                return dict(json.loads(line[len("data: ") :]))
    finally:
        connection.close()


def test_the_dashboard_shows_what_a_job_waits_for(jobs_farm: Farm, browser: object) -> None:
    farm = jobs_farm
    client = farm.client()
    a = client.map("farm_jobs:square", [1])  # no worker: it stays queued
    b = client.submit("farm_jobs:square", 2, after=[a])
    either = client.submit("farm_jobs:square", 3, after=[a, b], after_any=True)
    jobs = {job["id"]: job for job in first_update(farm)["jobs"]}  # type: ignore[attr-defined]
    assert jobs[b.id]["after"] == [a.id] and jobs[b.id]["waiting_for"] == [a.id]
    assert jobs[b.id]["waiting"] == f"after job {a.id} (queued) (until they are done)"
    assert jobs[either.id]["after_any"] is True

    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(dashboard_link(farm))
    row = page.locator(f'tr[data-job="{b.id}"]')
    row.wait_for(timeout=30_000)
    assert row.locator('[data-field="after"]').inner_text() == f"after {a.id}"
    assert f"waiting: after job {a.id} (queued)" in row.inner_text()
    other = page.locator(f'tr[data-job="{either.id}"] [data-field="after"]')
    assert other.inner_text() == f"after {a.id}, {b.id} (whatever their outcome)"
    # Once a is done the row says b no longer waits.
    farm.start_worker("--no-blender")
    assert either.results() == [9]
    row.locator('[data-field="state"]').filter(has_text="done").wait_for(timeout=30_000)
    assert "waiting:" not in row.inner_text()
    assert row.locator('[data-field="after"]').inner_text() == f"after {a.id}"


def test_every_submit_command_takes_after() -> None:
    """--after comes with job_options, so a submit command added later has it too."""
    from buildcat.cli.submitting import submit

    assert submit.commands
    for name, command in submit.commands.items():
        options = {option for param in command.params for option in param.opts}
        assert {"--after", "--after-any"} <= options, name


def test_a_render_after_a_render_may_write_the_same_frames(jobs_farm: Farm) -> None:
    """Two unfinished renders may not write one frame file, unless one runs after the
    other: it starts only once that one has ended."""
    client = jobs_farm.client()  # no worker: every job stays unfinished
    task = {"payload": {"scene": "a.blend", "output": "renders/a/frame_####", "frames": [1, 2]}}
    first = client.submit_tasks([task], kind="blender")
    with pytest.raises(buildcat.RequestRejected, match=f"job {first.id} is unfinished and writes"):
        client.submit_tasks([task], kind="blender")
    second = client.submit_tasks([task], kind="blender", after=[first])
    assert second.status()["waiting_for"] == [first.id]
    # It runs after second only, so first (unfinished, same frames) is in its way.
    with pytest.raises(buildcat.RequestRejected, match=f"job {first.id} is unfinished"):
        client.submit_tasks([task], kind="blender", after=[second])
    third = client.submit_tasks([task], kind="blender", after=[first, second])
    assert third.status()["waiting_for"] == sorted([first.id, second.id])
    assert len(client.jobs()) == 3
