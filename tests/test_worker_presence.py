"""A worker is one row and one waiting worker: after SIGSTOP/SIGCONT it registers again
once, and ``ping`` counts each worker with a parked lease request once."""

from __future__ import annotations

import asyncio
import http.client
import signal
import threading
from pathlib import Path

import aiohttp
import msgpack
from aiohttp import web

from buildcat.worker.agent import Agent, WorkerConfig, _Running
from tests.conftest import Farm, secret_header, wait_for


def test_a_worker_stopped_past_its_lease_registers_again_once(jobs_farm: Farm) -> None:
    jobs_farm.stop()
    jobs_farm.start_server("--lease-timeout", "1", port=jobs_farm.port)
    worker = jobs_farm.start_worker("--no-blender", "--slots", "2", name="sleepy")
    client = jobs_farm.client()
    gate = jobs_farm.gate("stopped")
    job = client.submit("farm_jobs:gated", "stopped", "through")
    gate.wait_started()  # a running task: the reporter and the watcher both poll
    wait_for(lambda: client.ping()["waiting_workers"] == 1)  # the leaser, for slot 2
    worker.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: [w["state"] for w in client.workers()] == ["offline"])
        # A job while it is stopped answers its parked lease request: on SIGCONT the
        # leaser, the reporter and the watcher all call at once, and all hear that the
        # server forgot this worker.
        squares = client.map("farm_jobs:square", [1, 2, 3])
    finally:
        worker.send_signal(signal.SIGCONT)
    wait_for(lambda: "registering again" in jobs_farm.log_text("sleepy"))
    gate.open()
    assert job.results() == ["through"]
    assert squares.results() == [1, 4, 9]
    log = jobs_farm.log_text("sleepy")
    # Each time the server forgot it (once here, more on a machine slow enough to miss a
    # heartbeat), one registration: not one per coroutine that heard of it.
    assert log.count("registered with") == 1 + log.count("registering again"), log

    def one_online_row() -> bool:
        rows = [w for w in client.workers() if w["name"] == "sleepy"]
        return len(rows) == 1 and rows[0]["state"] != "offline"

    wait_for(one_online_row)  # no row left over from a second registration


def _lease(farm: Farm, worker_id: str, wait: float) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=60)
    body = msgpack.packb({"want": 1, "wait": wait})
    headers = {**secret_header(farm.root), "Content-Type": "application/msgpack"}
    connection.request("POST", f"/api/v1/workers/{worker_id}/lease", body, headers)
    connection.getresponse().read()
    connection.close()


def test_ping_counts_each_waiting_worker_once(farm: Farm) -> None:
    client = farm.client()
    reply = client.request("POST", "/workers", {"name": "poller", "slots": 1, "capabilities": {}})
    worker_id = reply["id"]
    # One worker with many lease requests parked at once (a retry after a partition while
    # the first is still waiting, a worker that polls for several slots).
    threads = [threading.Thread(target=_lease, args=(farm, worker_id, 3.0)) for _ in range(20)]
    for thread in threads:
        thread.start()
    try:
        # On a server without "waiting_requests", 20 waiting workers is the failure.
        wait_for(lambda: _parked(farm) >= 20 or client.ping()["waiting_workers"] >= 20)
        assert client.ping()["waiting_workers"] == 1
    finally:
        for thread in threads:
            thread.join()
    wait_for(lambda: client.ping()["waiting_workers"] == 0)  # none waits any more


def _parked(farm: Farm) -> int:
    return int(farm.client().ping().get("waiting_requests", 0))


def test_requests_that_learn_together_the_worker_is_forgotten_register_it_once(
    tmp_path: Path,
) -> None:
    # A server that has forgotten the worker, and takes its time to register one (a busy
    # journal): the leaser, reporter and watcher all ask at once.
    async def scenario() -> tuple[int, list[str]]:
        registered: list[str] = []

        async def register(request: web.Request) -> web.Response:
            await asyncio.sleep(0.2)
            registered.append(f"w-{len(registered) + 1}")
            return _msgpack({"id": registered[-1], "lease_timeout": 30.0})

        async def report(request: web.Request) -> web.Response:
            if registered and request.match_info["worker"] == registered[-1]:
                return _msgpack({})
            return _msgpack({"error": "unknown worker: register again"}, status=404)

        app = web.Application()
        app.router.add_post("/api/v1/workers", register)
        app.router.add_post("/api/v1/workers/{worker}/report", report)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        config = WorkerConfig(host="127.0.0.1", port=port, root=tmp_path, token="t" * 43)
        agent = Agent(config)
        agent.worker_id = "w-forgotten"
        agent.session = aiohttp.ClientSession()
        try:
            calls = [agent.call_as_worker("POST", "/report", {}, 10) for _ in range(3)]
            await asyncio.gather(*calls)
        finally:
            await agent.session.close()
            await runner.cleanup()
        return len(registered), [agent.worker_id or ""]

    count, current = asyncio.run(scenario())
    assert (count, current) == (1, ["w-1"])  # one registration, and its id in use


def _msgpack(body: object, status: int = 200) -> web.Response:
    return web.Response(body=msgpack.packb(body), status=status, content_type="application/msgpack")


def test_a_task_leased_again_while_it_runs_here_is_not_run_twice(tmp_path: Path) -> None:
    # After a stop or a partition the server hands out again a task whose lease ran out,
    # maybe to this very worker under its new registration, while its first run goes on.
    # Two runs under one id crashed the worker (KeyError when the second ended).
    config = WorkerConfig(host="127.0.0.1", port=1, root=tmp_path, token="t" * 43)
    agent = Agent(config)
    running = _Running({"id": "J.0"}, child=None, started_at=0.0)  # type: ignore[arg-type]
    stopping = _Running({"id": "J.1"}, child=None, started_at=0.0, cancelled=True)  # type: ignore[arg-type]
    agent.running = {"J.0": running, "J.1": stopping}
    agent.queue.append({"id": "J.2"})
    leased = [{"id": f"J.{n}"} for n in range(5)] + [{"id": "J.4"}]
    assert agent.drop_duplicates(leased) == [{"id": "J.3"}, {"id": "J.4"}]
    assert agent.to_release == ["J.1"]  # cancelled here: back to the server, leased afresh
