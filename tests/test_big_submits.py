"""Big submits and many parked workers (issue 17): a submit of hundreds of thousands of
tasks is taken in pieces, so the farm answers other requests meanwhile; a submit that
wakes many parked workers is answered before they are served."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import secrets
import select
import threading
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

from buildcat import auth, protocol
from buildcat.server import submits
from buildcat.server.journal import encode
from tests.conftest import Farm, wait_for
from tests.test_reliability import new_farm


def headers(root: Path) -> dict[str, str]:
    return {
        "Authorization": auth.authorization(auth.load_token(root)),
        "Content-Type": protocol.MSGPACK,
        "Accept": protocol.MSGPACK,
    }


def in_flight(connection: http.client.HTTPConnection) -> int:
    """Bytes of the connection not read by the server yet: in our send queue or in its
    receive queue (Linux's /proc/net/tcp, queues in hex)."""
    ours = connection.sock.getsockname()[1]
    theirs = connection.sock.getpeername()[1]
    waiting = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.split(":")[1], 16) for address in fields[1:3])
        tx, rx = (int(n, 16) for n in fields[4].split(":"))
        if (local, remote) == (ours, theirs):
            waiting += tx
        elif (local, remote) == (theirs, ours):
            waiting += rx
    return waiting


def test_the_farm_answers_while_a_big_submit_is_taken_in(tmp_path: Path) -> None:
    """Before, once its body was read, a submit was decoded, checked and encoded for the
    journal in one go: a 300,000-task one held every other request for seconds."""
    farm = new_farm(tmp_path)
    port = farm.start_server()
    big = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        body = protocol.pack(
            {
                "tasks": [{"payload": {"args": [n]}} for n in range(300_000)],
                "common": {"function": "farm_jobs:square"},
                "key": secrets.token_urlsafe(16),
            }
        )
        client = farm.client()
        big.request("POST", f"{protocol.API_PREFIX}/jobs", body, headers(farm.root))
        wait_for(lambda: in_flight(big) == 0)  # the server has read the whole body
        for _ in range(20):
            assert client.ping()["api"] == protocol.API_VERSION
            # Answered while the submit had not been: its socket has no reply yet.
            assert select.select([big.sock], [], [], 0)[0] == []
        reply = big.getresponse()
        assert reply.status == 201, reply.read()
        job_id = msgpack.unpackb(reply.read())["id"]
        assert client.job(job_id).status()["total"] == 300_000
    finally:
        big.close()
        farm.stop()


def test_a_submit_is_answered_before_the_workers_it_wakes_are_served(tmp_path: Path) -> None:
    """Before, the submit's answer waited until every parked worker had been handed its
    task (4.2 s with 10,000 workers); now they are served after it, in pieces."""
    farm = new_farm(tmp_path)
    # 300 connections open at once, each counted until it shows the secret.
    port = farm.start_server("--lease-timeout", "120", "--max-unauthenticated", "1000")
    try:
        order = asyncio.run(_park_and_submit(port, farm, workers=300))
        # What arrived before the submit's own answer: a few replies at most, not all.
        assert order.index("submit") < 30, order[:40]
        assert order.count("lease") == 300
    finally:
        farm.stop()


async def _park_and_submit(port: int, farm: Farm, workers: int) -> list[str]:
    base = f"http://127.0.0.1:{port}{protocol.API_PREFIX}"
    order: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers(farm.root)) as session:

        async def call(path: str, body: Any) -> Any:
            async with session.post(base + path, data=protocol.pack(body)) as response:
                assert response.status < 300, await response.text()
                return protocol.unpack(await response.read(), trusted=True)

        ids = [
            (await call("/workers", {"name": f"sim-{n}", "slots": 1}))["id"] for n in range(workers)
        ]

        async def poll(worker_id: str) -> None:
            reply = await call(f"/workers/{worker_id}/lease", {"want": 1, "wait": 100})
            if reply.get("tasks"):
                order.append("lease")

        pollers = [asyncio.create_task(poll(worker_id)) for worker_id in ids]
        client = farm.client()
        while client.ping()["waiting_workers"] < workers:
            await asyncio.sleep(0.02)
        submit_body = {
            "tasks": [
                {"payload": {"function": "farm_jobs:square", "args": [n]}} for n in range(workers)
            ]
        }

        def submit() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            connection.request(
                "POST",
                f"{protocol.API_PREFIX}/jobs",
                protocol.pack(submit_body),
                headers(farm.root),
            )
            assert connection.getresponse().status == 201
            order.append("submit")
            connection.close()

        thread = threading.Thread(target=submit)
        thread.start()
        await asyncio.wait_for(asyncio.gather(*pollers), 120)
        await asyncio.to_thread(thread.join, 120)
    return order


def test_pieces_make_the_same_bytes_as_one_call() -> None:
    """The digest of a repeated submit and the journal record do not depend on the pieces."""
    body = {
        "name": "x",
        "tasks": [{"payload": {"args": [n, "é", 1.5, None, b"\x00"]}} for n in range(12_345)],
        "key": "k" * 16,
        "meta": {"a": [1, {"b": 2}]},
    }
    expected = hashlib.sha256(protocol.pack({k: v for k, v in body.items() if k != "key"}))
    assert asyncio.run(submits.digest(body)) == expected.hexdigest()
    decoded = asyncio.run(submits.decode_body(protocol.pack(body)))
    assert decoded == body
    specs = [[t["payload"], []] for t in body["tasks"]]  # type: ignore[index]
    event = ["submit", 1.0, "job", specs, "x"]
    record = asyncio.run(submits.encode_event([*event[:3], None, "x"], 3, iter(specs), len(specs)))
    assert record == encode(event)
