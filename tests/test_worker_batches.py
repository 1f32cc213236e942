"""How a worker takes work: many small jobs are leased once per task (none taken and given
back), and quick tasks reach the child several per write while each keeps its own log,
result, cancel and crash."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import buildcat
from buildcat.server.scheduler import Scheduler, TaskSpec
from tests.conftest import Farm, secret_header, wait_for


def lease_grants(farm: Farm) -> int:
    """Tasks leased so far: the server's dispatch latency histogram counts each grant."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{farm.port}/metrics", headers=secret_header(farm.root)
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        text = reply.read().decode()
    [count] = re.findall(r"^buildcat_dispatch_latency_seconds_count (\S+)$", text, re.M)
    return int(float(count))


def warm_up(client: buildcat.Client, farm: Farm, *functions: str, items: Any = None) -> None:
    """A job of each function run to its end: the worker now knows their tasks are quick."""
    farm.gate("warm").open()
    for function in functions:
        client.map(function, ["warm"] * 8 if items is None else items).wait(60)


def block(client: buildcat.Client, farm: Farm) -> buildcat.Job:
    """A task that holds the worker's one slot until ``farm.gate("blocker").open()``; the
    worker leases what is queued meanwhile (``hold`` is known quick, so it prefetches)."""
    blocker = client.submit("farm_jobs:hold", "blocker")
    farm.gate("blocker").wait_started()
    return blocker


