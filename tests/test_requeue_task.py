"""Running one task again (``farm requeue JOB.N``): a done, failed or cancelled task goes
back to the queue with the tasks that used its result, its job is unfinished until they
are done again; a running task is stopped on its worker and run afresh. Kept across
restarts and snapshots; refusals change nothing."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from buildcat import protocol
from buildcat.errors import RequestRejected
from buildcat.server import journal, snapshot
from buildcat.server.scheduler import (
    FINAL_JOB_STATES,
    FINAL_TASK_STATES,
    Conflict,
    JobState,
    NotFound,
    Scheduler,
    Task,
    TaskSpec,
    TaskState,
)
from tests.blender_support import BOTH_BLENDERS
from tests.conftest import Farm, wait_for
from tests.test_archive import call, kill_and_restart, shutil_copy_jobs, snapshots_written
from tests.test_scheduler import REQUIREMENTS, WORKERS, SchedulerMachine, job_specs

HERE = Path(__file__).parent

# ---- the scheduler alone ----------------------------------------------------------------------


def tiles_and_stitch(tiles: int = 2) -> list[TaskSpec]:
    return [TaskSpec(payload={"tile": n}) for n in range(tiles)] + [
        TaskSpec(payload={"stitch": True}, depends=list(range(tiles)))
    ]


def consistent(queue: Scheduler) -> None:
    """What every change must leave true: counts match states, ready_total matches the
    ready queues of the jobs offered, a job's state matches its tasks'."""
    offered = 0
    for job in queue.jobs.values():
        counts = {state: sum(t.state is state for t in job.tasks) for state in TaskState}
        assert {s: job.counts.get(s, 0) for s in TaskState} == counts, job.id
        # (A snapshot does not keep the order tasks finished in: only no undone task in it.)
        assert set(job.done_order) <= {t.index for t in job.tasks if t.state is TaskState.DONE}
        for index in job.ready:
            task = job.tasks[index]
            assert task.state is TaskState.QUEUED and task.pending_deps == 0
        for task in job.tasks:
            waits = sum(job.tasks[d].state is not TaskState.DONE for d in task.depends)
            if task.state is TaskState.QUEUED:
                assert task.pending_deps == waits, task.id
        if job.state in FINAL_JOB_STATES:
            assert job.finished_at is not None and not job.ready and job not in queue._active
        else:
            assert job.finished_at is None
            assert (job in queue._active) != bool(job.waiting_for)
            if not job.paused and not job.waiting_for:
                offered += len(job.ready)
    assert queue.ready_total == offered


def run_all(queue: Scheduler, worker: str, now: float) -> None:
    while True:
        leased = queue.lease(worker, 8, now)
        if not leased:
            return
        for task in leased:
            queue.complete(worker, task.id, f"run at {now}", now)


@pytest.fixture
def queue() -> Scheduler:
    scheduler = Scheduler()
    scheduler.register("w", 4, {}, 0, worker_id="w")
    scheduler.register("v", 4, {}, 0, worker_id="v")
    return scheduler


def test_a_done_task_reruns_with_the_tasks_that_used_it(queue: Scheduler) -> None:
    job = queue.submit(tiles_and_stitch(2), 0, job_id="j")
    run_all(queue, "w", 1)
    assert job.state is JobState.DONE and job.finished_at == 1
    queue.archive("j", 2)
    task = queue.requeue_task("j.0", 3, "ana")
    assert task.state is TaskState.QUEUED and task.result is None
    # The tile and the stitch that used it run again; the other tile stays done.
    assert [t.state for t in job.tasks] == [TaskState.QUEUED, TaskState.DONE, TaskState.QUEUED]
    assert job.state is JobState.RUNNING and job.finished_at is None and not job.archived
    assert list(job.ready) == [0] and job.tasks[2].pending_deps == 1
    assert job.history[-1] == {"at": 3, "action": "requeue-task", "by": "ana", "task": "j.0"}
    assert job.to_dict()["tasks"]["done"] == 1
    consistent(queue)
    run_all(queue, "w", 4)
    assert job.state is JobState.DONE and job.finished_at == 4
    assert [t.result for t in job.tasks] == ["run at 4", "run at 1", "run at 4"]
    consistent(queue)


def test_a_done_task_of_a_running_job_puts_its_dependents_back_to_waiting(
    queue: Scheduler,
) -> None:
    job = queue.submit(tiles_and_stitch(2), 0, job_id="j")
    for task in queue.lease("w", 2, 1):
        queue.complete("w", task.id, "tile", 1)
    assert list(job.ready) == [2] and queue.ready_total == 1  # the stitch is ready
    queue.requeue_task("j.1", 2)
    assert list(job.ready) == [1] and queue.ready_total == 1  # it waits for the tile again
    assert job.tasks[2].pending_deps == 1
    consistent(queue)
    [tile] = queue.lease("w", 4, 3)
    assert tile.id == "j.1"
    queue.complete("w", tile.id, "again", 3)
    assert [t.id for t in queue.lease("w", 4, 4)] == ["j.2"]
    consistent(queue)


def test_a_tile_reruns_with_the_other_parts_its_stitch_used_up(queue: Scheduler) -> None:
    """A Blender stitch deletes its parts once the frame is whole: its frame's tiles all
    run again with it; the other frame and the preview video's inputs stay done."""
    tile = {"step": "render", "frames": [1], "output": "parts/f_tile00_"}
    specs = [
        TaskSpec(payload=tile), TaskSpec(payload=tile),
        TaskSpec(payload={"step": "stitch", "frame": 1}, depends=[0, 1]),
        TaskSpec(payload=tile), TaskSpec(payload=tile),
        TaskSpec(payload={"step": "stitch", "frame": 2}, depends=[3, 4]),
        TaskSpec(payload={"kind": "python", "step": ["not", "a", "step"]}, depends=[2, 5]),
    ]  # fmt: skip
    job = queue.submit(specs, 0, job_id="r", kind="blender")
    run_all(queue, "w", 1)
    assert job.state is JobState.DONE
    chain = [t.index for t in queue.rerun_chain(job.tasks[0])]
    assert chain == [0, 1, 2, 6]  # frame 1's tiles, its stitch, the video
    assert [t.index for t in queue.rerun_chain(job.tasks[5])] == [3, 4, 5, 6]
    python = queue.submit(specs, 1, job_id="p", kind="python")  # no step is consuming here
    run_all(queue, "w", 2)
    assert [t.index for t in queue.rerun_chain(python.tasks[0])] == [0, 2, 6]
    queue.requeue_task("r.1", 3)
    assert [t.state for t in job.tasks].count(TaskState.QUEUED) == 4
    assert sorted(job.ready) == [0, 1]
    consistent(queue)
    run_all(queue, "w", 4)
    assert job.state is JobState.DONE


