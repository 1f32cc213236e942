"""A refused request changes nothing: the server checks, encodes and journals a change before
it applies it, so a 4xx or a 503 leaves the queue (in memory and after a restart) as it was,
and no member input is answered 5xx."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgpack
import pytest

import buildcat
from buildcat import launch
from tests.conftest import Farm, secret_header
from tests.test_journal import prlimit_fsize

HERE = Path(__file__).parent
MSGPACK, JSON = "application/msgpack", "application/json"
FUNCTION = "farm_jobs:square"


def call(
    farm: Farm,
    method: str,
    path: str,
    body: Any = None,
    *,
    content_type: str = JSON,
    accept: str = JSON,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """Send by hand what no client of ours would; the status and the decoded reply."""
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    try:
        data = raw
        if data is None and body is not None:
            data = json.dumps(body).encode() if content_type == JSON else msgpack.packb(body)
        headers = {"Content-Type": content_type, "Accept": accept, **secret_header(farm.root)}
        connection.request(method, quote("/api/v1" + path, safe="/?=&"), body=data, headers=headers)
        response = connection.getresponse()
        reply = response.read()
        kind = response.getheader("Content-Type", "")
        decoded = msgpack.unpackb(reply, strict_map_key=False) if MSGPACK in kind else None
        if decoded is None:
            try:
                decoded = json.loads(reply)
            except ValueError:
                decoded = reply.decode(errors="replace")
        return response.status, decoded
    finally:
        connection.close()


def register(farm: Farm, name: str = "by-hand") -> str:
    status, reply = call(farm, "POST", "/workers", {"name": name})
    assert status == 201, reply
    return str(reply["id"])


def submit(farm: Farm, *args: Any) -> str:
    body = {"tasks": [{"payload": {"function": FUNCTION, "args": [a]}} for a in args]}
    status, reply = call(farm, "POST", "/jobs", body)
    assert status == 201, reply
    return str(reply["id"])


def job_ids(farm: Farm) -> list[str]:
    status, reply = call(farm, "GET", "/jobs")
    assert status == 200, reply
    return [job["id"] for job in reply["jobs"]]


def restart(farm: Farm) -> None:
    assert farm.server is not None
    launch.stop(farm.server)
    farm.server = None
    farm.start_server(port=farm.port)


@pytest.mark.parametrize(
    "body",
    [
        {"priority": 10**20, "tasks": [{"payload": {"function": FUNCTION, "args": [1]}}]},
        {"tasks": [{"payload": {"function": FUNCTION, "args": [10**30]}}]},
        {"meta": {"frames": 2**64}, "tasks": [{"payload": {"function": FUNCTION, "args": [1]}}]},
        {"common": {"x": -(2**70)}, "tasks": [{"payload": {"function": FUNCTION}}]},
    ],
    ids=["priority", "args", "meta", "common"],
)
def test_a_json_submit_with_an_integer_above_64_bits_queues_nothing(
    farm: Farm, body: dict[str, Any]
) -> None:
    kept = submit(farm, 3)
    status, reply = call(farm, "POST", "/jobs", body)
    assert status == 400, reply
    assert job_ids(farm) == [kept]
    assert "64 bits" in reply["error"]
    restart(farm)
    assert job_ids(farm) == [kept]


def test_a_lease_reply_that_cannot_be_encoded_leaves_the_task_queued(farm: Farm) -> None:
    """A payload with a bytes map key travels as msgpack but not as JSON: a worker that asks
    for JSON is refused the task, which stays queued for a worker that can take it."""
    payload = {"function": FUNCTION, "args": [{b"raw": 1}]}
    status, reply = call(
        farm, "POST", "/jobs", {"tasks": [{"payload": payload}]}, content_type=MSGPACK
    )
    assert status == 201, reply
    job = reply["id"]
    worker = register(farm)
    status, reply = call(farm, "POST", f"/workers/{worker}/lease", {"want": 1})
    assert 400 <= status < 500, (status, reply)
    assert "JSON" in reply["error"]
    status, tasks = call(farm, "GET", f"/jobs/{job}/tasks")
    assert [(t["state"], t["attempts"], t["worker"]) for t in tasks["tasks"]] == [
        ("queued", 0, None)
    ]
    assert call(farm, "GET", f"/jobs/{job}")[1]["state"] == "queued"
    # Heartbeats of that worker hold nothing; a worker speaking msgpack takes it.
    status, reply = call(farm, "POST", f"/workers/{worker}/report", {})
    assert status == 200, reply
    status, reply = call(farm, "POST", f"/workers/{worker}/lease", {"want": 1}, accept=MSGPACK)
    assert status == 200 and [t["id"] for t in reply["tasks"]] == [f"{job}.0"], reply


def test_submits_refused_503_by_a_failing_journal_are_not_in_memory(jobs_farm: Farm) -> None:
    farm = jobs_farm
    journal = farm.root / ".buildcat" / "journal.bin"
    client = farm.client()
    payload = "x" * 2000
    acknowledged = [client.submit("farm_jobs:echo", payload).id for _ in range(2)]
    assert farm.server is not None
    prlimit_fsize(farm.server.pid, str(journal.stat().st_size + 1000))
    for _ in range(5):
        with pytest.raises(buildcat.RequestRejected) as refused:
            client.submit("farm_jobs:echo", payload)
        assert refused.value.status == 503
    # Nothing refused is queued: no worker would run it, no listing shows it.
    assert [job["id"] for job in client.jobs()] == acknowledged
    prlimit_fsize(farm.server.pid, "unlimited")
    acknowledged.append(client.submit("farm_jobs:echo", payload).id)
    farm.start_worker("--no-blender")
    for job_id in acknowledged:
        assert client.job(job_id).results() == [payload]
    assert [job["id"] for job in client.jobs()] == acknowledged


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ({"worker": 10**30}, JSON),
        ({"worker": 12345}, MSGPACK),
        ({"worker": "w" * 300}, MSGPACK),
    ],
    ids=["huge-int", "int", "long-name"],
)
@pytest.mark.parametrize("action", ["pause", "cancel", "unblock"])
def test_a_job_action_with_a_bad_worker_field_changes_nothing(
    farm: Farm, action: str, body: dict[str, Any], content_type: str
) -> None:
    job = submit(farm, 1, 2)
    status, reply = call(farm, "POST", f"/jobs/{job}/{action}", body, content_type=content_type)
    _, view = call(farm, "GET", f"/jobs/{job}")
    assert view["state"] == "queued"
    assert status == 400, reply
    assert "'worker'" in reply["error"]
    restart(farm)
    _, view = call(farm, "GET", f"/jobs/{job}")
    assert view["state"] == "queued"


@pytest.mark.parametrize("odd", ["{job}.²", "{job}." + "9" * 5000, "{job}.-1", "{job}.٣"])
def test_a_report_naming_a_malformed_task_id_applies_nothing(farm: Farm, odd: str) -> None:
    job = submit(farm, 1, 2)
    worker = register(farm)
    status, reply = call(farm, "POST", f"/workers/{worker}/lease", {"want": 2}, accept=MSGPACK)
    first = reply["tasks"][0]["id"]
    done = [{"id": first, "ok": True, "result": 1}, {"id": odd.format(job=job), "ok": True}]
    status, reply = call(farm, "POST", f"/workers/{worker}/report", {"done": done})
    assert status == 400, (status, reply)
    assert "task id" in reply["error"]
    status, tasks = call(farm, "GET", f"/jobs/{job}/tasks")
    assert [t["state"] for t in tasks["tasks"]] == ["leased", "leased"]
    # A well-formed id of a task the server does not know is discarded, as documented.
    unknown = [{"id": first, "ok": True, "result": 1}, {"id": f"{job}.7", "ok": True}]
    status, reply = call(farm, "POST", f"/workers/{worker}/report", {"done": unknown})
    assert status == 200 and reply["accepted"] == [first], reply
    assert reply["discarded"] == [f"{job}.7"]


HUGE = "1" + "0" * 400  # an integer JSON carries and no float holds


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        ("POST", "/workers/{worker}/lease", '{"want": 1, "wait": HUGE}'),
        ("POST", "/workers/{worker}/watch", '{"wait": HUGE}'),
        ("POST", "/workers/{worker}/watch", '{"wait": 1e400}'),
        ("POST", "/workers/{worker}/report", '{"progress": [{"id": "{task}", "fraction": HUGE}]}'),
        (
            "POST",
            "/workers/{worker}/report",
            '{"done": [{"id": "{task}", "ok": true, "seconds": HUGE}]}',
        ),
        (
            "POST",
            "/workers/{worker}/report",
            '{"done": [{"id": "{task}", "ok": true, "started_at": HUGE}]}',
        ),
        ("POST", "/jobs", '{"timeout": HUGE, "tasks": [{"payload": {"function": "m:f"}}]}'),
        ("POST", "/jobs", '{"timeout": 1e400, "tasks": [{"payload": {"function": "m:f"}}]}'),
        ("POST", "/jobs", '{"max_attempts": HUGE, "tasks": [{"payload": {"function": "m:f"}}]}'),
        ("POST", "/jobs/{job}/priority", '{"priority": HUGE}'),
        ("POST", "/workers", '{"slots": HUGE}'),
        ("GET", "/tasks/{job}.²", ""),
        ("GET", "/tasks/{job}." + "9" * 5000, ""),
        ("GET", "/jobs/{job}/wait?timeout=1e400", ""),
        ("GET", "/jobs/{job}/wait?timeout=nan", ""),
    ],
)
def test_huge_numbers_and_odd_task_ids_answer_4xx(
    farm: Farm, method: str, path: str, raw: str
) -> None:
    job = submit(farm, 1)
    worker = register(farm)
    status, reply = call(farm, "POST", f"/workers/{worker}/lease", {"want": 1}, accept=MSGPACK)
    task = reply["tasks"][0]["id"]
    before = call(farm, "GET", f"/jobs/{job}/tasks")[1]
    text = raw.replace("HUGE", HUGE).replace("{task}", task)
    status, reply = call(
        farm, method, path.format(job=job, worker=worker), raw=text.encode() if text else None
    )
    assert 400 <= status < 500, (status, reply)
    assert reply["error"], reply
    assert call(farm, "GET", f"/jobs/{job}/tasks")[1] == before


# ---- bad data does not get in (the JSON views stay valid JSON) --------------------------------


def strict_json(farm: Farm, path: str) -> Any:
    """GET as JSON and parse it as a browser would: NaN and Infinity are not JSON."""
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    try:
        connection.request("GET", "/api/v1" + path, headers=secret_header(farm.root))
        response = connection.getresponse()
        text = response.read()
        assert response.status == 200, text[:300]

        def refuse(constant: str) -> Any:
            raise AssertionError(f"{constant} in the JSON of {path}")

        return json.loads(text, parse_constant=refuse)
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({"fps": float("nan")}, "'meta' holds nan"),
        ({"fps": float("inf")}, "'meta' holds inf"),
        ({"deep": {"x": [1.0, float("-inf")]}}, "'meta' holds -inf"),
        ({b"raw": 1}, "'meta' has a key that is not a string: b'raw'"),
        ({"deep": [{7: "seven"}]}, "'meta' has a key that is not a string: 7"),
    ],
    ids=["nan", "inf", "nested-inf", "bytes-key", "int-key"],
)
def test_meta_with_nan_infinity_or_a_bytes_key_is_refused_naming_the_field(
    farm: Farm, meta: dict[Any, Any], reason: str
) -> None:
    body = {"meta": meta, "tasks": [{"payload": {"function": FUNCTION, "args": [1]}}]}
    status, reply = call(farm, "POST", "/jobs", body, content_type=MSGPACK)
    jobs = strict_json(farm, "/jobs")["jobs"]
    assert jobs == []
    assert status == 400, reply
    assert reason in reply["error"]


def test_a_nan_progress_never_reaches_the_json_api(farm: Farm) -> None:
    job = submit(farm, 1)
    worker = register(farm)
    status, reply = call(farm, "POST", f"/workers/{worker}/lease", {"want": 1}, accept=MSGPACK)
    task = reply["tasks"][0]["id"]
    for fraction, expected in ((float("nan"), 0.0), (0.5, 0.5), (float("inf"), 0.5)):
        progress = [{"id": task, "fraction": fraction, "message": "rendering"}]
        status, reply = call(
            farm, "POST", f"/workers/{worker}/report", {"progress": progress}, content_type=MSGPACK
        )
        assert status == 200, reply
        [view] = strict_json(farm, f"/jobs/{job}/tasks")["tasks"]
        assert view["progress"] == expected
        assert view["progress_message"] == "rendering"
        assert strict_json(farm, f"/jobs/{job}")["progress"] == expected
        strict_json(farm, "/jobs")
        strict_json(farm, f"/tasks/{task}")


# ---- what one request may add to the journal is bounded ----------------------------------------


def journal_size(farm: Farm) -> int:
    return (farm.root / ".buildcat" / "journal.bin").stat().st_size


@pytest.mark.parametrize("action", ["cancel", "pause", "resume", "retry", "unblock"])
def test_a_huge_worker_field_is_refused_and_never_journaled(farm: Farm, action: str) -> None:
    """The dashboard's cookie may send these: 6 bodies of 30 MB grew the journal by 180 MB."""
    job = submit(farm, 1)
    before = journal_size(farm)
    huge = {"worker": "w" * 1_000_000}
    status, reply = call(farm, "POST", f"/jobs/{job}/{action}", huge, content_type=MSGPACK)
    assert journal_size(farm) == before
    assert status == 400, reply
    assert "'worker' must be a worker name of at most 256 characters" in reply["error"]
    # A name that fits is still not journaled, except by unblock, which needs it.
    status, reply = call(farm, "POST", f"/jobs/{job}/pause", {"worker": "w" * 256})
    assert status == 200, reply
    assert journal_size(farm) - before < 200


