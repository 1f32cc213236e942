"""Pools, tags and steering workers by name, against a real server and real `farm worker`
processes: tags route jobs, drain, disable, enable, requeue, forget, sleep schedules, and
all of it surviving a server restart."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from buildcat import launch
from buildcat.errors import FarmError
from tests.conftest import Farm, wait_for

NO_BLENDER = "--no-blender"


def view_of(farm: Farm, name: str) -> dict[str, Any]:
    [view] = [w for w in farm.client().workers() if w["name"] == name and w["status"] != "offline"]
    return view


def task_of(farm: Farm, job_id: str, index: int = 0) -> dict[str, Any]:
    return farm.client().task(f"{job_id}.{index}")


def gated_job(farm: Farm, gate: str, **options: Any) -> str:
    job = farm.client().submit_tasks(
        [{"payload": {"function": "farm_jobs:gated", "args": [gate, gate]}}], **options
    )
    return job.id


def one_line_error(result: Any) -> str:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("farm: error: "), result.stderr
    return lines[0]


def restart_server(farm: Farm) -> None:
    assert farm.server is not None
    launch.stop(farm.server)
    farm.start_server(port=farm.port)


def test_tags_route_every_kind_of_submit_to_the_workers_that_have_them(jobs_farm: Farm) -> None:
    jobs_farm.start_worker(NO_BLENDER, "--tags", "gpu,lookdev", name="gpu-box")
    jobs_farm.start_worker(NO_BLENDER, "--tags", "cpu", name="cpu-box")
    jobs_farm.wait_workers(2)
    client = jobs_farm.client()
    python = jobs_farm.cli("submit", "python", "farm_jobs:square", "7", "--requires", "gpu",
                           "--wait", "--json")  # fmt: skip
    assert python.returncode == 0, python.stderr
    command = jobs_farm.cli("submit", "command", "echo frame $FRAME", "--frames", "1-3",
                            "--requires", "cpu", "--wait", "--json")  # fmt: skip
    assert command.returncode == 0, command.stderr
    (jobs_farm.root / "hello.py").write_text("print('hello from a script')\n")
    script = jobs_farm.cli("submit", "script", "hello.py", "--requires", "lookdev", "--wait",
                           "--json")  # fmt: skip
    assert script.returncode == 0, script.stderr
    mapped = client.map("farm_jobs:square", [1, 2, 3, 4], requires=["lookdev"])
    mapped.wait(30)
    routed = {
        json.loads(python.stdout)["id"]: "gpu-box",
        json.loads(command.stdout)["id"]: "cpu-box",
        json.loads(script.stdout)["id"]: "gpu-box",
        mapped.id: "gpu-box",
    }
    for job_id, worker in routed.items():
        tasks = client.job(job_id).tasks()
        assert {task["worker_name"] for task in tasks} == {worker}, (job_id, tasks)
    # A tag nobody has: the job says which.
    nobody = client.map("farm_jobs:square", [1], requires=["fx"])
    waiting = wait_for(lambda: nobody.status().get("waiting"))
    assert "no online worker has fx" in waiting
    listed = jobs_farm.cli("workers")
    assert listed.returncode == 0
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["gpu-box"][3] == "gpu,lookdev" and rows["cpu-box"][3] == "cpu"
    assert view_of(jobs_farm, "gpu-box")["tags"] == ["gpu", "lookdev"]


def test_drain_disable_enable_and_requeue_steer_a_worker_by_name(jobs_farm: Farm) -> None:
    client = jobs_farm.client()
    jobs_farm.start_worker(NO_BLENDER, name="ws-ana")
    jobs_farm.wait_workers(1)
    first = gated_job(jobs_farm, "first")
    jobs_farm.gate("first").wait_started()
    jobs_farm.start_worker(NO_BLENDER, name="rack-1")
    jobs_farm.wait_workers(2)

    # Drain: ws-ana finishes what it runs; the next job goes to rack-1.
    drained = jobs_farm.cli("worker-drain", "ws-ana")
    assert drained.returncode == 0 and "ws-ana draining" in drained.stdout, drained
    second = gated_job(jobs_farm, "second")
    jobs_farm.gate("second").wait_started()
    assert task_of(jobs_farm, second)["worker_name"] == "rack-1"
    jobs_farm.gate("first").open()
    client.job(first).wait(30)
    assert task_of(jobs_farm, first)["worker_name"] == "ws-ana"
    view = wait_for(lambda: (v := view_of(jobs_farm, "ws-ana"))["drained"] and v)
    assert view["status"] == "draining" and view["holding"] == 0 and not view["current"]
    jobs_farm.gate("second").open()
    client.job(second).wait(30)

    # Disable: ws-ana's running task is stopped and requeued, rack-1 finishes it.
    assert client.enable_worker("ws-ana")["status"] in ("idle", "running")
    assert client.drain_worker("rack-1")["status"] == "draining"
    third = gated_job(jobs_farm, "third")
    jobs_farm.gate("third").wait_started()
    assert task_of(jobs_farm, third)["worker_name"] == "ws-ana"
    running = view_of(jobs_farm, "ws-ana")
    assert running["status"] == "running"
    assert running["current"][0]["id"] == f"{third}.0" and running["current"][0]["job"] == third
    client.enable_worker("rack-1")
    disabled = jobs_farm.cli("worker-disable", "ws-ana")
    assert disabled.returncode == 0, disabled.stderr
    assert "ws-ana disabled; 1 task(s) back in the queue" in disabled.stdout
    wait_for(jobs_farm.gate("third").cancelled)  # told to stop, as a cancel is
    wait_for(lambda: task_of(jobs_farm, third)["worker_name"] == "rack-1")
    jobs_farm.gate("third").open()
    client.job(third).wait(30)
    rerun = task_of(jobs_farm, third)
    assert rerun["worker_name"] == "rack-1" and rerun["attempts"] == 1 and rerun["failures"] == 0
    # A disabled worker gets nothing.
    quick = client.map("farm_jobs:square", [1, 2, 3])
    quick.wait(30)
    assert quick.results() == [1, 4, 9]
    assert {t["worker_name"] for t in quick.tasks()} == {"rack-1"}
    assert view_of(jobs_farm, "ws-ana")["status"] == "disabled"

    # Requeue: the task goes back (no attempt lost), the worker stays enabled.
    client.enable_worker("ws-ana")
    client.drain_worker("rack-1")
    fourth = gated_job(jobs_farm, "fourth")
    jobs_farm.gate("fourth").wait_started()
    requeued = jobs_farm.cli("worker-requeue", "ws-ana")
    assert requeued.returncode == 0, requeued.stderr
    assert "1 task(s) back in the queue" in requeued.stdout
    wait_for(jobs_farm.gate("fourth").cancelled)
    assert view_of(jobs_farm, "ws-ana")["enabled"] is True
    jobs_farm.gate("fourth").open()
    client.job(fourth).wait(30)
    again = task_of(jobs_farm, fourth)
    assert again["worker_name"] == "ws-ana" and again["attempts"] == 1 and again["failures"] == 0


def test_forget_refuses_an_online_worker_and_a_forgotten_one_stays_gone(jobs_farm: Farm) -> None:
    process = jobs_farm.start_worker(NO_BLENDER, name="ws-old")
    jobs_farm.wait_workers(1)
    client = jobs_farm.client()
    client.disable_worker("ws-old")
    refused = one_line_error(jobs_farm.cli("worker-forget", "ws-old", "--yes"))
    assert "ws-old" in refused and "stop it first" in refused
    launch.stop(process)
    wait_for(lambda: [w["status"] for w in client.workers()] == ["offline"])
    # Offline and disabled: still listed, and its setting survives a restart.
    restart_server(jobs_farm)
    client = jobs_farm.client()
    [listed] = client.workers()
    assert listed["name"] == "ws-old" and listed["status"] == "offline"
    assert listed["enabled"] is False
    forgot = jobs_farm.cli("worker-forget", "ws-old", "--yes")
    assert forgot.returncode == 0 and "ws-old forgotten" in forgot.stdout, forgot
    assert client.workers() == []
    restart_server(jobs_farm)
    assert jobs_farm.client().workers() == []
    unknown = one_line_error(jobs_farm.cli("worker-forget", "ws-old", "--yes"))
    assert "no worker named 'ws-old'" in unknown


def window_ahead(hours: int) -> tuple[str, float]:
    """A daily one-hour window (UTC) starting ``hours`` whole hours from now: asleep now."""
    start_hour = (time.gmtime().tm_hour + hours) % 24
    spec = f"daily {start_hour:02d}:00-{(start_hour + 1):02d}:00"
    now = time.time()
    wakes = now - now % 3600 + hours * 3600
    return spec, wakes


def test_a_sleeping_worker_gets_nothing_until_its_schedule_is_cleared(jobs_farm: Farm) -> None:
    spec, wakes = window_ahead(2)
    jobs_farm.start_worker(NO_BLENDER, "--schedule", spec, "--timezone", "UTC", name="ws-ana")
    jobs_farm.wait_workers(1)
    client = jobs_farm.client()
    view = view_of(jobs_farm, "ws-ana")
    assert view["status"] == "asleep" and view["asleep"] is True
    assert view["schedule"] == {"spec": spec, "timezone": "UTC", "give_back": False}
    assert view["wakes_at"] == wakes and view["sleeps_at"] is None
    job = client.map("farm_jobs:square", [3])
    waiting = wait_for(lambda: job.status().get("waiting"))
    assert "every online worker is asleep until" in waiting and "(ws-ana)" in waiting
    listed = jobs_farm.cli("workers").stdout
    assert "ws-ana asleep until" in listed
    cleared = jobs_farm.cli("worker-schedule", "ws-ana", "--clear")
    assert cleared.returncode == 0 and "takes work around the clock" in cleared.stdout
    job.wait(30)  # the parked long-poll was served
    assert job.results() == [9]


def test_give_back_requeues_running_tasks_when_asleep_and_settings_survive_a_restart(
    jobs_farm: Farm,
) -> None:
    jobs_farm.start_worker(NO_BLENDER, name="ws-ana")
    jobs_farm.wait_workers(1)
    client = jobs_farm.client()
    job_id = gated_job(jobs_farm, "night")
    jobs_farm.gate("night").wait_started()
    spec, wakes = window_ahead(3)
    set_ = jobs_farm.cli("worker-schedule", "ws-ana", spec, "--timezone", "UTC", "--give-back")
    assert set_.returncode == 0, set_.stderr
    assert f"ws-ana: {spec} (UTC); asleep until" in set_.stdout
    wait_for(jobs_farm.gate("night").cancelled)  # the schedule ended: given back
    wait_for(lambda: task_of(jobs_farm, job_id)["state"] == "queued")
    assert task_of(jobs_farm, job_id)["attempts"] == 0
    jobs_farm.start_worker(NO_BLENDER, name="rack-1")
    wait_for(lambda: task_of(jobs_farm, job_id)["worker_name"] == "rack-1")
    client.drain_worker("rack-1")
    restart_server(jobs_farm)
    jobs_farm.wait_workers(2)  # both registered again
    views = {w["name"]: w for w in jobs_farm.client().workers() if w["status"] != "offline"}
    assert views["ws-ana"]["schedule"] == {"spec": spec, "timezone": "UTC", "give_back": True}
    assert views["ws-ana"]["status"] == "asleep" and views["ws-ana"]["wakes_at"] == wakes
    assert views["rack-1"]["draining"] is True
    jobs_farm.gate("night").open()
    jobs_farm.client().job(job_id).wait(30)  # rack-1 finishes what it had, drained or not


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("worker-drain", "nobody"), "no worker named 'nobody'"),
        (("worker-disable", "nobody"), "no worker named 'nobody'"),
        (("worker-enable", "nobody"), "no worker named 'nobody'"),
        (("worker-requeue", "nobody"), "no worker named 'nobody'"),
        (("worker-schedule", "nobody", "daily 09:00-17:00"), "no worker named 'nobody'"),
        (("worker-schedule", "nobody", "someday 09:00-17:00"), "unknown day 'someday'"),
        (("worker-schedule", "nobody", "daily 09:00-17:00", "--timezone", "Mars/Base"),
         "unknown time zone"),
        (("worker-schedule", "nobody"), "or --clear"),
        (("worker", "--schedule", "mon 9-5"), "'9' is not a time"),
    ],
)  # fmt: skip
def test_cli_mistakes_are_one_line(farm: Farm, args: tuple[str, ...], says: str) -> None:
    assert says in one_line_error(farm.cli(*args))


def test_a_bad_schedule_over_the_api_is_a_400_naming_the_bad_part(jobs_farm: Farm) -> None:
    jobs_farm.start_worker(NO_BLENDER, name="ws-ana")
    jobs_farm.wait_workers(1)
    client = jobs_farm.client()
    with pytest.raises(FarmError, match="schedule part 'sunday 00:00-24:00': unknown day"):
        client.set_worker_schedule("ws-ana", "mon-fri 19:00-08:00; sunday 00:00-24:00")
    assert view_of(jobs_farm, "ws-ana")["schedule"] is None  # nothing changed
