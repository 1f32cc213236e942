"""The task queue's rules: order, dependencies, requirements, leases, retries and reports.

Unit tests pin each rule down with a small farm; a hypothesis state machine then mixes every
operation at random and checks the queue's bookkeeping after each step.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from buildcat.server.scheduler import (
    DEPARTED_WORKERS_KEPT,
    FINAL_JOB_STATES,
    FINAL_TASK_STATES,
    Job,
    JobState,
    NotFound,
    Scheduler,
    SchedulerError,
    Task,
    TaskSpec,
    TaskState,
    WorkerState,
    requirement_met,
)

TIMEOUT = 10.0


def tiles(count: int) -> list[TaskSpec]:
    return [TaskSpec({"tile": index}) for index in range(count)]


def tiles_and_stitch(count: int) -> list[TaskSpec]:
    return [*tiles(count), TaskSpec({"stitch": True}, depends=list(range(count)))]


@pytest.fixture
def farm() -> Scheduler:
    return Scheduler(lease_timeout=TIMEOUT, default_max_attempts=3)


def ids(tasks: list[Task]) -> list[str]:
    return [task.id for task in tasks]


# ---- order --------------------------------------------------------------------------------


def test_higher_priority_job_is_leased_first(farm: Scheduler) -> None:
    farm.register("w", 1, {}, 0, worker_id="w")
    low = farm.submit(tiles(2), 0, priority=0, job_id="low")
    high = farm.submit(tiles(2), 1, priority=5, job_id="high")

    leased = farm.lease("w", 3, 2)

    assert ids(leased) == ["high.0", "high.1", "low.0"]
    assert high.state is JobState.RUNNING
    assert low.state is JobState.RUNNING


def test_equal_priority_is_first_come_first_served(farm: Scheduler) -> None:
    farm.register("w", 1, {}, 0, worker_id="w")
    farm.submit(tiles(3), 0, job_id="first")
    farm.submit(tiles(1), 1, job_id="second")

    order = [task.id for _ in range(4) for task in farm.lease("w", 1, 2)]

    assert order == ["first.0", "first.1", "first.2", "second.0"]


def test_a_retried_task_goes_back_to_the_front_of_its_job(farm: Scheduler) -> None:
    farm.register("w", 1, {}, 0, worker_id="w")
    farm.submit(tiles(3), 0, job_id="j")
    [first] = farm.lease("w", 1, 1)

    assert farm.fail("w", first.id, "out of memory", "", 2)

    assert ids(farm.lease("w", 2, 3)) == ["j.0", "j.1"]


# ---- dependencies -------------------------------------------------------------------------


def test_a_task_is_not_leased_before_its_dependency_is_done(farm: Scheduler) -> None:
    farm.register("w", 1, {}, 0, worker_id="w")
    job = farm.submit([TaskSpec({"step": "bake"}), TaskSpec({"step": "render"}, [0])], 0)

    [bake] = farm.lease("w", 5, 1)
    assert bake.index == 0
    assert farm.lease("w", 5, 2) == []
    assert farm.ready_total == 0

    farm.complete("w", bake.id, "baked", 3)
    assert farm.ready_total == 1
    [render] = farm.lease("w", 5, 4)
    assert render is job.tasks[1]


def test_stitch_waits_for_every_tile(farm: Scheduler) -> None:
    farm.register("a", 4, {}, 0, worker_id="a")
    job = farm.submit(tiles_and_stitch(4), 0)
    stitch = job.tasks[-1]

    leased = farm.lease("a", 10, 1)
    assert stitch not in leased
    assert len(leased) == 4
    for done, tile in enumerate(leased, start=1):
        farm.complete("a", tile.id, f"tile {done}", 2)
        if done < len(leased):
            assert farm.lease("a", 10, 2) == []
    assert farm.lease("a", 10, 3) == [stitch]


@pytest.mark.parametrize(
    "specs",
    [
        [TaskSpec({}, depends=[1]), TaskSpec({})],
        [TaskSpec({}), TaskSpec({}, depends=[1])],
        [TaskSpec({}), TaskSpec({}, depends=[-1])],
        [TaskSpec({}), TaskSpec({}, depends=["0"])],  # type: ignore[list-item]
        [TaskSpec({}), TaskSpec({}, depends=[5])],
    ],
    ids=["forward", "self", "negative", "not-an-int", "missing"],
)
def test_bad_dependency_is_refused(farm: Scheduler, specs: list[TaskSpec]) -> None:
    with pytest.raises(SchedulerError, match="may depend only on tasks listed before it"):
        farm.submit(specs, 0)

    assert farm.jobs == {}
    assert farm.ready_total == 0


def test_empty_job_and_zero_attempts_are_refused(farm: Scheduler) -> None:
    with pytest.raises(SchedulerError, match="at least one task"):
        farm.submit([], 0)
    with pytest.raises(SchedulerError, match="max_attempts"):
        farm.submit(tiles(1), 0, max_attempts=0)
    with pytest.raises(SchedulerError, match="slot"):
        farm.register("w", 0, {}, 0)


# ---- requirements -------------------------------------------------------------------------


def test_gpu_job_never_goes_to_a_worker_without_a_gpu(farm: Scheduler) -> None:
    farm.register("cpu", 4, {"blender": "4.5"}, 0, worker_id="cpu")
    farm.register("gpu", 4, {"gpu": "", "blender": "4.5"}, 0, worker_id="gpu")
    gpu_job = farm.submit(tiles(2), 0, requires=["gpu"], priority=9, job_id="gpu-job")
    plain = farm.submit(tiles(1), 0, job_id="plain")

    assert farm.lease("cpu", 10, 1) == plain.tasks
    assert farm.lease("cpu", 10, 1) == []
    assert farm.lease("gpu", 10, 2) == gpu_job.tasks


@pytest.mark.parametrize(
    ("version", "met"),
    [
        ("4.2", False),
        ("4.4.9", False),
        ("4.5", True),
        ("4.5.0", True),
        ("4.5.1", True),
        ("4.10", True),
        ("5.0", True),
        ("4.5.1 LTS", True),
        ("", False),
    ],
)
def test_version_requirement(version: str, met: bool) -> None:
    assert requirement_met("blender>=4.5", {"blender": version}) is met


def test_version_requirement_ignores_trailing_zeros_and_suffixes() -> None:
    assert requirement_met("blender>=4.5.0", {"blender": "4.5"})
    assert requirement_met("blender >= 4.5", {"blender": "4.5"})
    assert not requirement_met("python>=3.13.1", {"python": "3.13.0rc1"})
    assert requirement_met("python>=3.13", {"python": "3.13.0rc1"})


def test_requirement_without_the_capability_is_not_met() -> None:
    assert requirement_met("gpu", {"gpu": ""})
    assert not requirement_met("gpu", {"blender": "4.5"})
    assert not requirement_met("blender>=4.5", {"gpu": ""})


def test_version_requirement_decides_which_worker_renders(farm: Scheduler) -> None:
    farm.register("old", 1, {"blender": "4.2"}, 0, worker_id="old")
    farm.register("new", 1, {"blender": "4.5.1"}, 0, worker_id="new")
    job = farm.submit(tiles(1), 0, requires=["blender>=4.5"])

    assert farm.lease("old", 1, 1) == []
    assert farm.lease("new", 1, 1) == job.tasks


# ---- leases -------------------------------------------------------------------------------


def test_expired_lease_goes_to_another_worker(farm: Scheduler) -> None:
    farm.register("a", 1, {}, 0, worker_id="a")
    farm.register("b", 1, {}, 0, worker_id="b")
    farm.submit(tiles(1), 0)
    [task] = farm.lease("a", 1, 0)

    assert farm.expire(TIMEOUT - 1) == []
    assert farm.lease("b", 1, TIMEOUT - 1) == []

    assert farm.expire(TIMEOUT) == [task]
    assert task.state is TaskState.QUEUED
    assert task.worker is None
    assert farm.workers["a"].leased == set()
    assert farm.lease("b", 1, TIMEOUT) == [task]
    assert task.worker == "b"
    assert task.attempts == 2


def test_expired_tasks_go_back_to_the_front_of_the_queue_in_order(farm: Scheduler) -> None:
    farm.register("a", 4, {}, 0, worker_id="a")
    farm.register("b", 4, {}, 0, worker_id="b")
    farm.submit(tiles(4), 0, job_id="j")
    taken = farm.lease("a", 3, 0)

    assert farm.expire(TIMEOUT) == taken

    assert ids(farm.lease("b", 4, TIMEOUT)) == ["j.0", "j.1", "j.2", "j.3"]


def test_heartbeat_extends_the_lease(farm: Scheduler) -> None:
    farm.register("a", 1, {}, 0, worker_id="a")
    farm.submit(tiles(1), 0)
    [task] = farm.lease("a", 1, 0)

    for now in (8.0, 16.0, 24.0):
        farm.touch("a", now)
        assert farm.expire(now + TIMEOUT - 1) == []
        assert task.state is TaskState.LEASED
    assert task.lease_expires_at == 24.0 + TIMEOUT
    assert farm.expire(24.0 + TIMEOUT) == [task]


def test_silent_worker_goes_offline_and_must_register_again(farm: Scheduler) -> None:
    worker = farm.register("a", 1, {}, 0, worker_id="a")
    farm.submit(tiles(1), 0)
    farm.lease("a", 1, 0)

    farm.expire(TIMEOUT + 1)

    assert worker.state is WorkerState.OFFLINE
    with pytest.raises(NotFound, match="register again"):
        farm.lease("a", 1, TIMEOUT + 1)


def test_release_gives_tasks_back_without_counting_an_attempt(farm: Scheduler) -> None:
    farm.register("a", 2, {}, 0, worker_id="a")
    job = farm.submit(tiles(2), 0, max_attempts=1)
    leased = farm.lease("a", 2, 0)

    assert farm.release("a", ids(leased), 1) == leased
    assert [task.attempts for task in job.tasks] == [0, 0]
    assert farm.ready_total == 2
    assert farm.workers["a"].leased == set()

    # With max_attempts=1 a release must not have used up the only attempt.
    [again, _] = farm.lease("a", 2, 2)
    assert again.attempts == 1
    farm.fail("a", again.id, "boom", "Traceback ...", 3)
    assert job.state is JobState.FAILED


def test_released_tasks_leave_again_in_their_order(farm: Scheduler) -> None:
    farm.register("a", 1, {}, 0, worker_id="a")
    farm.register("b", 1, {}, 0, worker_id="b")
    farm.submit(tiles(6), 0)
    leased = farm.lease("a", 5, 0)  # one to run, four prefetched
    assert farm.release("a", [*ids(leased[1:]), "nojob.0"], 1) == leased[1:]
    again = farm.lease("b", 5, 2)
    assert [task.index for task in again] == [1, 2, 3, 4, 5]


def test_release_of_a_task_held_by_someone_else_is_ignored(farm: Scheduler) -> None:
    farm.register("a", 1, {}, 0, worker_id="a")
    farm.register("b", 1, {}, 0, worker_id="b")
    farm.submit(tiles(1), 0)
    [task] = farm.lease("a", 1, 0)

    assert farm.release("b", [task.id], 1) == []
    assert task.worker == "a"
    assert task.state is TaskState.LEASED


def test_unregister_returns_the_workers_tasks(farm: Scheduler) -> None:
    farm.register("a", 2, {}, 0, worker_id="a")
    farm.register("b", 2, {}, 0, worker_id="b")
    job = farm.submit(tiles(2), 0)
    leased = farm.lease("a", 2, 0)

    assert set(farm.unregister("a", 1)) == set(leased)
    assert farm.workers["a"].state is WorkerState.OFFLINE
    assert farm.ready_total == 2
    assert set(farm.lease("b", 2, 2)) == set(job.tasks)
    with pytest.raises(NotFound):
        farm.lease("a", 1, 3)


# ---- failures -----------------------------------------------------------------------------


def test_failed_task_is_retried_until_max_attempts_then_the_job_fails(farm: Scheduler) -> None:
    farm.register("a", 1, {}, 0, worker_id="a")
    farm.register("b", 1, {}, 0, worker_id="b")
    job = farm.submit(tiles_and_stitch(2), 0, max_attempts=3, job_id="j")
    [sibling] = farm.lease("b", 1, 0)

    for attempt in range(1, 4):
        [task] = farm.lease("a", 1, attempt)
        assert task.id == "j.1"
        assert task.attempts == attempt
        assert farm.fail("a", task.id, f"segfault {attempt}", f"trace {attempt}", attempt)
        if attempt < 3:
            assert task.state is TaskState.QUEUED
            assert job.state is JobState.RUNNING

    assert task.state is TaskState.FAILED
    assert task.failures == 3
    assert job.state is JobState.FAILED
    assert job.error == "task j.1 failed after 3 attempt(s): segfault 3"
    assert job.traceback == "trace 3"
    assert job.finished_at == 3
    assert sibling.state is TaskState.CANCELLED
    assert job.tasks[2].state is TaskState.CANCELLED
    assert farm.take_cancellations("b") == [sibling.id]
    assert farm.ready_total == 0
    assert farm.take_finished() == [job]
    assert farm.workers["a"].tasks_failed == 3


def test_fail_without_retry_fails_the_job_at_once(farm: Scheduler) -> None:
    farm.register("a", 1, {}, 0, worker_id="a")
    job = farm.submit(tiles(2), 0, max_attempts=5)
    [task] = farm.lease("a", 1, 0)

    farm.fail("a", task.id, "scene file missing", "", 1, retry=False)

    assert job.state is JobState.FAILED
    assert "scene file missing" in job.error
    assert [t.state for t in job.tasks] == [TaskState.FAILED, TaskState.CANCELLED]


def test_failure_report_from_a_worker_that_lost_the_lease_is_ignored(farm: Scheduler) -> None:
    farm.register("a", 1, {}, 0, worker_id="a")
    farm.register("b", 1, {}, 0, worker_id="b")
    farm.submit(tiles(1), 0, max_attempts=1)
    [task] = farm.lease("a", 1, 0)
    farm.expire(TIMEOUT)
    farm.lease("b", 1, TIMEOUT)

    assert not farm.fail("a", task.id, "late", "", TIMEOUT + 1)
    assert task.state is TaskState.LEASED
    assert task.worker == "b"
    assert task.failures == 0


# ---- cancel, pause, resume ----------------------------------------------------------------


def test_cancel_tells_each_worker_to_stop_its_tasks(farm: Scheduler) -> None:
    farm.register("a", 2, {}, 0, worker_id="a")
    farm.register("b", 2, {}, 0, worker_id="b")
    job = farm.submit(tiles(5), 0)
    on_a = farm.lease("a", 2, 0)
    on_b = farm.lease("b", 1, 0)

    assert farm.cancel(job.id, 1) is job

    assert job.state is JobState.CANCELLED
    assert all(task.state is TaskState.CANCELLED for task in job.tasks)
    assert farm.take_cancellations("a") == sorted(ids(on_a))
    assert farm.take_cancellations("b") == ids(on_b)
    assert farm.take_cancellations("a") == []
    assert farm.workers["a"].leased == set()
    assert farm.ready_total == 0
    assert farm.lease("a", 5, 2) == []
    # The cancelled task's late result is not recorded.
    assert not farm.complete("a", on_a[0].id, "late", 3)
    assert on_a[0].state is TaskState.CANCELLED


def test_cancel_of_a_finished_job_changes_nothing(farm: Scheduler) -> None:
    farm.register("a", 1, {}, 0, worker_id="a")
    job = farm.submit(tiles(1), 0)
    [task] = farm.lease("a", 1, 0)
    farm.complete("a", task.id, 42, 1)

    farm.cancel(job.id, 2)

    assert job.state is JobState.DONE
    assert farm.results(job.id) == [42]


def test_pause_stops_dispatch_and_resume_restarts_it(farm: Scheduler) -> None:
    farm.register("a", 1, {}, 0, worker_id="a")
    job = farm.submit(tiles_and_stitch(2), 0)
    [running] = farm.lease("a", 1, 0)

    farm.pause(job.id)
    assert job.state is JobState.PAUSED
    assert farm.ready_total == 0
    assert farm.lease("a", 5, 1) == []
    # A task already running may still finish while the job is paused.
    assert farm.complete("a", running.id, "tile", 2)
    assert farm.lease("a", 5, 3) == []

    farm.resume(job.id)
    assert job.state is JobState.RUNNING
    assert farm.ready_total == 1
    assert farm.lease("a", 5, 4) == [job.tasks[1]]


def test_resume_of_a_job_that_never_started_is_queued(farm: Scheduler) -> None:
    job = farm.submit(tiles(1), 0)
    farm.pause(job.id)
    farm.resume(job.id)
    assert job.state is JobState.QUEUED
    assert farm.ready_total == 1


# ---- late and duplicate reports -----------------------------------------------------------


def test_late_report_is_accepted_once_and_the_new_holder_is_told(farm: Scheduler) -> None:
    farm.register("slow", 1, {}, 0, worker_id="slow")
    farm.register("fast", 1, {}, 0, worker_id="fast")
    job = farm.submit(tiles(1), 0)
    [task] = farm.lease("slow", 1, 0)
    farm.expire(TIMEOUT)
    assert farm.lease("fast", 1, TIMEOUT) == [task]

    assert farm.complete("slow", task.id, "from slow", TIMEOUT + 1)

    assert task.state is TaskState.DONE
    assert job.state is JobState.DONE
    assert farm.workers["fast"].leased == set()
    assert farm.take_cancellations("fast") == [task.id]
    assert not farm.complete("fast", task.id, "from fast", TIMEOUT + 2)
    assert not farm.complete("slow", task.id, "again", TIMEOUT + 3)
    assert farm.results(job.id) == ["from slow"]


def test_late_report_for_a_task_waiting_in_the_queue(farm: Scheduler) -> None:
    farm.register("slow", 1, {}, 0, worker_id="slow")
    job = farm.submit(tiles_and_stitch(1), 0)
    [tile] = farm.lease("slow", 1, 0)
    farm.expire(TIMEOUT)
    assert farm.ready_total == 1

    assert farm.complete("slow", tile.id, "tile", TIMEOUT + 1)

    # The tile left the queue and the stitch took its place.
    assert farm.ready_total == 1
    assert list(job.ready) == [1]


def test_duplicate_report_is_discarded(farm: Scheduler) -> None:
    worker = farm.register("a", 1, {}, 0, worker_id="a")
    job = farm.submit(tiles(2), 0)
    [task] = farm.lease("a", 1, 0)

    assert farm.complete("a", task.id, "first", 1)
    assert not farm.complete("a", task.id, "second", 2)

    assert task.result == "first"
    assert job.counts[TaskState.DONE] == 1
    assert worker.tasks_done == 1


# ---- lookups and job life -----------------------------------------------------------------


def test_unknown_ids_raise_not_found(farm: Scheduler) -> None:
    job = farm.submit(tiles(2), 0, job_id="j")
    for call in (
        lambda: farm.job("nope"),
        lambda: farm.cancel("nope", 0),
        lambda: farm.pause("nope"),
        lambda: farm.resume("nope"),
        lambda: farm.results("nope"),
        lambda: farm.task("nope.0"),
        lambda: farm.task("j.2"),
        lambda: farm.task("j.x"),
        lambda: farm.task("j"),
        lambda: farm.task(""),
        lambda: farm.lease("ghost", 1, 0),
        lambda: farm.touch("ghost", 0),
        lambda: farm.unregister("ghost", 0),
        lambda: farm.take_cancellations("ghost"),
        lambda: farm.complete("w", "nope.0", None, 0),
        lambda: farm.fail("w", "j.9", "", "", 0),
    ):
        with pytest.raises(NotFound):
            call()
    assert farm.task("j.1") is job.tasks[1]
    assert NotFound.status == 404


def test_job_goes_from_queued_to_running_to_done(farm: Scheduler) -> None:
    farm.register("a", 2, {}, 0, worker_id="a")
    job = farm.submit(tiles_and_stitch(2), 5.0)
    assert job.state is JobState.QUEUED
    assert job.started_at is None

    first = farm.lease("a", 2, 6.0)
    assert job.state is JobState.RUNNING
    assert job.started_at == 6.0
    for task in first:
        farm.complete("a", task.id, task.payload["tile"], 7.0)
    assert job.state is JobState.RUNNING
    [stitch] = farm.lease("a", 2, 8.0)
    farm.complete("a", stitch.id, "image.png", 9.0)

    assert job.state is JobState.DONE
    assert job.finished_at == 9.0
    assert farm.results(job.id) == [0, 1, "image.png"]
    assert job.to_dict()["progress"] == 1.0
    assert farm.take_finished() == [job]
    assert farm.take_finished() == []


# ---- random operations --------------------------------------------------------------------

# Every requirement set is met by at least the "studio" worker, so every job can finish.
WORKERS: dict[str, dict[str, str]] = {
    "cpu": {},
    "gpu": {"gpu": ""},
    "old": {"blender": "4.2"},
    "studio": {"gpu": "", "blender": "4.5.1"},
}
REQUIREMENTS = [(), ("gpu",), ("blender>=4.5",), ("blender>=4.0",), ("gpu", "blender>=4.5")]


def ready_tasks(job: Job) -> list[Task]:
    """Tasks that could run now, judged from task states rather than the job's ready queue."""
    return [
        task
        for task in job.tasks
        if task.state is TaskState.QUEUED
        and all(job.tasks[dep].state is TaskState.DONE for dep in task.depends)
    ]