def test_a_report_journals_only_the_tail_of_a_huge_log(farm: Farm) -> None:
    submit(farm, 1)
    worker = register(farm)
    status, reply = call(farm, "POST", f"/workers/{worker}/lease", {"want": 1}, accept=MSGPACK)
    task = reply["tasks"][0]["id"]
    before = journal_size(farm)
    text = "x" * 5_000_000 + "the end\n"
    done = [{"id": task, "ok": True, "result": 1, "log": text, "traceback": text}]
    status, reply = call(
        farm, "POST", f"/workers/{worker}/report", {"done": done}, content_type=MSGPACK
    )
    assert status == 200 and reply["accepted"] == [task], reply
    assert journal_size(farm) - before < 64 * 1024
    status, view = call(farm, "GET", f"/tasks/{task}")
    assert view["log"].endswith("the end\n")
    restart(farm)
    status, view = call(farm, "GET", f"/tasks/{task}")
    assert view["state"] == "done" and view["log"].endswith("the end\n")


def test_json_views_of_results_json_cannot_carry_are_valid_json(farm: Farm) -> None:
    """A result may hold anything msgpack carries; the JSON views show it (bytes keys as
    text, NaN as null) instead of answering 500."""
    job = submit(farm, 1)
    worker = register(farm)
    status, reply = call(farm, "POST", f"/workers/{worker}/lease", {"want": 1}, accept=MSGPACK)
    task = reply["tasks"][0]["id"]
    result = {b"raw": float("nan"), 7: [float("inf")], "fine": 1}
    done = [{"id": task, "ok": True, "result": result}]
    status, reply = call(
        farm, "POST", f"/workers/{worker}/report", {"done": done}, content_type=MSGPACK
    )
    assert status == 200 and reply["accepted"] == [task], reply
    expected = {"raw": None, "7": [None], "fine": 1}
    assert strict_json(farm, f"/jobs/{job}/results")["results"] == [expected]
    assert strict_json(farm, f"/tasks/{task}")["result"] == expected
    # Asked for msgpack, the result comes back exactly.
    status, reply = call(farm, "GET", f"/jobs/{job}/results", accept=MSGPACK)
    assert reply["results"][0][b"raw"] != reply["results"][0][b"raw"]  # NaN
    assert reply["results"][0][7] == [float("inf")]