def test_a_running_task_is_given_back_and_its_old_run_does_not_count(queue: Scheduler) -> None:
    job = queue.submit(tiles_and_stitch(1), 0, job_id="j")
    [tile] = queue.lease("w", 1, 1)
    queue.requeue_task("j.0", 2)
    assert tile.state is TaskState.QUEUED and tile.worker is None
    assert tile not in queue.workers["w"].leased and queue.ready_total == 1
    consistent(queue)
    # w is not handed the task again before it has heard to stop its run ...
    assert queue.lease("w", 4, 3) == []
    # ... and what that run reports is not the result asked for.
    assert not queue.complete("w", "j.0", "old run", 3)
    assert not queue.fail("w", "j.0", "old run failed", "", 3)
    assert tile.state is TaskState.QUEUED and tile.result is None
    assert queue.take_cancellations("w") == ["j.0"]
    [again] = queue.lease("w", 4, 4)
    assert again is tile and tile.attempts == 2
    assert queue.complete("w", "j.0", "new run", 5)
    assert tile.result == "new run" and queue._requeued == {"j.1"}
    consistent(queue)
    run_all(queue, "v", 6)
    assert job.state is JobState.DONE


def test_another_worker_may_take_a_task_given_back(queue: Scheduler) -> None:
    queue.submit(tiles_and_stitch(1), 0, job_id="j")
    [tile] = queue.lease("w", 1, 1)
    queue.requeue_task("j.0", 2)
    assert queue.lease("v", 1, 3) == [tile]
    assert not queue.complete("w", "j.0", "old run", 4)  # w's run was given back
    assert tile.state is TaskState.LEASED and tile.worker == "v"
    assert queue.complete("v", "j.0", "v's run", 5)
    assert tile.result == "v's run"


