"""A submit whose reply is lost is sent again, and makes one job, never two: each submit
carries an idempotency key the server remembers (journal and snapshots included). A relay
between the client and a real server loses the reply the way a server killed right after
its journal write, or a network cut, would."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from typing import Any

import msgpack
import pytest

import buildcat
from buildcat import protocol
from buildcat.server import snapshot
from buildcat.server.scheduler import Scheduler, SchedulerError, TaskSpec
from tests.conftest import Farm, secret_header, wait_for


class LossyRelay:
    """Passes TCP between clients and the farm server; can lose the replies to submits
    (the request reaches the server, which answers; the relay hangs up instead of passing
    the answer on)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.lose_submit_replies = 0
        self.submits = 0  # submit requests passed to the server
        self.lost = 0  # replies to them not passed back
        self.turned_away = 0  # connections the server was not there to take
        #: After a lost reply, turn every connection away until the test says so (as if
        #: the server had died with the reply; the test restarts it meanwhile).
        self.away_after_loss = False
        self.away = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        lose = threading.Event()
        try:
            if self.away:
                raise ConnectionRefusedError("the server is away")
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=60)
        except OSError:
            with self.lock:
                self.turned_away += 1
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()  # the server is away: so is the answer
            return

        def towards_server() -> None:
            try:
                while data := client.recv(65536):
                    if data.startswith(b"POST /api/v1/jobs "):
                        with self.lock:
                            self.submits += 1
                            if self.lose_submit_replies > 0:
                                self.lose_submit_replies -= 1
                                lose.set()
                    upstream.sendall(data)
            except OSError:
                pass

        threading.Thread(target=towards_server, daemon=True).start()
        try:
            while data := upstream.recv(65536):
                if lose.is_set():
                    with self.lock:
                        self.lost += 1
                        self.away = self.away_after_loss
                    break  # the server answered: the answer goes nowhere
                client.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown() first: it hangs up at once, also on the other thread's recv().
            for end in (client, upstream):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def relay(jobs_farm: Farm) -> Any:
    made = LossyRelay(jobs_farm.port)
    yield made
    made.close()


def test_a_submit_whose_reply_was_lost_makes_one_job(jobs_farm: Farm, relay: LossyRelay) -> None:
    relay.lose_submit_replies = 1
    with buildcat.connect("127.0.0.1", relay.port, jobs_farm.root) as through_relay:
        job = through_relay.submit("farm_jobs:square", 6)
    assert relay.lost == 1 and relay.submits == 2  # lost once, sent again
    direct = jobs_farm.client()
    assert [j["id"] for j in direct.jobs()] == [job.id]
    assert "the same submit again" in jobs_farm.log_text("server")
    jobs_farm.start_worker("--no-blender")
    assert direct.job(job.id).results() == [36]


def test_farm_submit_sends_again_after_a_lost_reply(jobs_farm: Farm, relay: LossyRelay) -> None:
    relay.lose_submit_replies = 1
    submitted = jobs_farm.cli("submit", "python", "farm_jobs:square", "7", "--json",
                              FARM_PORT=str(relay.port))  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    printed = json.loads(submitted.stdout)["id"]
    assert relay.lost == 1
    assert [j["id"] for j in jobs_farm.client().jobs()] == [printed]


def test_a_submit_lost_to_a_server_crash_finds_its_job_after_the_restart(
    jobs_farm: Farm, relay: LossyRelay
) -> None:
    """The server journals the submit, answers and dies before the answer is out; the
    client keeps sending it while the server is away, and the restarted server (from its
    journal) recognises it."""
    relay.lose_submit_replies = 1
    relay.away_after_loss = True
    outcome: dict[str, Any] = {}

    def submit() -> None:
        try:
            with buildcat.connect("127.0.0.1", relay.port, jobs_farm.root) as client:
                outcome["job"] = client.submit("farm_jobs:square", 8).id
        except BaseException as exc:  # reported below, in the test's own thread
            outcome["error"] = exc

    submitter = threading.Thread(target=submit)
    submitter.start()
    wait_for(lambda: relay.lost == 1)
    assert jobs_farm.server is not None
    jobs_farm.server.kill()
    jobs_farm.server.wait()
    jobs_farm.server.stdout.close()  # type: ignore[union-attr]
    jobs_farm.start_server(port=jobs_farm.port)
    wait_for(lambda: relay.turned_away >= 2 or "error" in outcome)  # trying while it is away
    relay.away = False  # the restarted server is reachable again
    submitter.join(timeout=90)
    assert "error" not in outcome, outcome.get("error")
    assert [j["id"] for j in jobs_farm.client().jobs()] == [outcome["job"]]


def _post(farm: Farm, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    try:
        headers = {"Content-Type": protocol.MSGPACK, **secret_header(farm.root)}
        connection.request("POST", "/api/v1/jobs", body=msgpack.packb(body), headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_key_names_one_submit(farm: Farm) -> None:
    body = {"key": "k" * 22, "tasks": [{"payload": {"function": "m:f", "args": [1]}}]}
    status, first = _post(farm, body)
    assert status == 201
    status, again = _post(farm, body)
    assert status == 200 and again == {"id": first["id"], "tasks": 1, "again": True}
    other = {**body, "tasks": [{"payload": {"function": "m:f", "args": [2]}}]}
    status, refused = _post(farm, other)
    assert status == 409
    assert refused["error"] == (
        f"submit key 'kkkkkkkkkkkkkkkkkkkkkk' was used for another request (job {first['id']}): "
        "a key names one submit"
    )
    status, bad = _post(farm, {**body, "key": "no spaces allowed"})
    assert status == 400 and bad["error"] == "'key' must be 8 to 64 letters, digits, '-' or '_'"
    assert [j["id"] for j in farm.client().jobs()] == [first["id"]]


def test_keys_survive_a_snapshot() -> None:
    farm = Scheduler()
    job = farm.submit([TaskSpec({"n": 1})], 0, key="key-0123456789", digest="d1")
    copy = Scheduler()
    snapshot.load(copy, protocol.unpack(protocol.pack(snapshot.dump(farm)), trusted=True))
    found = copy.submitted("key-0123456789", "d1")
    assert found is not None and found.id == job.id
    with pytest.raises(SchedulerError, match="was used for another request"):
        copy.submitted("key-0123456789", "d2")


def test_an_unreachable_server_is_still_one_line_at_once(tmp_path: Any) -> None:
    """Nothing was sent when the connection is refused: no waiting, as before."""
    (tmp_path / ".buildcat").mkdir()
    (tmp_path / ".buildcat" / "secret").write_text("s" * 43)
    (tmp_path / ".buildcat" / "secret").chmod(0o600)
    failed = subprocess.run(
        [sys.executable, "-m", "buildcat", "submit", "python", "m:f"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "FARM_HOST": "127.0.0.1", "FARM_PORT": "1",
             "BUILDCAT_ROOT": str(tmp_path)},
    )  # fmt: skip
    assert failed.returncode == 1
    assert failed.stderr.startswith("farm: error: cannot reach the farm server at 127.0.0.1:1")
