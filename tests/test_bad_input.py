"""Hypothesis throws malformed and hostile requests at a real server: every answer is a 4xx
with a reason (never a 5xx, never a hang), or a 201 for a request that was valid after
all, whose job or worker exists as asked; a normal job still runs correctly afterwards."""

from __future__ import annotations

import http.client
import json
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import buildcat
from buildcat import launch, protocol
from buildcat.errors import FarmError
from tests.conftest import secret_header

HERE = Path(__file__).parent
MSGPACK, JSON = "application/msgpack", "application/json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    root = tmp_path_factory.mktemp("bad-input-root")
    shutil.copy(HERE / "farm_jobs.py", root / "farm_jobs.py")
    with open(root / "server.log", "ab") as log:
        process, port = launch.start_server(root, "--no-discovery", log=log)
        try:
            yield root, port
        finally:
            assert process.poll() is None, "the server died"
            launch.stop(process)


def send(
    server: tuple[Path, int], method: str, path: str, body: bytes, content_type: str
) -> tuple[int, Any]:
    """The status and the decoded JSON reply."""
    root, port = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": content_type, "Accept": JSON, **secret_header(root)}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        reply = response.read()
        assert response.getheader("Content-Type", "").startswith(JSON)
        return response.status, json.loads(reply)
    finally:
        connection.close()


def check_answer(server: tuple[Path, int], route: str, sent: Any, status: int, reply: Any) -> None:
    """A 4xx says why; a 2xx made exactly what the request asked for."""
    if 400 <= status < 500:
        assert isinstance(reply["error"], str) and reply["error"], reply
        return
    assert status == 201, (status, reply)
    assert isinstance(sent, dict), "only a map can be a valid request"
    if route == "/jobs":
        code, job = send(server, "GET", f"/api/v1/jobs/{reply['id']}", b"", JSON)
        assert code == 200
        assert job["total"] == reply["tasks"] == len(sent["tasks"])
        assert job["kind"] == sent.get("kind", "python")
    else:
        assert route == "/workers"
        code, listing = send(server, "GET", "/api/v1/workers", b"", JSON)
        [worker] = [w for w in listing["workers"] if w["id"] == reply["id"]]
        assert worker["name"] == str(sent.get("name", "worker"))[:200]
        assert worker["slots"] == sent.get("slots", 1)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=20),
    st.binary(max_size=20),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = ["tasks", "payload", "function", "args", "kwargs", "depends", "kind", "priority",
        "requires", "max_attempts", "timeout", "common", "meta", "name", "slots",
        "capabilities", "info", "done", "progress", "release", "id", "ok", "result",
        "step", "scene", "frames", "output", "settings", "parts", "frame", "format"]  # fmt: skip
hostile_strings = st.sampled_from(
    [
        "/etc/passwd.py:f",
        "../../x.py:f",
        "a/../../b.py:f",
        "C:\\x.py:f",
        "m:f",
        "1-",
        "0-99999999999",
        "x" * 300,
        "\x00",
        "shots/../../../etc.blend",
        "",
        "a:b:c",
    ]
)
structured = st.recursive(
    st.one_of(scalars, hostile_strings),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)
    ),
    max_leaves=25,
)
SPECIAL_BODIES = [
    b"\xdd\x7f\xff\xff\xff",  # msgpack array claiming 2 billion items
    b"\xdf\x7f\xff\xff\xff",  # map, same
    b"\xdb\x7f\xff\xff\xff",  # str of 2 GB
    b"\x91" * 100_000,  # 100,000 levels of nesting
    b"[" * 100_000,
]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    route=st.sampled_from(["/jobs", "/workers", "/workers/w-none/report", "/jobs/x/cancel"]),
    body=st.one_of(
        st.binary(max_size=200),
        structured.map(lambda v: msgpack.packb(v, use_bin_type=True)),
        st.sampled_from(SPECIAL_BODIES),
    ),
    content_type=st.sampled_from([MSGPACK, JSON, "text/plain"]),
)
def test_garbage_gets_a_4xx(
    server: tuple[Path, int], route: str, body: bytes, content_type: str
) -> None:
    status, reply = send(server, "POST", "/api/v1" + route, body, content_type)
    try:
        sent = protocol.decode(body, content_type) if body else {}  # no body: the defaults
    except FarmError:
        sent = None
    check_answer(server, route, sent, status, reply)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=structured, as_json=st.booleans())
def test_structured_nonsense_submissions_get_a_4xx_or_a_valid_job(
    server: tuple[Path, int], body: Any, as_json: bool
) -> None:
    if as_json:
        try:
            data = json.dumps(body, default=lambda b: b.hex()).encode()
        except ValueError:
            return
        status, reply = send(server, "POST", "/api/v1/jobs", data, JSON)
        sent = json.loads(data)
    else:
        data = msgpack.packb(body, use_bin_type=True)
        status, reply = send(server, "POST", "/api/v1/jobs", data, MSGPACK)
        sent = body
    assert status in (201, 400, 413), (status, reply)
    check_answer(server, "/jobs", sent, status, reply)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    job=st.text(min_size=1, max_size=40).filter(
        lambda t: "/" not in t and "?" not in t and "#" not in t
    )
)
def test_unknown_job_ids_are_404(server: tuple[Path, int], job: str) -> None:
    quoted = urllib.parse.quote(job, safe="")
    for path in (
        f"/api/v1/jobs/{quoted}",
        f"/api/v1/jobs/{quoted}/results",
        f"/api/v1/tasks/{quoted}",
    ):
        status, reply = send(server, "GET", path, b"", JSON)
        assert status in (404, 400), (path, status)
        assert reply["error"].startswith(("no job", "no task", "no such route")), reply


def test_oversized_body_is_refused(server: tuple[Path, int]) -> None:
    status, reply = send(server, "POST", "/api/v1/jobs", b"\x90" * (33 * 1024 * 1024), MSGPACK)
    assert status == 413
    assert "larger than 33,554,432 bytes" in reply["error"]


def test_a_normal_job_runs_afterwards(server: tuple[Path, int]) -> None:
    root, port = server
    with open(root / "worker.log", "ab") as log:
        worker = launch.start_worker(port, root, "--no-blender", log=log)
        try:
            farm = buildcat.connect("127.0.0.1", port, root)
            # Cancel whatever the fuzzing queued, then run a real job to the end.
            for job in farm.jobs():
                if job["state"] in ("queued", "running"):
                    farm.job(job["id"]).cancel()
            assert farm.map("farm_jobs:square", range(20)).results() == [x * x for x in range(20)]
            farm.close()
        finally:
            launch.stop(worker)
