"""Hypothesis sends random bodies (JSON and msgpack, plausible and absurd) to every route of a
real server with a journal, and checks each answer against the queue it left:

- never a 5xx, never a dropped connection;
- a 4xx (or 503) leaves the queue exactly as it was (a digest of every job, task, result
  and worker, without the clocks and the progress of running tasks, which are not kept);
- every 2xx change survives a restart: the digest after a restart is the one before.
"""

from __future__ import annotations

import http.client
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from buildcat import launch
from tests.conftest import secret_header, unused_port

HERE = Path(__file__).parent
MSGPACK, JSON = "application/msgpack", "application/json"
EXAMPLES = 200

#: What a restart (or a refused lease) changes without changing the queue: clocks, and the
#: progress of running tasks (reported often, never journaled).
EPHEMERAL = {
    "last_seen", "registered_at", "leased_at", "worker_name", "progress",
    "progress_message", "waiting",
}  # fmt: skip


class Server:
    def __init__(self, root: Path, log: Any) -> None:
        self.root, self.log = root, log
        self.process: Any = None
        self.port = unused_port()  # the same one again after a restart

    def start(self) -> None:
        self.process, self.port = launch.start_server(
            self.root, "--no-discovery", "--lease-timeout", "3600", port=self.port, log=self.log
        )

    def stop(self) -> None:
        assert self.process.poll() is None, "the server died"
        launch.stop(self.process)

    def send(
        self, method: str, path: str, body: bytes | None = None, content_type: str = JSON
    ) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Content-Type": content_type, "Accept": JSON, **secret_header(self.root)}
            connection.request(method, quote(path, safe="/?=&"), body=body, headers=headers)
            response = connection.getresponse()
            reply = response.read()
            return response.status, json.loads(reply) if reply else None
        finally:
            connection.close()

    def get(self, path: str) -> Any:
        status, reply = self.send("GET", "/api/v1" + path)
        assert status == 200, (path, status, reply)
        return reply

    def digest(self) -> str:
        """The whole queue as one canonical text."""
        jobs = self.get("/jobs")["jobs"]
        state = {
            "jobs": jobs,
            "tasks": {job["id"]: self.get(f"/jobs/{job['id']}/tasks")["tasks"] for job in jobs},
            "results": {job["id"]: self.get(f"/jobs/{job['id']}/results") for job in jobs},
            "workers": self.get("/workers")["workers"],
        }
        return json.dumps(_without(state, EPHEMERAL), sort_keys=True)

    def known(self) -> dict[str, list[str]]:
        jobs = self.get("/jobs")["jobs"]
        tasks = [f"{job['id']}.{index}" for job in jobs for index in range(job["total"])]
        workers = [w["id"] for w in self.get("/workers")["workers"]]
        return {"job": [job["id"] for job in jobs], "task": tasks, "worker": workers}


def _without(value: Any, keys: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("fuzz-routes-root")
    shutil.copy(HERE / "farm_jobs.py", root / "farm_jobs.py")
    with open(root / "server.log", "ab") as log:
        running = Server(root, log)
        running.start()
        try:
            yield running
        finally:
            running.stop()


# ---- what is sent ---------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: JSON carries 10**400
    st.floats(),  # NaN and infinities too
    st.text(max_size=12),
    st.binary(max_size=6),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=6), st.binary(max_size=3)), inner, max_size=3),
    ),
    max_leaves=8,
)
odd_ids = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["J.²", "x." + "9" * 5000, "..", "a.-1", "a.٣", "w-" + "f" * 300]),
)

FUNCTIONS = ["farm_jobs:square", "farm_jobs:echo", "m:f", "nope", "../x.py:f"]
numbers = st.one_of(st.integers(), st.floats())


