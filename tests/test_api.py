"""The HTTP API refuses bad requests with a 4xx and a reason, and speaks msgpack and JSON."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from buildcat.protocol import MAX_BODY_BYTES
from tests.conftest import Farm, secret_header


def call(
    farm: Farm, method: str, path: str, body: bytes | None = None, content_type: str = ""
) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    headers = {"Content-Type": content_type} if content_type else {}
    connection.request(method, path, body=body, headers={**headers, **secret_header(farm.root)})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    assert response.getheader("Content-Type", "").startswith("application/json")
    return response.status, json.loads(payload)


def test_json_is_accepted_and_served(farm: Farm) -> None:
    body = json.dumps({"tasks": [{"payload": {"function": "math:sqrt", "args": [4]}}]})
    status, reply = call(farm, "POST", "/api/v1/jobs", body.encode(), "application/json")
    assert status == 201
    status, job = call(farm, "GET", f"/api/v1/jobs/{reply['id']}")
    assert status == 200
    assert job["state"] == "queued"
    assert job["tasks"] == {"queued": 1, "leased": 0, "done": 0, "failed": 0, "cancelled": 0}


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"\xc1\xff", "application/msgpack", "malformed msgpack"),
        (b"{not json", "application/json", "malformed JSON"),
        (msgpack.packb([1, 2]), "application/msgpack", "must be a map"),
        (msgpack.packb({"tasks": "nope"}), "application/msgpack", "'tasks' must be a list"),
        (msgpack.packb({"tasks": []}), "application/msgpack", "at least one task"),
        (msgpack.packb({"tasks": [{"payload": {}}]}), "application/msgpack", "function"),
        (
            msgpack.packb({"tasks": [{"payload": {"function": "m:f"}}], "priority": "high"}),
            "application/msgpack",
            "'priority' must be a number",
        ),
        (
            msgpack.packb({"tasks": [{"payload": {"function": "m:f"}, "depends": [3]}]}),
            "application/msgpack",
            "may depend only on tasks listed before it",
        ),
        (
            msgpack.packb({"tasks": [{"payload": {"function": "m:f"}}], "kind": "teapot"}),
            "application/msgpack",
            "unknown job kind",
        ),
        (  # one task of a python job naming a kind of its own that does not exist
            msgpack.packb(
                {
                    "tasks": [
                        {"payload": {"function": "m:f"}},
                        {"payload": {"function": "m:f", "kind": "teapot"}},
                    ]
                }
            ),
            "application/msgpack",
            "task 1: unknown task kind 'teapot'",
        ),
        (  # a task that names the blender kind is checked as a render, in a python job
            msgpack.packb({"tasks": [{"payload": {"function": "m:f", "kind": "blender"}}]}),
            "application/msgpack",
            "task 0: 'output'",
        ),
        (b"x", "text/plain", "unsupported content type"),
        pytest.param(b"[" * 5000 + b"]" * 5000, "application/json", "nested deeper", id="deep"),
        pytest.param(b"[" * 100 + b"]" * 100, "application/json", "nested deeper", id="deep100"),
        (
            msgpack.packb({"tasks": [{"payload": {"function": "../../etc/x.py:f"}}]}),
            "application/msgpack",
            "escapes the farm root",
        ),
    ],
)
def test_bad_submissions_get_400_with_a_reason(
    farm: Farm, body: bytes, content_type: str, reason: str
) -> None:
    status, reply = call(farm, "POST", "/api/v1/jobs", body, content_type)
    assert status == 400
    assert reason in str(reply["error"])
    assert farm.client().jobs() == []


def test_oversized_body_is_413(farm: Farm) -> None:
    status, reply = call(
        farm, "POST", "/api/v1/jobs", b"\x00" * (MAX_BODY_BYTES + 1), "application/msgpack"
    )
    assert status == 413
    assert reply["error"] == (
        "the request body is larger than 33,554,432 bytes: split the job or put bulk data in "
        "files under the farm root"
    )
    assert farm.client().jobs() == []


@pytest.mark.parametrize(
    ("method", "path", "reason"),
    [
        ("GET", "/api/v1/jobs/nosuchjob", "no job 'nosuchjob'"),
        ("GET", "/api/v1/jobs/nosuchjob/results", "no job 'nosuchjob'"),
        ("POST", "/api/v1/jobs/nosuchjob/cancel", "no job 'nosuchjob'"),
        ("GET", "/api/v1/tasks/nosuchjob.0", "no job 'nosuchjob'"),
        ("POST", "/api/v1/workers/w-nobody/lease", "unknown worker 'w-nobody': register again"),
        ("GET", "/api/v2/jobs", "no such route: GET /api/v2/jobs"),
    ],
)
def test_unknown_ids_and_routes_are_404(farm: Farm, method: str, path: str, reason: str) -> None:
    status, reply = call(farm, method, path)
    assert status == 404
    assert reply["error"] == reason


def test_wait_timeout_must_be_a_number(farm: Farm) -> None:
    job = farm.client().submit("math:sqrt", 4)
    status, reply = call(farm, "GET", f"/api/v1/jobs/{job.id}/wait?timeout=soon")
    assert status == 400
    assert reply["error"] == "timeout must be a number of seconds"


def test_server_keeps_serving_after_bad_requests(farm: Farm) -> None:
    for body in (b"\xc1", b"\x00" * 100, msgpack.packb({"tasks": [None]})):
        status, _ = call(farm, "POST", "/api/v1/jobs", body, "application/msgpack")
        assert status == 400
    farm.start_worker()
    assert farm.client().submit("math:sqrt", 16).results() == [4.0]


def test_unknown_route_names_itself(farm: Farm) -> None:
    status, reply = call(farm, "GET", "/api/v1/nothing-here")
    assert status == 404
    assert reply["error"] == "no such route: GET /api/v1/nothing-here"
    status, reply = call(farm, "DELETE", "/api/v1/jobs")
    assert status == 405
    assert "not allowed" in str(reply["error"])


def test_a_broken_root_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "not-there"
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    blocked = tmp_path / "root"
    blocked.mkdir()
    (blocked / ".buildcat").write_text("a file where the state folder goes")
    for root, complaint in (
        (missing, "does not exist"),
        (a_file, "is a file"),  # click's own usage error, exit 2
        (blocked, "cannot create the state folder"),
    ):
        started = subprocess.run(
            [sys.executable, "-m", "buildcat", "server", "--port", "0", "--root", str(root)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode != 0
        assert complaint in started.stderr, started.stderr
        assert "Traceback" not in started.stderr
        if root != a_file:
            assert len(started.stderr.strip().splitlines()) == 1


def test_an_unknown_state_filter_is_refused(farm: Farm) -> None:
    farm.client().submit("math:sqrt", 4)
    status, reply = call(farm, "GET", "/api/v1/jobs?state=bogus")
    assert status == 400
    assert reply["error"] == (
        "state must be one of queued, running, paused, done, failed, cancelled, not 'bogus'"
    )
    status, reply = call(farm, "GET", "/api/v1/jobs?state=queued")
    assert status == 200 and len(reply["jobs"]) == 1  # type: ignore[arg-type]