@st.composite
def job_specs(draw: st.DrawFn) -> list[TaskSpec]:
    count = draw(st.integers(1, 6))
    specs = []
    for index in range(count):
        depends = draw(st.lists(st.integers(0, index - 1), max_size=3)) if index else []
        specs.append(TaskSpec({"n": index}, depends=depends))
    return specs


class SchedulerMachine(RuleBasedStateMachine):
    """Random jobs and four workers of different kinds, driven through every operation."""

    def __init__(self) -> None:
        super().__init__()
        self.farm = Scheduler(lease_timeout=TIMEOUT)
        self.now = 0.0
        self.worker_ids = {name: self._register(name, 0) for name in WORKERS}
        self.incarnation = 0
        self.submitted: list[Job] = []
        # Leases that ran out: (task id, worker id that held it), candidates for a late report.
        self.lost: list[tuple[str, str]] = []
        self.leases: Counter[Task] = Counter()
        self.releases: Counter[Task] = Counter()
        # The model's own record of failures, by worker name: who failed each task, and
        # how often each worker failed each job (the blocklist follows from it).
        self.failed_on: dict[str, set[str]] = {}
        self.job_failures: dict[str, Counter[str]] = {}

    def _register(self, name: str, generation: int) -> str:
        worker_id = f"{name}-{generation}"
        self.farm.register(name, 2, WORKERS[name], self.now, worker_id=worker_id)
        return worker_id

    def _online(self, name: str) -> str:
        """The worker's id, registering it again if the farm marked it offline."""
        worker = self.farm.workers[self.worker_ids[name]]
        if not worker.online:
            self.incarnation += 1
            self.worker_ids[name] = self._register(name, self.incarnation)
        return self.worker_ids[name]

    def _leased(self) -> list[Task]:
        return [t for job in self.submitted for t in job.tasks if t.state is TaskState.LEASED]

    def _draw_leased(self, data: st.DataObject) -> Task:
        return self.farm.task(data.draw(st.sampled_from([task.id for task in self._leased()])))

    def _unfinished(self) -> list[Job]:
        return [job for job in self.submitted if job.state not in FINAL_JOB_STATES]

    def _blocked(self, job: Job) -> set[str]:
        """Workers that failed this many of the job's tasks are kept off it (the docs: 3)."""
        return {name for name, n in self.job_failures.get(job.id, Counter()).items() if n >= 3}

    def _may_run(self, name: str, job: Job) -> bool:
        requirements = all(requirement_met(r, WORKERS[name]) for r in job.requires)
        return requirements and name not in self._blocked(job)

    def _may_take(self, name: str, task: Task) -> bool:
        """The documented retry rule, written here rather than borrowed from the scheduler:
        a worker that failed a task gets it back only while no other online, idle worker
        that may run the job and has not failed the task exists."""
        if not self._may_run(name, task.job):
            return False
        failed = self.failed_on.get(task.id, set())
        if name not in failed:
            return True
        for other in WORKERS:
            record = self.farm.workers[self.worker_ids[other]]
            idle = record.online and not record.leased
            if other != name and idle and other not in failed and self._may_run(other, task.job):
                return False
        return True

    # ---- rules -----------------------------------------------------------------------------

    @rule(
        specs=job_specs(),
        priority=st.integers(0, 2),
        requires=st.sampled_from(REQUIREMENTS),
        max_attempts=st.integers(1, 3),
    )
    def submit(
        self, specs: list[TaskSpec], priority: int, requires: tuple[str, ...], max_attempts: int
    ) -> None:
        ready_before = self.farm.ready_total
        job = self.farm.submit(
            specs,
            self.now,
            priority=priority,
            requires=requires,
            max_attempts=max_attempts,
            job_id=f"j{len(self.submitted)}",
        )
        self.submitted.append(job)
        assert job.state is JobState.QUEUED
        assert self.farm.ready_total == ready_before + len(ready_tasks(job))

    @rule(name=st.sampled_from(sorted(WORKERS)), want=st.integers(1, 4))
    def lease(self, name: str, want: int) -> None:
        worker_id = self._online(name)
        # Tasks this worker failed wait for an idle worker that has not (the model's rule).
        queues = {
            job: [i for i in job.ready if self._may_take(name, job.tasks[i])]
            for job in self._unfinished()
        }
        candidates = {
            task
            for job in self._unfinished()
            if not job.paused
            for task in ready_tasks(job)
            if self._may_take(name, task)
        }

        granted = self.farm.lease(worker_id, want, self.now)

        assert len(granted) == min(want, len(candidates))
        assert set(granted) <= candidates
        self.leases.update(granted)
        keys = [task.job.order_key for task in granted]
        assert keys == sorted(keys), "leases must come in priority, then submission, order"
        if granted:
            # Nothing left behind that should have come first for this worker.
            worst = max(keys)
            assert all(task.job.order_key >= worst for task in candidates - set(granted))
        for job in {task.job for task in granted}:
            mine = [task.index for task in granted if task.job is job]
            assert mine == queues[job][: len(mine)], "FIFO within a job"
        for task in granted:
            assert task.worker == worker_id
            assert task.lease_expires_at == self.now + TIMEOUT

    @precondition(lambda self: self._leased())
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        task = self._draw_leased(data)
        job = task.job
        assert self.farm.complete(task.worker or "", task.id, f"result {task.id}", self.now)
        assert task.state is TaskState.DONE
        if all(t.state is TaskState.DONE for t in job.tasks):
            assert job.state is JobState.DONE

    @precondition(lambda self: self._leased())
    @rule(data=st.data(), retry=st.booleans())
    def fail(self, data: st.DataObject, retry: bool) -> None:
        task = self._draw_leased(data)
        job = task.job
        worker = self.farm.workers[task.worker or ""]
        others = {
            other: self.farm.workers[other.worker or ""]
            for other in job.tasks
            if other.state is TaskState.LEASED and other is not task
        }
        failures = task.failures

        assert self.farm.fail(worker.id, task.id, "boom", f"tb {task.id}", self.now, retry=retry)
        self.failed_on.setdefault(task.id, set()).add(worker.name)
        self.job_failures.setdefault(job.id, Counter())[worker.name] += 1

        assert task.failures == failures + 1
        assert job.blocked == self._blocked(job)
        assert task not in worker.leased
        if retry and task.failures < job.max_attempts:
            assert task.state is TaskState.QUEUED
            assert job.state not in FINAL_JOB_STATES
        else:
            assert task.state is TaskState.FAILED
            assert job.state is JobState.FAILED
            assert job.error.endswith(": boom")
            assert job.traceback == f"tb {task.id}"
            assert all(t.state in FINAL_TASK_STATES for t in job.tasks)
            for other, holder in others.items():
                assert other.id in holder.to_cancel

    @precondition(lambda self: self._leased())
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        task = self._draw_leased(data)
        attempts = task.attempts
        assert self.farm.release(task.worker or "", [task.id], self.now) == [task]
        self.releases[task] += 1
        assert task.state is TaskState.QUEUED
        assert task.attempts == attempts - 1

    @rule(elapsed=st.floats(0, 2 * TIMEOUT, allow_nan=False))
    def expire(self, elapsed: float) -> None:
        self.now += elapsed
        holders = {task: task.worker for task in self._leased()}
        due = {task for task in holders if task.lease_expires_at <= self.now}

        returned = self.farm.expire(self.now)

        assert set(returned) == due
        for task in returned:
            assert task.state is TaskState.QUEUED
            self.lost.append((task.id, holders[task] or ""))
        for job in {task.job for task in returned}:
            back = sorted(task.index for task in returned if task.job is job)
            assert list(job.ready)[: len(back)] == back, "expired tasks go first, in order"

    @rule(name=st.sampled_from(sorted(WORKERS)), elapsed=st.floats(0, TIMEOUT / 2))
    def report(self, name: str, elapsed: float) -> None:
        """A worker's periodic word: a heartbeat that also collects what it should stop."""
        self.now += elapsed
        worker = self.farm.touch(self._online(name), self.now)
        assert all(task.lease_expires_at == self.now + TIMEOUT for task in worker.leased)
        held = {task.id for task in worker.leased}
        cancels = self.farm.take_cancellations(worker.id)
        assert not held & set(cancels), "a worker is never told to stop a task it still owns"
        assert worker.to_cancel == set()

    @rule(name=st.sampled_from(sorted(WORKERS)))
    def unregister(self, name: str) -> None:
        worker = self.farm.workers[self._online(name)]
        held = set(worker.leased)
        assert set(self.farm.unregister(worker.id, self.now)) == held
        assert all(task.state is TaskState.QUEUED for task in held)
        assert worker.state is WorkerState.OFFLINE

    @precondition(lambda self: self.lost)
    @rule(data=st.data(), taker=st.none() | st.sampled_from(sorted(WORKERS)))
    def late_report(self, data: st.DataObject, taker: str | None) -> None:
        """A worker whose lease ran out reports anyway, often after someone else took over."""
        task_id, late_worker = data.draw(st.sampled_from(self.lost))
        self.lost.remove((task_id, late_worker))
        task = self.farm.task(task_id)
        if taker is not None:
            self.lease(taker, 8)
        if task.state in FINAL_TASK_STATES:
            assert not self.farm.complete(late_worker, task.id, "late", self.now)
            return
        holder = self.farm.workers.get(task.worker or "")
        taken_over = task.state is TaskState.LEASED and task.worker != late_worker

        assert self.farm.complete(late_worker, task.id, "late", self.now)

        assert task.state is TaskState.DONE
        assert task.result == "late"
        if taken_over and holder is not None:
            assert task.id in holder.to_cancel, "the new holder must be told to stop"
            assert task not in holder.leased
        assert not self.farm.complete(late_worker, task.id, "duplicate", self.now)
        assert task.result == "late"

    @precondition(lambda self: self.submitted)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job = self.farm.job(data.draw(st.sampled_from([job.id for job in self.submitted])))
        before = job.state
        running = {
            task: self.farm.workers[task.worker or ""]
            for task in job.tasks
            if task.state is TaskState.LEASED
        }

        self.farm.cancel(job.id, self.now)

        if before in FINAL_JOB_STATES:
            assert job.state is before
            return
        assert job.state is JobState.CANCELLED
        assert not job.ready
        for task, worker in running.items():
            assert task.state is TaskState.CANCELLED
            assert task.id in worker.to_cancel

    @precondition(lambda self: self.submitted)
    @rule(data=st.data(), pause=st.booleans())
    def pause_or_resume(self, data: st.DataObject, pause: bool) -> None:
        job = self.farm.job(data.draw(st.sampled_from([job.id for job in self.submitted])))
        before = job.state
        if pause:
            self.farm.pause(job.id)
            if before not in FINAL_JOB_STATES:
                assert job.state is JobState.PAUSED
        else:
            self.farm.resume(job.id)
            if before is JobState.PAUSED:
                assert job.state in (JobState.QUEUED, JobState.RUNNING)
        if before in FINAL_JOB_STATES:
            assert job.state is before

    # ---- invariants ------------------------------------------------------------------------

    @invariant()
    def each_leased_task_has_exactly_one_holder(self) -> None:
        holders: Counter[Task] = Counter()
        for worker in self.farm.workers.values():
            if not worker.online:
                assert not worker.leased, "an offline worker holds no leases"
            for task in worker.leased:
                holders[task] += 1
                assert task.state is TaskState.LEASED
                assert task.worker == worker.id
            for task_id in worker.to_cancel:
                assert self.farm.task(task_id).state in FINAL_TASK_STATES
        leased = {t for job in self.submitted for t in job.tasks if t.state is TaskState.LEASED}
        assert set(holders) == leased
        assert all(count == 1 for count in holders.values())
        assert self.farm._leased == leased  # what expire() scans

    @invariant()
    def leases_respect_dependencies_and_requirements(self) -> None:
        for job in self.submitted:
            for task in job.tasks:
                if task.state in (TaskState.LEASED, TaskState.DONE):
                    assert all(job.tasks[dep].state is TaskState.DONE for dep in task.depends)
                if task.state is TaskState.LEASED:
                    capabilities = self.farm.workers[task.worker or ""].capabilities
                    assert all(requirement_met(r, capabilities) for r in job.requires)

    @invariant()
    def ready_queues_and_ready_total_agree(self) -> None:
        expected = 0
        for job in self.submitted:
            assert len(set(job.ready)) == len(job.ready), "a task queued twice"
            if job.state in FINAL_JOB_STATES:
                assert not job.ready
                continue
            assert sorted(job.ready) == [task.index for task in ready_tasks(job)]
            if not job.paused:
                expected += len(job.ready)
        assert self.farm.ready_total == expected

    @invariant()
    def job_counts_and_states_match_the_tasks(self) -> None:
        for job in self.submitted:
            actual = Counter(task.state for task in job.tasks)
            assert {s: n for s, n in job.counts.items() if n} == dict(actual)
            assert all(n >= 0 for n in job.counts.values())
            assert (job.state is JobState.PAUSED) == job.paused
            if job.state is JobState.DONE:
                assert actual[TaskState.DONE] == len(job.tasks)
            elif job.state is JobState.FAILED:
                assert actual[TaskState.FAILED] == 1
                assert actual[TaskState.DONE] + actual[TaskState.CANCELLED] == len(job.tasks) - 1
            elif job.state is JobState.CANCELLED:
                assert actual[TaskState.FAILED] == 0
                assert actual[TaskState.DONE] + actual[TaskState.CANCELLED] == len(job.tasks)
            else:
                assert not (set(actual) & FINAL_TASK_STATES - {TaskState.DONE})
                assert actual[TaskState.DONE] < len(job.tasks)
                started = job.started_at is not None
                if not job.paused:
                    assert job.state is (JobState.RUNNING if started else JobState.QUEUED)

    @invariant()
    def attempts_count_leases_but_not_releases(self) -> None:
        for job in self.submitted:
            for task in job.tasks:
                assert task.attempts == self.leases[task] - self.releases[task]
                assert task.failures <= job.max_attempts

    # ---- the end -----------------------------------------------------------------------------

    def teardown(self) -> None:
        """Resume everything and keep working until every job is over. A job every able
        worker is blocked from waits for a person: unblock it, as `farm unblock` would."""
        for job in self._unfinished():
            self.farm.resume(job.id)
            self.farm.unblock(job.id)
            self.job_failures.pop(job.id, None)
        for _ in range(200):
            if not self._unfinished():
                break
            self.now += TIMEOUT + 1
            self.farm.expire(self.now)
            for name in WORKERS:
                self.lease(name, 8)
            for task in self._leased():
                self.farm.complete(task.worker or "", task.id, "final", self.now)
            self.each_leased_task_has_exactly_one_holder()
            self.ready_queues_and_ready_total_agree()
            self.job_counts_and_states_match_the_tasks()
        assert not self._unfinished(), "work left that no worker would take"
        assert self.farm.ready_total == 0
        assert not self._leased()
        for job in self.submitted:
            assert job.state in FINAL_JOB_STATES
            assert job.finished_at is not None
            assert all(task.state in FINAL_TASK_STATES for task in job.tasks)
            if job.state is JobState.DONE:
                assert None not in self.farm.results(job.id)


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_a_worker_back_under_its_name_replaces_its_offline_record() -> None:
    scheduler = Scheduler(lease_timeout=10)
    first = scheduler.register("render-01", 1, {}, now=0.0)
    scheduler.register("render-02", 1, {}, now=0.0)
    scheduler.unregister(first.id, now=1.0)
    again = scheduler.register("render-01", 1, {}, now=2.0)
    names = sorted((w.name, w.online) for w in scheduler.workers.values())
    assert names == [("render-01", True), ("render-02", True)]
    assert again.id in scheduler.workers


