"""A worker is one row and one waiting worker: after SIGSTOP/SIGCONT it registers again
once, and ``ping`` counts each worker with a parked lease request once."""

from __future__ import annotations

import http.client
import signal
import threading

import msgpack

from tests.conftest import Farm, secret_header, wait_for


def test_a_worker_stopped_past_its_lease_registers_again_once(jobs_farm: Farm) -> None:
    jobs_farm.stop()
    jobs_farm.start_server("--lease-timeout", "1", port=jobs_farm.port)
    worker = jobs_farm.start_worker("--no-blender", name="sleepy")
    client = jobs_farm.client()
    gate = jobs_farm.gate("stopped")
    job = client.submit("farm_jobs:gated", "stopped", "through")
    gate.wait_started()  # a running task: the reporter and the watcher both poll
    worker.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: [w["state"] for w in client.workers()] == ["offline"])
    finally:
        worker.send_signal(signal.SIGCONT)
    wait_for(lambda: "registering again" in jobs_farm.log_text("sleepy"))
    gate.open()
    assert job.results() == ["through"]
    # Its leaser, reporter and watcher all learn at once that the server forgot it: a job
    # it runs proves every one of them has spoken since.
    assert client.map("farm_jobs:square", [1, 2, 3]).results() == [1, 4, 9]
    log = jobs_farm.log_text("sleepy")
    assert log.count("registered with") == 2, log  # the first time, and once again
    rows = [w for w in client.workers() if w["name"] == "sleepy"]
    assert len(rows) == 1 and rows[0]["state"] != "offline", rows  # one row, online


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