def test_a_report_refused_503_by_a_failing_journal_changes_no_task(farm: Farm) -> None:
    """The worker keeps what the server did not acknowledge and reports it again: the task
    must still be its, leased, not done in memory only (and run again after a restart)."""
    journal = farm.root / ".buildcat" / "journal.bin"
    job = submit(farm, 1, 2)
    worker = register(farm)
    status, reply = call(farm, "POST", f"/workers/{worker}/lease", {"want": 2}, accept=MSGPACK)
    first, second = (task["id"] for task in reply["tasks"])
    assert farm.server is not None
    prlimit_fsize(farm.server.pid, str(journal.stat().st_size + 100))
    done = [
        {"id": first, "ok": True, "result": "x" * 1000},
        {"id": second, "ok": False, "error": "broke"},
    ]
    status, reply = call(farm, "POST", f"/workers/{worker}/report", {"done": done})
    assert status == 503, reply
    _, tasks = call(farm, "GET", f"/jobs/{job}/tasks")
    assert [(t["state"], t["failures"]) for t in tasks["tasks"]] == [("leased", 0), ("leased", 0)]
    prlimit_fsize(farm.server.pid, "unlimited")
    status, reply = call(farm, "POST", f"/workers/{worker}/report", {"done": done})
    assert status == 200 and reply["accepted"] == [first, second], reply
    restart(farm)
    _, tasks = call(farm, "GET", f"/jobs/{job}/tasks")
    assert [(t["state"], t["failures"]) for t in tasks["tasks"]] == [("done", 0), ("queued", 1)]