def test_departed_workers_are_listed_up_to_a_bound_and_forgotten_at_restart() -> None:
    scheduler = Scheduler(lease_timeout=10)
    stays = scheduler.register("stays", 1, {}, now=0.0)
    kept = DEPARTED_WORKERS_KEPT
    # Workers named host-pid come and go: each leaves a new offline record.
    for n in range(kept + 50):
        worker = scheduler.register(f"left-{n}", 1, {}, now=float(n))
        scheduler.unregister(worker.id, now=float(n) + 0.5)
    silent = [scheduler.register(f"silent-{n}", 1, {}, now=500.0 + n) for n in range(5)]
    scheduler.touch(stays.id, now=520.0)
    scheduler.expire(now=520.0)  # the silent ones go offline, the oldest leavers drop out
    offline = [w.name for w in scheduler.workers.values() if not w.online]
    assert len(offline) == kept
    expected = {f"left-{n}" for n in range(55, kept + 50)} | {w.name for w in silent}
    assert set(offline) == expected
    assert scheduler.workers[stays.id].online
    # One that left comes back under its name: its record is replaced, not counted twice.
    scheduler.register("left-149", 1, {}, now=530.0)
    assert sorted(w.name for w in scheduler.workers.values()).count("left-149") == 1
    scheduler.restarted(now=600.0)
    assert sorted(w.name for w in scheduler.workers.values()) == ["left-149", "stays"]