def body(valid: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A body whose fields are all valid, or all valid but one, or anything at all."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        mode = draw(st.sampled_from(["valid", "valid", "one-bad", "junk"]))
        if mode == "junk":
            return draw(values)
        names = sorted(valid)
        chosen = {name: draw(valid[name]) for name in names if draw(st.integers(0, 2))}
        if mode == "one-bad" and names:
            chosen[draw(st.sampled_from(names))] = draw(values)
        return chosen

    return build()


def payloads() -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {"function": st.sampled_from(FUNCTIONS)},
        optional={
            "args": st.lists(values, max_size=2),
            "kwargs": st.dictionaries(st.text(max_size=4), values, max_size=2),
        },
    )


def submit_bodies() -> st.SearchStrategy[Any]:
    task = st.fixed_dictionaries(
        {"payload": payloads()}, optional={"depends": st.lists(st.integers(-1, 3), max_size=2)}
    )
    valid = {
        "tasks": st.lists(task, min_size=1, max_size=4),
        "kind": st.just("python"),
        "name": st.text(max_size=8),
        "priority": st.integers(-(10**6), 10**6),
        "requires": st.just([]),
        "max_attempts": st.integers(1, 5),
        "timeout": st.floats(1e4, 1e6),  # none runs out during the test
        "owner": st.text(max_size=8),
        "meta": st.dictionaries(st.text(max_size=4), values, max_size=2),
        "common": st.just({}),
        "key": st.sampled_from(["key-one-12345", "key-two-12345", "key-three-123"]),
    }
    return body(valid).map(
        lambda b: {"tasks": [{"payload": {"function": "m:f"}}], **b} if isinstance(b, dict) else b
    )


def report_bodies(task_ids: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    entry = st.fixed_dictionaries(
        {"id": task_ids, "ok": st.booleans()},
        optional={
            "result": values,
            "error": st.text(max_size=8),
            "traceback": st.text(max_size=8),
            "log": st.text(max_size=8),
            "seconds": numbers,
            "started_at": numbers,
        },
    )
    progress = st.fixed_dictionaries(
        {"id": task_ids}, optional={"fraction": numbers, "message": st.text(max_size=8)}
    )
    return body(
        {
            "done": st.lists(entry, max_size=3),
            "progress": st.lists(progress, max_size=2),
            "release": st.lists(task_ids, max_size=2),
        }
    )


def encode(body: Any, as_json: bool) -> tuple[bytes, str] | None:
    """The body in the format asked for, else the other; None if neither carries it."""
    order = [JSON, MSGPACK] if as_json else [MSGPACK, JSON]
    for content_type in order:
        try:
            if content_type == JSON:
                return json.dumps(body).encode(), JSON
            return msgpack.packb(body, use_bin_type=True), MSGPACK
        except (TypeError, ValueError, OverflowError):
            continue
    return None


def no_long_wait(body: Any) -> Any:
    """A long-poll with nothing to hand out would hold the test for up to a minute."""
    wait = body.get("wait") if isinstance(body, dict) else None
    if isinstance(wait, bool) or not isinstance(wait, int | float):
        return body
    if (isinstance(wait, int) and abs(wait) > 2**64) or (
        isinstance(wait, float) and math.isnan(wait)
    ):
        return body  # refused, or no wait at all: worth sending as it is
    return {**body, "wait": 0}


class Known:
    """A placeholder for the id of something the server has (drawn without looking, so
    the drawing never depends on the server's state; filled in by :func:`fill`)."""

    def __init__(self, kind: str, index: int) -> None:
        self.kind, self.index = kind, index


def known_id(kind: str) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(0, 10**6).map(lambda index: Known(kind, index)),
        st.integers(0, 10**6).map(lambda index: Known(kind, index)),
        odd_ids,
    )


def fill(value: Any, known: dict[str, list[str]]) -> Any:
    if isinstance(value, Known):
        choices = known[value.kind]
        return choices[value.index % len(choices)] if choices else f"none-{value.kind}"
    if isinstance(value, dict):
        return {k: fill(v, known) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, known) for v in value]
    return value