def test_a_task_of_a_failed_job_reruns_and_the_job_runs_to_its_end(queue: Scheduler) -> None:
    job = queue.submit(tiles_and_stitch(3), 0, job_id="j", max_attempts=1)
    first, second, _ = queue.lease("w", 3, 1)
    queue.complete("w", first.id, "tile", 2)
    queue.fail("w", second.id, "boom", "tb", 2)
    assert job.state is JobState.FAILED and job.blocked == set()
    assert [t.state for t in job.tasks] == [
        TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED, TaskState.CANCELLED,
    ]  # fmt: skip
    queue.requeue_task("j.1", 3)
    # The job had failed: every task that did not end done runs again, with fresh attempts.
    assert [t.state for t in job.tasks] == [TaskState.DONE] + [TaskState.QUEUED] * 3
    assert job.state is JobState.RUNNING and job.error == "" and job.traceback == ""
    assert job.tasks[1].failures == 0 and sorted(job.ready) == [1, 2]
    consistent(queue)
    run_all(queue, "v", 4)
    assert job.state is JobState.DONE
    consistent(queue)


def test_refusals_change_nothing(queue: Scheduler) -> None:
    upstream = queue.submit(tiles_and_stitch(1), 0, job_id="up", max_attempts=1)
    after = queue.submit(tiles_and_stitch(1), 0, job_id="after", after=["up"])
    with pytest.raises(Conflict, match=r"task up\.0 is queued already"):
        queue.requeue_task("up.0", 1)
    with pytest.raises(NotFound, match=r"no task 'up\.9'"):
        queue.requeue_task("up.9", 1)
    with pytest.raises(NotFound, match="no job 'nope'"):
        queue.requeue_task("nope.0", 1)
    [tile] = queue.lease("w", 1, 1)
    queue.fail("w", tile.id, "boom", "", 2)
    assert upstream.state is JobState.FAILED and after.state is JobState.FAILED
    before = [t.state for t in after.tasks], after.history[:]
    with pytest.raises(Conflict, match="job after runs after job up, which is failed"):
        queue.requeue_task("after.0", 3)
    assert ([t.state for t in after.tasks], after.history) == before
    consistent(queue)


def test_a_revived_job_waits_again_for_a_job_it_runs_after_that_runs_again(
    queue: Scheduler,
) -> None:
    up = queue.submit(tiles_and_stitch(1), 0, job_id="up")
    down = queue.submit(tiles_and_stitch(1), 0, job_id="down", after=["up"])
    run_all(queue, "w", 1)
    assert up.state is JobState.DONE and down.state is JobState.DONE
    queue.requeue_task("up.0", 2)
    queue.requeue_task("down.1", 2)
    assert down.state is JobState.RUNNING and down.waiting_for == {"up"}
    consistent(queue)
    leased = queue.lease("w", 8, 3)
    assert {t.job.id for t in leased} == {"up"}  # down waits for up to be done again
    for task in leased:
        queue.complete("w", task.id, "again", 3)
    run_all(queue, "w", 4)
    assert up.state is JobState.DONE and down.state is JobState.DONE
    consistent(queue)


def test_a_paused_job_keeps_the_rerun_task_until_resumed(queue: Scheduler) -> None:
    job = queue.submit(tiles_and_stitch(2), 0, job_id="j")
    [tile, _] = queue.lease("w", 2, 1)
    queue.complete("w", tile.id, "tile", 1)
    queue.pause("j")
    queue.requeue_task(tile.id, 2)
    assert queue.ready_total == 0 and list(job.ready) == [0]
    consistent(queue)
    queue.resume("j")
    assert queue.ready_total == 1
    consistent(queue)