def test_a_retry_prefers_an_idle_worker_that_has_not_failed_it(farm: Scheduler) -> None:
    farm.register("a", 1, {}, 0, worker_id="a")
    farm.register("b", 1, {}, 0, worker_id="b")
    farm.submit(tiles(1), 0, max_attempts=3, job_id="j")
    [task] = farm.lease("a", 1, 0)
    farm.fail("a", task.id, "boom", "", 1)
    assert farm.lease("a", 1, 2) == []  # b is idle and has not failed it
    assert farm.lease("b", 1, 2) == [task]
    farm.fail("b", task.id, "boom", "", 3)
    assert farm.lease("a", 1, 4) == [task]  # everyone failed it once: anyone may retry


def test_a_retry_goes_back_to_its_failer_when_every_other_worker_is_busy(
    farm: Scheduler,
) -> None:
    farm.register("a", 1, {}, 0, worker_id="a")
    farm.register("b", 1, {}, 0, worker_id="b")
    farm.submit(tiles(2), 0, max_attempts=3, job_id="j")
    [first] = farm.lease("a", 1, 0)
    [second] = farm.lease("b", 1, 0)
    farm.fail("a", first.id, "boom", "", 1)
    # b has not failed it but is busy: a tries again rather than leave the task waiting.
    assert farm.lease("a", 1, 2) == [first]
    assert second.state is TaskState.LEASED