def test_many_small_jobs_are_each_leased_once(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender", "--slots", "1", "--log-level", "debug")
    client = jobs_farm.client()
    warm_up(client, jobs_farm, "farm_jobs:hold")
    blocker = block(client, jobs_farm)
    # Queued while the worker's one slot is busy: its next leases span many jobs.
    small = [client.map("farm_jobs:square", [n, n + 1]) for n in range(0, 400, 2)]
    before = lease_grants(jobs_farm)
    jobs_farm.gate("blocker").open()
    blocker.wait(60)
    for job in small:
        job.wait(60)
    assert [job.results() for job in small[:3]] == [[0, 1], [4, 9], [16, 25]]
    # Each of the 400 tasks was leased once: none was taken and given back.
    assert lease_grants(jobs_farm) - before == 400
    assert all(task["attempts"] == 1 for task in small[-1].tasks())
    # And many at a time: the worker named square's kind of work as quick, so one lease
    # takes tasks of many jobs (not one job's, or a free slot's worth, per round trip).
    leases = re.findall(
        r"leased (\d+) task\(s\), giving back (\d+)", jobs_farm.log_text("worker-1")
    )
    assert len(leases) < 100 and all(back == "0" for _, back in leases), leases


def test_a_batch_in_one_child_keeps_each_tasks_log_and_result(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender", "--slots", "1", "--log-level", "debug")
    client = jobs_farm.client()
    warm_up(client, jobs_farm, "farm_jobs:chatty", items=range(8))
    job = client.map("farm_jobs:chatty", range(40))
    job.wait(60)
    assert job.results() == [n + 1 for n in range(40)]
    for task in job.tasks():
        log = client.log(task["id"])
        assert f"working on {task['index']}\n" in log
        assert log.count("working on") == 1, log  # its own line only
        assert task["attempts"] == 1
    worker_log = jobs_farm.log_text("worker-1")
    sizes = [int(n) for n in re.findall(r"sending (\d+) tasks to child", worker_log)]
    assert sizes and max(sizes) > 1, worker_log[-3000:]  # several tasks per write


def sent_together(farm: Farm) -> list[int]:
    return [int(n) for n in re.findall(r"sending (\d+) tasks to child", farm.log_text("worker-1"))]


def test_a_cancel_stops_only_its_own_task_of_a_batch(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender", "--slots", "1", "--log-level", "debug")
    client = jobs_farm.client()
    warm_up(client, jobs_farm, "farm_jobs:gated")
    # One lease, one write to the child: "first" runs (and waits), "later" waits behind it.
    job = client.submit_tasks(
        [{"payload": {"function": "farm_jobs:gated", "args": ["first", "first's result"]}},
         {"payload": {"function": "farm_jobs:gated", "args": ["later", "later's result"]}}],
    )  # fmt: skip
    jobs_farm.gate("first").wait_started()
    assert sent_together(jobs_farm)[-1] == 2  # first and later, in one write
    later = f"{job.id}.1"
    client.requeue_task(later)  # stops its run on the worker: the one not started yet
    wait_for(lambda: f"stopping task {later}" in jobs_farm.log_text("worker-1"))
    jobs_farm.gate("first").open()
    jobs_farm.gate("later").wait_started()  # its run afresh, once first has ended
    assert not jobs_farm.gate("first").cancelled()  # the cancel was not for it
    jobs_farm.gate("later").open()
    assert job.results() == ["first's result", "later's result"]
    assert not jobs_farm.gate("later").cancelled()  # stopped before it ever ran
    assert job.tasks()[0]["attempts"] == 1  # first ran once, to its end


def test_a_child_that_crashes_in_a_batch_fails_only_its_own_task(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender", "--slots", "1", "--log-level", "debug")
    client = jobs_farm.client()
    (jobs_farm.root / "ran-before").write_text("")  # crash_once on it returns at once
    for _ in range(3):  # the worker learns crash_once is quick
        client.submit("farm_jobs:crash_once", "ran-before").wait(60)
    job = client.submit_tasks(
        [{"payload": {"function": "farm_jobs:crash_once", "args": ["ran-before"]}},
         {"payload": {"function": "farm_jobs:crash_once", "args": ["crashes-now"]}},
         {"payload": {"function": "farm_jobs:crash_once", "args": ["ran-before"]}},
         {"payload": {"function": "farm_jobs:crash_once", "args": ["ran-before"]}}],
        max_attempts=2,
    )  # fmt: skip
    job.wait(60)
    # Several went to the child at once (how many: as many as ~20 ms of work measured).
    assert max(sent_together(jobs_farm)) >= 2
    assert job.results() == ["second time lucky"] * 4
    # The crash cost its own task one attempt and no other task any.
    assert [task["attempts"] for task in job.tasks()] == [1, 2, 1, 1]
    assert "exited with code" in jobs_farm.log_text("worker-1")


def test_batches_leave_other_slots_their_share(jobs_farm: Farm) -> None:
    jobs_farm.start_worker("--no-blender", "--slots", "2")
    client = jobs_farm.client()
    warm_up(client, jobs_farm, "farm_jobs:pid")
    job = client.map("farm_jobs:pid", range(200))
    assert len(set(job.results())) == 2  # both children ran some of it


def test_jobs_a_worker_does_not_prefetch_fill_only_its_free_slots() -> None:
    queue = Scheduler(lease_timeout=10.0, default_max_attempts=3)
    queue.register("w", 1, {}, 0, worker_id="w")
    quick = {"function": "shading:quick"}
    for n in range(3):  # three jobs of a function the worker knows is quick
        queue.submit([TaskSpec({**quick, "args": [i]}) for i in range(4)], 1, job_id=f"q{n}")
    queue.submit([TaskSpec({"function": "shading:slow"}) for _ in range(4)], 1, job_id="slow")
    # A map's function is in the job's common keys, merged into each task's message.
    queue.submit([TaskSpec({"args": [0]})], 1, job_id="q3", meta={"common": quick})
    worker = queue.worker("w")
    worker.prefetch, worker.others = frozenset({"python:shading:quick"}), 1
    leased = queue.lease("w", 100, 2)
    # All of the quick ones, in queue order, and one task of the slow job: the free slot.
    assert [task.job.id for task in leased] == ["q0"] * 4 + ["q1"] * 4 + ["q2"] * 4 + [
        "slow",
        "q3",
    ]
    worker.prefetch, worker.others = frozenset({"slow"}), 0  # a job id names it too
    assert [task.job.id for task in queue.lease("w", 100, 3)] == ["slow"] * 3
    worker.others = None  # a worker that says nothing of it: as many as it wants
    queue.submit([TaskSpec({"function": "shading:other"}) for _ in range(2)], 4, job_id="o")
    assert len(queue.lease("w", 100, 5)) == 2