def test_requeue_replays_from_the_journal_and_a_snapshot_exactly() -> None:
    def submit(job_id: str, tasks: int) -> list[Any]:
        specs = [[{"tile": n}, []] for n in range(tasks)] + [[{"stitch": 1}, list(range(tasks))]]
        return ["submit", 1.0, job_id, specs, "", "python", 0, [], 3, "", {}, None, "", ""]

    events: list[list[Any]] = [
        ["register", 0.0, "w", "w", 4, {}, {}],
        submit("a", 2),
        ["lease", 2.0, "w", ["a.0", "a.1"]],
        ["complete", 3.0, "w", "a.0", "tile", ""],
        ["complete", 3.0, "w", "a.1", "tile", ""],
        ["lease", 4.0, "w", ["a.2"]],
        ["complete", 5.0, "w", "a.2", "stitch", ""],
        ["requeue-task", 6.0, "a.1", "ana"],
        ["lease", 7.0, "w", ["a.1"]],
        ["requeue-task", 8.0, "a.1", "bo"],  # running: given back
        ["complete", 9.0, "w", "a.1", "the old run", ""],  # discarded
    ]
    replayed = Scheduler()
    assert journal.replay(replayed, iter(events)) == len(events)
    job = replayed.jobs["a"]
    assert job.state is JobState.RUNNING
    assert [t.state for t in job.tasks] == [TaskState.DONE, TaskState.QUEUED, TaskState.QUEUED]
    assert job.tasks[1].result is None and replayed._requeued == {"a.1", "a.2"}
    assert [h["by"] for h in job.history] == ["ana", "bo"]
    consistent(replayed)
    restored = Scheduler()
    snapshot.load(restored, protocol.unpack(protocol.pack(snapshot.dump(replayed)), trusted=True))
    assert restored.jobs["a"].to_dict() == job.to_dict()
    assert restored._requeued == {"a.1", "a.2"} and restored.ready_total == 1
    consistent(restored)
    for scheduler in (replayed, restored):
        assert scheduler.take_cancellations("w") == ["a.1"]
        run_all(scheduler, "w", 10)
        assert scheduler.jobs["a"].state is JobState.DONE
        assert [t.result for t in scheduler.jobs["a"].tasks] == ["tile", "run at 10", "run at 10"]


# ---- a real farm ---------------------------------------------------------------------------

STAMP = '''
import buildcat


def stamp(name):
    """Notes each run in runs/NAME.txt and prints it; returns how many times it ran."""
    path = buildcat.path(f"runs/{name}.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write("run\\n")
    runs = path.read_text().count("run")
    print(f"stamping {name}: run {runs}", flush=True)
    return runs
'''


def stamp_job(farm: Farm, names: list[str], stitch: bool = True) -> Any:
    (farm.root / "rerun_jobs.py").write_text(STAMP)
    tasks: list[dict[str, Any]] = [
        {"payload": {"function": "rerun_jobs:stamp", "args": [name]}} for name in names
    ]
    if stitch:  # waits for the first two
        tasks.append({"payload": {"function": "rerun_jobs:stamp", "args": ["stitch"]},
                      "depends": [0, 1]})  # fmt: skip
    return farm.client().submit_tasks(tasks)


def test_a_done_task_reruns_on_a_real_worker_and_the_job_ends_done_again(farm: Farm) -> None:
    farm.start_worker("--no-blender")
    client = farm.client()
    job = stamp_job(farm, ["a", "b", "c"])
    assert job.results() == [1, 1, 1, 1]
    ended = job.status()["finished_at"]
    requeued = farm.cli("requeue", f"{job.id}.1")
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.startswith(
        f"{job.id}.1 queued again with 1 task(s) that use it ({job.id}.3); job {job.id} "
    )
    final = job.wait(timeout=60)
    assert final["state"] == "done" and final["finished_at"] > ended
    # b and the stitch that used it ran again; a and c did not.
    assert job.results() == [1, 2, 1, 2]
    assert (farm.root / "runs" / "a.txt").read_text() == "run\n"
    assert (farm.root / "runs" / "b.txt").read_text() == "run\nrun\n"
    task = client.task(f"{job.id}.1")
    assert task["attempts"] == 2 and task["state"] == "done"
    log = client.log(f"{job.id}.1")
    assert "stamping b: run 1" in log and "stamping b: run 2" in log
    assert final["history"][-1]["action"] == "requeue-task"
    assert final["history"][-1]["task"] == f"{job.id}.1"
    # The Python API does the same.
    view = client.requeue_task(f"{job.id}.2")
    assert view["id"] == f"{job.id}.2" and view["requeued"] == [f"{job.id}.2"]
    assert job.wait(timeout=60)["state"] == "done"
    assert job.results() == [1, 2, 2, 2]