ROUTES = {
    "submit": 4, "jobs": 1, "job": 1, "wait": 1, "tasks": 1, "results": 1, "cancel": 1,
    "pause": 1, "resume": 1, "retry": 1, "unblock": 1, "priority": 1, "task": 1, "register": 2,
    "workers": 1, "lease": 3, "report": 4, "watch": 1, "unregister": 1, "ping": 1,
}  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, Any, Any]:
    """(method, path parts, body) of one request to one route."""
    route = draw(st.sampled_from([name for name, weight in ROUTES.items() for _ in range(weight)]))
    job, task, worker = known_id("job"), known_id("task"), known_id("worker")
    if route == "submit":
        return "POST", ["/jobs"], draw(submit_bodies())
    if route in ("jobs", "workers", "ping"):
        return "GET", [f"/{route}"], None
    if route in ("job", "tasks", "results", "wait"):
        suffix = {"job": "", "tasks": "/tasks", "results": "/results", "wait": "/wait?timeout=0"}
        return "GET", ["/jobs/", draw(job), suffix[route]], None
    if route in ("cancel", "pause", "resume", "retry", "unblock"):
        names = st.one_of(st.sampled_from(["w1", "w2"]), st.text(max_size=8))
        return "POST", ["/jobs/", draw(job), f"/{route}"], draw(body({"worker": names}))
    if route == "priority":
        priority = body({"priority": st.integers(-(10**6), 10**6)})
        return "POST", ["/jobs/", draw(job), "/priority"], draw(priority)
    if route == "task":
        return "GET", ["/tasks/", draw(task)], None
    if route == "register":
        valid = {
            "name": st.sampled_from(["w1", "w2"]),
            "slots": st.integers(1, 3),
            "capabilities": st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
            "info": st.dictionaries(st.text(max_size=4), values, max_size=2),
        }
        return "POST", ["/workers"], draw(body(valid))
    at = draw(worker)
    if route == "lease":
        lease = body({"want": st.integers(0, 3), "wait": st.just(0)})
        return "POST", ["/workers/", at, "/lease"], no_long_wait(draw(lease))
    if route == "report":
        return "POST", ["/workers/", at, "/report"], draw(report_bodies(task))
    if route == "watch":
        return "POST", ["/workers/", at, "/watch"], no_long_wait(draw(body({"wait": st.just(0)})))
    return "DELETE", ["/workers/", at], None


# ---- the property ---------------------------------------------------------------------------


def test_random_requests_change_the_queue_only_when_accepted_and_for_good(
    server: Server,
) -> None:
    digest = [server.digest()]
    answers: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        # Shrinking replays examples against a server whose queue has moved on: no use.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.data())
    def one_request(data: st.DataObject) -> None:
        method, path, body = data.draw(requests())
        known = server.known()
        path, body = "".join(str(part) for part in fill(path, known)), fill(body, known)
        sent = (None, JSON)
        if body is not None:
            encoded = encode(body, data.draw(st.booleans()))
            if encoded is None:
                return
            sent = encoded
        status, reply = server.send(method, "/api/v1" + path, sent[0], sent[1])
        answers[status // 100] = answers.get(status // 100, 0) + 1
        assert status < 500, (method, path, body, status, reply)
        after = server.digest()
        if status >= 400:
            assert isinstance(reply, dict) and reply.get("error"), reply
            assert after == digest[0], f"{status} {reply} changed the queue: {method} {path}"
        digest[0] = after

    one_request()
    print(f"answers by class: {answers}")
    # Something was accepted and something refused: the property was tried on both sides.
    assert answers.get(2, 0) >= 10 and answers.get(4, 0) >= 10, answers
    assert server.get("/jobs")["jobs"], "no job was ever accepted"
    server.stop()
    server.start()
    assert server.digest() == digest[0], "an accepted change did not survive a restart"