def test_a_worker_failing_a_job_repeatedly_is_blocked_until_cleared(farm: Scheduler) -> None:
    farm.register("flaky", 1, {}, 0, worker_id="f")
    job = farm.submit(tiles(5), 0, max_attempts=10, job_id="j")
    for now in range(3):
        [task] = farm.lease("f", 1, now)
        farm.fail("f", task.id, "driver crash", "", now)
    assert job.blocked == {"flaky"}
    assert job.to_dict()["blocked"] == ["flaky"]
    assert farm.lease("f", 1, 4) == []
    farm.unblock("j")
    assert len(farm.lease("f", 1, 5)) == 1


def test_retry_requeues_a_failed_job(farm: Scheduler) -> None:
    farm.register("a", 1, {}, 0, worker_id="a")
    job = farm.submit(tiles_and_stitch(2), 0, max_attempts=1, job_id="j")
    [first] = farm.lease("a", 1, 0)
    assert farm.complete("a", first.id, "ok", 1)
    with pytest.raises(SchedulerError, match="only failed or cancelled jobs retry"):
        farm.retry("j", 1)
    [second] = farm.lease("a", 1, 1)
    farm.fail("a", second.id, "boom", "tb", 2)
    assert job.state is JobState.FAILED
    farm.retry("j", 3)
    assert job.state is JobState.RUNNING
    assert job.error == ""
    assert [t.state for t in job.tasks] == [TaskState.DONE, TaskState.QUEUED, TaskState.QUEUED]
    [again] = farm.lease("a", 5, 4)  # the stitch still waits for its tile
    assert again is second
    assert farm.complete("a", second.id, "ok", 5)
    [stitch] = farm.lease("a", 1, 6)
    assert farm.complete("a", stitch.id, "ok", 7)
    assert job.state is JobState.DONE