@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_a_tile_of_a_real_render_reruns_with_its_frame(
    farm: Farm, scene_file: Path, blender: str
) -> None:
    """Real Blender: tile 0 of frame 1 again: both tiles render again and the stitch
    writes the frame again; the job ends done, with no parts left behind."""
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "spin.blend")
    farm.start_worker("--blender", blender)
    client = farm.client()
    job = client.render(
        "shots/spin.blend", "1", tiles=(2, 1), output="tiled/f_####", resolution=(32, 16),
        samples=2,
    )  # fmt: skip
    assert job.wait(timeout=300)["state"] == "done"
    frame = farm.root / "tiled" / "f_0001.png"
    first = frame.read_bytes()
    frame.unlink()  # so the frame seen next is the rerun's
    requeued = farm.cli("requeue", f"{job.id}.0")
    assert requeued.returncode == 0, requeued.stderr
    assert f"with 2 task(s) that use it ({job.id}.1, {job.id}.2)" in requeued.stdout
    final = job.wait(timeout=300)
    assert final["state"] == "done" and final["tasks"]["done"] == 3
    assert frame.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(first) > 0
    assert [t["attempts"] for t in job.tasks()] == [2, 2, 2]
    assert not list((farm.root / "tiled" / ".buildcat-parts").glob("*"))
    assert "Fra:1" in client.log(f"{job.id}.1").rpartition("attempt 2")[2]


