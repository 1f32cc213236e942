"""Big task results live in files under the state folder and stream to the client
(``server/resultstore.py``): more than a request's 32 MiB fetched whole, kept out of the
journal and the snapshot, across restarts; deleted with their job; a damaged file is an
error for its task only."""

from __future__ import annotations

import http.client
import json
import stat
from pathlib import Path

import pytest

from buildcat.client import ResultUnavailable
from buildcat.protocol import MAX_BODY_BYTES
from tests.conftest import Farm, secret_header, wait_for
from tests.test_archive import kill_and_restart

MIB = 1024 * 1024
SNAPSHOT_OFTEN = ("--snapshot-every", "10")


def result_files(farm: Farm, job_id: str) -> list[Path]:
    folder = farm.root / ".buildcat" / "results" / job_id
    return sorted(folder.glob("*.bin")) if folder.is_dir() else []


def state_size(farm: Farm, pattern: str) -> int:
    return sum(path.stat().st_size for path in (farm.root / ".buildcat").glob(pattern))


def get_json(farm: Farm, path: str) -> tuple[int, object]:
    """A GET as a script with curl makes it: JSON asked for."""
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=60)
    try:
        connection.request(
            "GET",
            f"/api/v1{path}",
            headers={**secret_header(farm.root), "Accept": "application/json"},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("farm", [SNAPSHOT_OFTEN], indirect=True)
def test_results_over_a_request_size_are_files_fetched_whole_and_survive_a_restart(
    jobs_farm: Farm,
) -> None:
    farm = jobs_farm
    farm.start_worker()
    client = farm.client()
    tasks = 40  # 40 MiB of results: more than the 32 MiB a request may carry
    assert tasks * MIB > MAX_BODY_BYTES
    job = client.map("farm_jobs:big_result", [1] * tasks)
    job.wait(timeout=120)

    results = job.results()
    assert len(results) == tasks and all(r == b"x" * MIB for r in results)
    files = result_files(farm, job.id)
    assert len(files) == tasks
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)
    # The journal and the snapshot hold references, not the 40 MiB.
    assert state_size(farm, "journal*.bin") + state_size(farm, "snapshot*.bin") < MIB

    assert list(job.iter_results(offset=38)) == [b"x" * MIB] * 2
    for first in job.iter_results():  # a reader that stops early: the stream is let go
        assert first == b"x" * MIB
        break
    assert client.request("GET", f"/tasks/{job.id}.7")["result"] == b"x" * MIB

    kill_and_restart(farm, *SNAPSHOT_OFTEN)
    again = farm.client().job(job.id)
    assert again.results() == results
    assert again.result(39) == b"x" * MIB

    farm.client().delete(job.id)
    wait_for(lambda: not (farm.root / ".buildcat" / "results" / job.id).exists())
    assert "Traceback" not in farm.log_text("server")


def test_a_damaged_or_missing_result_file_is_an_error_for_its_task_only(jobs_farm: Farm) -> None:
    farm = jobs_farm
    farm.start_worker()
    client = farm.client()
    job = client.submit_tasks(
        [{"payload": {"args": [n % 2]}} for n in range(6)],  # 0 MiB (b"") or 1 MiB
        common={"function": "farm_jobs:big_result"},
    )
    job.wait(timeout=60)
    files = {int(path.name.split("-")[0]): path for path in result_files(farm, job.id)}
    assert sorted(files) == [1, 3, 5]  # the empty results stay in the task records
    with open(files[3], "r+b") as handle:
        handle.truncate(1000)
    files[5].unlink()

    with pytest.raises(ResultUnavailable) as caught:
        job.results()
    assert sorted(caught.value.problems) == [3, 5]
    assert f"task {job.id}.3" in caught.value.problems[3]
    assert "damaged" in caught.value.problems[3] and "missing" in caught.value.problems[5]
    assert job.result(1) == b"x" * MIB and job.result(0) == b""
    with pytest.raises(ResultUnavailable, match=rf"task {job.id}\.3: .*damaged"):
        job.result(3)
    view = client.request("GET", f"/tasks/{job.id}.3")
    assert view["result"] is None and "damaged" in view["result_error"]

    status, reply = get_json(farm, f"/jobs/{job.id}/results?offset=2&limit=3")
    assert status == 200
    assert isinstance(reply, dict) and reply["offset"] == 2 and reply["total"] == 6
    assert reply["results"][0] == ""
    assert "damaged" in reply["results"][1]["$result-error"]
    assert reply["results"][2] == ""

    # A task run again: its old file goes, the new run's result is a new file.
    client.requeue_task(f"{job.id}.1")
    job.wait(timeout=60)
    assert job.result(1) == b"x" * MIB
    wait_for(lambda: not files[1].exists())
    assert len(result_files(farm, job.id)) == 2  # task 3's damaged file, task 1's new one


def test_small_results_stay_in_the_record_and_come_back_as_returned(jobs_farm: Farm) -> None:
    farm = jobs_farm
    farm.start_worker()
    client = farm.client()
    lookalike = {"$result-file": {"name": "0-0000000000000000.bin", "size": 1, "crc": 0}}
    values = [1, "text", None, {"outputs": ["a.png"]}, lookalike, {"$result-value": 3}]
    job = client.map("farm_jobs:echo", values)
    job.wait(timeout=60)
    assert job.results() == values
    assert job.result(4) == lookalike
    assert result_files(farm, job.id) == []
    status, reply = get_json(farm, f"/jobs/{job.id}/results")
    assert status == 200 and isinstance(reply, dict) and reply["results"] == values