def test_a_task_past_its_timeout_is_stopped_and_counts_as_a_failure(farm: Scheduler) -> None:
    farm.register("a", 1, {}, 0, worker_id="a")
    job = farm.submit(tiles(1), 0, max_attempts=2, job_id="j", timeout=5)
    [task] = farm.lease("a", 1, 0)
    farm.touch("a", 4)
    farm.expire(4)
    assert task.state is TaskState.LEASED
    farm.touch("a", 6)
    farm.expire(6)
    assert task.state is TaskState.QUEUED
    assert task.failures == 1
    assert task.error == "timed out after 5s"
    assert farm.take_cancellations("a") == [task.id]
    [task] = farm.lease("a", 1, 7)
    farm.touch("a", 13)
    farm.expire(13)
    assert job.state is JobState.FAILED
    assert "timed out after 5s" in job.error


def _every_field(farm: Scheduler) -> dict[str, object]:
    """What a restored queue must equal: every job, task and worker, inner state included."""
    return {
        "seq": farm._seq,
        "ready_total": farm.ready_total,
        "jobs": {
            job.id: {
                **job.to_dict(),
                "ready": list(job.ready),
                "failures_by_worker": dict(job.failures_by_worker),
                "tasks": [
                    {
                        **task.to_dict(with_result=True),
                        "payload": task.payload,
                        "failed_on": sorted(task.failed_on),
                        "pending_deps": task.pending_deps,
                        "dependents": task.dependents,
                        "lease_expires_at": task.lease_expires_at,
                        "ready_at": task.ready_at,
                    }
                    for task in job.tasks
                ],
            }
            for job in farm.jobs.values()
        },
        "workers": {
            worker.id: {**worker.to_dict(), "to_cancel": sorted(worker.to_cancel)}
            for worker in farm.workers.values()
        },
        "active": [job.id for job in farm._active],
        "leased": sorted(task.id for task in farm._leased),
        "after_dependents": {k: sorted(v) for k, v in farm.after_dependents.items()},
        "after_named": sorted(farm.after_named),
    }