def test_a_running_task_is_stopped_on_its_worker_and_run_afresh(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender")
    client = jobs_farm.client()
    gate = jobs_farm.gate("rerun-running")
    job = client.submit("farm_jobs:gated", "rerun-running", "finished")
    gate.wait_started()
    started = jobs_farm.root / "gates" / "rerun-running.started"
    first_pid = started.read_text()
    started.unlink()
    view = client.requeue_task(f"{job.id}.0")
    assert view["state"] in ("queued", "leased")
    wait_for(gate.cancelled, timeout=60)  # the worker stopped the first run
    gate.wait_started()  # and ran it afresh
    gate.open()
    assert job.results() == ["finished"]
    task = client.task(f"{job.id}.0")
    assert task["attempts"] == 2 and task["failures"] == 0
    assert first_pid  # the first run was a real process that the worker interrupted


@pytest.mark.parametrize("farm", [("--snapshot-every", "10")], indirect=True)
def test_a_requeued_task_survives_a_restart_and_a_snapshot(farm: Farm) -> None:
    options = ("--snapshot-every", "10")
    shutil_copy_jobs(farm)
    worker = farm.start_worker("--no-blender")
    client = farm.client()
    job = stamp_job(farm, ["x", "y"], stitch=False)
    assert job.results() == [1, 1]
    worker.terminate()
    worker.wait(timeout=60)
    client.requeue_task(f"{job.id}.0")
    kill_and_restart(farm, *options)  # the journal replays it
    assert job.status()["state"] == "running"
    assert client.task(f"{job.id}.0")["state"] == "queued"
    # More events (jobs submitted and cancelled: no worker runs now) until a snapshot.
    before = snapshots_written(farm)

    def written() -> bool:
        client.submit("farm_jobs:square", 1).cancel()
        return snapshots_written(farm) > before

    wait_for(written, timeout=120)
    kill_and_restart(farm, *options)
    assert job.status()["state"] == "running"
    assert client.task(f"{job.id}.0")["state"] == "queued"
    farm.start_worker("--no-blender", name="after-restart")
    assert job.wait(timeout=60)["state"] == "done"
    assert job.results() == [2, 1]


def test_requeue_refusals_say_why_and_change_nothing(farm: Farm) -> None:
    shutil_copy_jobs(farm)
    client = farm.client()
    queued = client.submit("farm_jobs:square", 2)  # no worker: it stays queued
    # A render that was cancelled, and another now writing the same frames: rerunning a
    # frame of the first would write over the second's.
    render = {"scene": "shot.blend", "frames": [1], "output": "renders/f_####"}
    first = client.submit_tasks([{"payload": render}], kind="blender")
    first.cancel()
    second = client.submit_tasks([{"payload": render}], kind="blender")
    journal_file = farm.root / ".buildcat" / "journal.bin"
    size = journal_file.stat().st_size
    for path, code, reason in [
        (f"/tasks/{queued.id}.0/requeue", 409, f"task {queued.id}.0 is queued already"),
        (f"/tasks/{queued.id}.7/requeue", 404, f"no task '{queued.id}.7'"),
        ("/tasks/nosuchjob.0/requeue", 404, "no job 'nosuchjob'"),
        (f"/tasks/{first.id}.0/requeue", 409,
         f"job {second.id} is unfinished and writes renders/f_0001 too"),
    ]:  # fmt: skip
        status, reply = call(farm, "POST", path)
        assert (status, reason in reply["error"]) == (code, True), (path, reply)
    refused = farm.cli("requeue", f"{queued.id}.0")
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"farm: error: task {queued.id}.0 is queued already: it " \
        "runs when a worker is free"  # fmt: skip
    not_a_task = farm.cli("requeue", queued.id)
    assert not_a_task.returncode != 0 and "is not a task id: give JOB.N" in not_a_task.stderr
    assert journal_file.stat().st_size == size
    assert first.status()["state"] == "cancelled" and queued.status()["state"] == "queued"
    with pytest.raises(RequestRejected, match="queued already"):
        client.requeue_task(f"{queued.id}.0")
    # Once the other render has ended, the frame may run again.
    second.cancel()
    assert client.requeue_task(f"{first.id}.0")["state"] == "queued"
    assert first.status()["state"] == "queued"
    assert json.loads(farm.cli("status", first.id, "--json").stdout)["state"] == "queued"


# ---- random operations, with requeues, archives and deletes ---------------------------------


class TidyMachine(SchedulerMachine):
    """The scheduler's state machine (tests/test_scheduler.py) with tasks run again, jobs
    archived and jobs deleted mixed in: every invariant there still holds (counts, ready
    queues, one holder per lease, leases only after dependencies), and every job left
    ends, done where it can."""

    def __init__(self) -> None:
        super().__init__()
        self.made = 0

    @rule(
        specs=job_specs(),
        priority=st.integers(0, 2),
        requires=st.sampled_from(REQUIREMENTS),
        max_attempts=st.integers(1, 3),
    )
    def submit(
        self, specs: list[TaskSpec], priority: int, requires: tuple[str, ...], max_attempts: int
    ) -> None:
        # As in SchedulerMachine, with ids never used again (the server's are random and
        # new): a worker may still be told to stop a task of a deleted job.
        ready_before = self.farm.ready_total
        job = self.farm.submit(
            specs, self.now, priority=priority, requires=requires, max_attempts=max_attempts,
            job_id=f"j{self.made}",
        )  # fmt: skip
        self.made += 1
        self.submitted.append(job)
        assert self.farm.ready_total == ready_before + len(job.ready)

    def _requeueable(self) -> list[Task]:
        return [t for job in self.submitted for t in job.tasks if t.state is not TaskState.QUEUED]

    @precondition(lambda self: self._requeueable())
    @rule(data=st.data())
    def requeue_task(self, data: st.DataObject) -> None:
        task = self.farm.task(data.draw(st.sampled_from([t.id for t in self._requeueable()])))
        job = task.job
        ended = job.state
        chain = self.farm.rerun_chain(task)
        holders = {t.id: t.worker or "" for t in chain if t.state is TaskState.LEASED}
        for worker in self.farm.workers.values():  # told to stop it (a cancel), not heard yet
            holders.update({t.id: worker.id for t in chain if t.id in worker.to_cancel})
        done_before = {t.index for t in job.tasks if t.state is TaskState.DONE}

        self.farm.requeue_task(task.id, self.now, "model")

        assert chain[0] is task or task in chain
        assert all(t.state is TaskState.QUEUED and t.worker is None for t in chain)
        assert job.state not in FINAL_JOB_STATES and job.finished_at is None
        rerun = {t.index for t in chain}
        assert {t.index for t in job.tasks if t.state is TaskState.DONE} == done_before - rerun
        for member in chain:  # what used a rerun task's result runs again too
            for index in member.dependents:
                assert index in rerun or job.tasks[index].state is TaskState.QUEUED
        if ended in (JobState.FAILED, JobState.CANCELLED):  # as a retry: blocklist cleared
            self.job_failures.pop(job.id, None)
            assert not job.blocked
        told: dict[str, set[str]] = {}
        for task_id, worker_id in holders.items():
            told.setdefault(worker_id, set()).add(task_id)
        for worker_id, task_ids in told.items():
            if not self.farm.workers[worker_id].online:
                continue  # gone: it comes back under a new id, told nothing
            # The worker hears at once here; a late report of its run is never counted.
            assert task_ids <= set(self.farm.take_cancellations(worker_id))
            self.lost = [(t, w) for t, w in self.lost if w != worker_id or t not in task_ids]
            for task_id in task_ids:
                assert not self.farm.complete(worker_id, task_id, "given back", self.now)

    @precondition(lambda self: self.lost)
    @rule(data=st.data(), taker=st.none() | st.sampled_from(sorted(WORKERS)))
    def late_report(self, data: st.DataObject, taker: str | None) -> None:
        """As in SchedulerMachine, except that for a task run again (requeue_task) only a
        run leased since counts: a worker whose lease of it ran out reports in vain."""
        task_id, late_worker = data.draw(st.sampled_from(self.lost))
        task = self.farm.task(task_id)
        if task_id not in self.farm._requeued:
            SchedulerMachine.late_report(self, _Replay(task_id, late_worker), taker)
            return
        self.lost.remove((task_id, late_worker))
        if taker is not None:
            self.lease(taker, 8)
        state, result = task.state, task.result
        holds = task.state is TaskState.LEASED and task.worker == late_worker
        assert self.farm.complete(late_worker, task.id, "late", self.now) is holds
        if not holds:
            assert (task.state, task.result) == (state, result)

    @precondition(lambda self: self.submitted)
    @rule(data=st.data(), archived=st.booleans())
    def archive(self, data: st.DataObject, archived: bool) -> None:
        job = self.farm.job(data.draw(st.sampled_from([job.id for job in self.submitted])))
        if job.state not in FINAL_JOB_STATES:
            with pytest.raises(Conflict):
                self.farm.archive(job.id, self.now, archived=archived)
            assert not job.archived
            return
        self.farm.archive(job.id, self.now, archived=archived)
        assert job.archived is archived

    @precondition(lambda self: self.submitted)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        job = self.farm.job(data.draw(st.sampled_from([job.id for job in self.submitted])))
        ready_before = self.farm.ready_total
        if job.state not in FINAL_JOB_STATES:
            with pytest.raises(Conflict):
                self.farm.delete(job.id, self.now)
            assert job.id in self.farm.jobs and self.farm.ready_total == ready_before
            return
        self.farm.delete(job.id, self.now)
        assert job.id not in self.farm.jobs and self.farm.ready_total == ready_before
        self.submitted.remove(job)
        gone = {task.id for task in job.tasks}
        self.lost = [(t, w) for t, w in self.lost if t not in gone]
        assert not any(task in self.farm._leased for task in job.tasks)

    @invariant()
    def each_leased_task_has_exactly_one_holder(self) -> None:
        # As in SchedulerMachine; a worker may still be told to stop a task of a job deleted
        # since (it is stopped all the same), and no task is handed to a worker that has yet
        # to hear to stop it.
        holders: Counter[Task] = Counter()
        for worker in self.farm.workers.values():
            if not worker.online:
                assert not worker.leased, "an offline worker holds no leases"
            for task in worker.leased:
                holders[task] += 1
                assert task.state is TaskState.LEASED and task.worker == worker.id
                assert task.id not in worker.to_cancel
            for task_id in worker.to_cancel:
                job_id = task_id.rpartition(".")[0]
                if job_id in self.farm.jobs:
                    told = self.farm.task(task_id)
                    assert told.state in FINAL_TASK_STATES or told.worker != worker.id
        leased = {t for job in self.submitted for t in job.tasks if t.state is TaskState.LEASED}
        assert set(holders) == leased
        assert all(count == 1 for count in holders.values())
        assert self.farm._leased == leased

    @invariant()
    def every_index_holds_only_jobs_that_exist(self) -> None:
        jobs = self.farm.jobs
        assert set(jobs) == {job.id for job in self.submitted}
        assert all(job.id in jobs for job in self.farm._active)
        assert all(job_id in jobs for job_id in self.farm.submit_keys.values())
        assert all(task_id.rpartition(".")[0] in jobs for task_id in self.farm._requeued)


class _Replay:
    """Stands in for hypothesis' data in a call of the base rule: draws what was drawn."""

    def __init__(self, *drawn: Any) -> None:
        self.drawn = drawn

    def draw(self, strategy: Any) -> Any:
        return self.drawn


TestTidyMachine = TidyMachine.TestCase
TestTidyMachine.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