def test_a_snapshot_restores_every_job_task_and_worker() -> None:
    from buildcat import protocol
    from buildcat.server import snapshot

    farm = Scheduler(lease_timeout=10)
    farm.register("a", 1, {"gpu": ""}, 0, worker_id="a")
    farm.register("b", 2, {}, 0, worker_id="b")
    farm.register("flaky", 1, {}, 0, worker_id="f")
    # Jobs in every state, built one after another so each lease takes what it means to.
    done = farm.submit(tiles_and_stitch(2), 0, job_id="done")
    for _ in range(2):
        for task in farm.lease("a", 2, 1):
            assert farm.complete("a", task.id, {"ok": task.id}, 2, "log of " + task.id, 1.5, 0.5)
    assert done.state is JobState.DONE
    failed = farm.submit(tiles(2), 3, max_attempts=1, job_id="failed")
    [doomed] = farm.lease("f", 1, 3)
    assert farm.fail("f", doomed.id, "RuntimeError: boom", "Traceback: tb", 4, "it printed")
    assert failed.state is JobState.FAILED and failed.error and failed.traceback
    cancelled = farm.submit(tiles(3), 5, job_id="cancelled")
    [held] = farm.lease("b", 1, 5)
    farm.cancel(cancelled.id, 6)
    assert cancelled.state is JobState.CANCELLED
    assert farm.workers["b"].to_cancel == {held.id}  # not yet told: it is in the snapshot
    blocked = farm.submit(tiles(5), 7, max_attempts=10, job_id="blocked")
    for now in (7, 8, 9):
        [task] = farm.lease("f", 1, now)
        assert farm.fail("f", task.id, "driver crash", "", now)
    assert blocked.blocked == {"flaky"}
    running = farm.submit(tiles_and_stitch(3), 10, job_id="running", timeout=30)
    farm.set_priority(running.id, 5)
    leased = farm.lease("b", 2, 11)
    assert [task.job for task in leased] == [running, running]
    farm.progress("b", leased[0].id, 0.25, "a quarter")
    paused = farm.submit(tiles(3), 12, job_id="paused")
    farm.pause(paused.id)
    farm.submit(tiles(2), 12, job_id="queued", requires=["gpu", "blender>=9"])  # nobody can
    # Jobs after jobs: one waiting (out of the dispatch list), one failed at once by the job
    # it waits for, one run whatever that job's outcome (nobody can take it).
    waiting = farm.submit(tiles(2), 12, job_id="waiting", after=["running", "paused"])
    farm.set_priority(waiting.id, 9)
    doomed = farm.submit(tiles(1), 12, job_id="doomed", after=["failed"])
    assert doomed.state is JobState.FAILED and waiting.waiting_for == {"running", "paused"}
    farm.submit(tiles(1), 12, job_id="anyway", after=["failed"], after_any=True, requires=["x"])
    assert {job.state for job in farm.jobs.values()} == set(JobState)

    document = protocol.unpack(protocol.pack(snapshot.dump(farm)), trusted=True)
    copy = Scheduler(lease_timeout=10)
    snapshot.load(copy, document)

    assert _every_field(copy) == _every_field(farm)
    boom = "task failed.0 failed after 1 attempt(s): RuntimeError: boom"
    assert copy.jobs["failed"].error == boom
    assert copy.jobs["failed"].traceback == "Traceback: tb"
    assert copy.jobs["blocked"].blocked == {"flaky"}
    # Both go on the same way: the pending cancel, the blocklist, the leases, the pause.
    for scheduler in (farm, copy):
        assert scheduler.take_cancellations("b") == [held.id]
        # Blocked from "blocked", the paused and the impossible jobs not offered: one tile.
        [tile] = scheduler.lease("f", 5, 13)
        assert tile.id == "running.2"
        for task in [*leased, tile]:
            assert scheduler.complete(task.worker or "", task.id, "late", 14)
        scheduler.resume(paused.id)
        scheduler.unblock(blocked.id)
    assert _every_field(copy) == _every_field(farm)
    assert [t.id for t in copy.lease("f", 10, 15)] == [t.id for t in farm.lease("f", 10, 15)]
    assert [t.id for t in copy.lease("b", 10, 15)] == [t.id for t in farm.lease("b", 10, 15)]
    assert _every_field(copy) == _every_field(farm)


def test_a_snapshot_from_before_payloads_were_packed_loads_the_same_queue(
    farm: Scheduler,
) -> None:
    """Tasks hold their payloads packed now (a ~50-byte string, not a ~280-byte map);
    a snapshot written before held the maps in its columns."""
    from buildcat import protocol
    from buildcat.server import snapshot

    farm.register("a", 1, {}, 0, worker_id="a")
    farm.submit(tiles_and_stitch(3), 1, job_id="render")
    farm.submit([TaskSpec({"args": [n], "label": f"n{n}"}) for n in range(5)], 2, job_id="py")
    [task] = farm.lease("a", 1, 3)
    farm.complete("a", task.id, {"sum": 6}, 4)
    document = protocol.unpack(protocol.pack(snapshot.dump(farm)), trusted=True)
    for job in document["jobs"]:
        columns = job["task_columns"]
        columns["payload"] = [protocol.unpack(p) for p in columns.pop("packed")]
    copy = Scheduler(lease_timeout=10)
    snapshot.load(copy, document)
    assert _every_field(copy) == _every_field(farm)
    assert copy.jobs["py"].tasks[4].payload == {"args": [4], "label": "n4"}


def test_a_new_priority_reorders_the_queue_at_once(farm: Scheduler) -> None:
    farm.register("a", 1, {}, 0, worker_id="a")
    first = farm.submit(tiles(2), 0)
    second = farm.submit(tiles(2), 1)
    farm.set_priority(second.id, 5)
    assert [task.job for task in farm.lease("a", 1, 2)] == [second]
    farm.set_priority(second.id, -1)
    assert [task.job for task in farm.lease("a", 1, 3)] == [first]
    assert second.priority == -1 and second.to_dict()["priority"] == -1


class _NoScan(dict):  # type: ignore[type-arg]
    """The workers of a big farm: a registration that walks them all fails the test."""

    def values(self):  # type: ignore[no-untyped-def]
        raise AssertionError("a registration scanned every worker")

    def items(self):  # type: ignore[no-untyped-def]
        raise AssertionError("a registration scanned every worker")


def test_a_registration_looks_only_at_departed_workers_and_replaces_its_own() -> None:
    from buildcat import protocol
    from buildcat.server import snapshot

    queue = Scheduler()
    online = queue.register("render-01", 1, {}, now=0.0)
    gone = queue.register("render-02", 1, {}, now=0.0)
    queue.unregister(gone.id, now=1.0)
    queue.workers = _NoScan(queue.workers)
    back = queue.register("render-02", 2, {}, now=2.0)  # its offline record is replaced
    twin = queue.register("render-01", 1, {}, now=2.0)  # an online namesake stays
    assert set(dict(queue.workers)) == {online.id, back.id, twin.id}
    # Offline records loaded from a snapshot are replaced the same way (during a replay).
    queue.workers = dict(queue.workers)
    queue.unregister(back.id, now=3.0)
    restored = Scheduler()
    snapshot.load(restored, protocol.unpack(protocol.pack(snapshot.dump(queue)), trusted=True))
    again = restored.register("render-02", 1, {}, now=4.0)
    assert [w.id for w in restored.workers.values() if w.name == "render-02"] == [again.id]
