"""Snapshots written while the farm goes on (issue 17): a forked child writes the queue as
it was at one instant; the server answers and journals meanwhile; a snapshot waits for as
many journal events as the last one held tasks; a start resumes the journal the snapshot
names from the offset it holds."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

import buildcat
from buildcat.server import snapshot
from buildcat.server.app import Farm as ServerFarm
from buildcat.server.app import ServerConfig
from buildcat.server.journal import read_events
from buildcat.server.scheduler import TaskSpec
from tests.conftest import wait_for
from tests.test_reliability import kill_server, new_farm

pytestmark = pytest.mark.skipif(not snapshot.CAN_FORK, reason="snapshots fork here")


def under_way(pid: int) -> list[int]:
    """The snapshot child of server ``pid`` once it holds only a few files (it closed the
    sockets, the journal and the lock it inherited); [] before."""
    found = []
    for child in children(pid):
        try:
            if len(os.listdir(f"/proc/{child}/fd")) <= 6:
                found.append(child)
        except OSError:
            continue
    return found


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_the_farm_answers_and_journals_while_a_snapshot_is_being_written(tmp_path: Path) -> None:
    farm = new_farm(tmp_path)
    farm.start_server("--snapshot-every", "10")
    assert farm.server is not None
    server_pid = farm.server.pid
    try:
        client = farm.client()
        big = client.map("farm_jobs:square", range(60_000))
        early = [client.submit("farm_jobs:square", n) for n in range(9)]  # 10 events: due
        # The child writing the snapshot of 60,000 tasks: held still while we work.
        # Stopped once it is under way: it has closed what it inherited, so it has also
        # asked to die with its server (the line before). Stopped earlier than that, right
        # after the fork, it could never die of its server's death.
        [child] = wait_for(lambda: under_way(server_pid), timeout=60, interval=0.002)
        os.kill(child, signal.SIGSTOP)
        try:
            assert client.ping()["snapshots"] == 0
            during = [client.submit("farm_jobs:square", n) for n in range(5)]
            assert [job.status()["state"] for job in during] == ["queued"] * 5
            assert children(server_pid) == [child]  # answered with the snapshot unfinished
        finally:
            os.kill(child, signal.SIGCONT)
        wait_for(lambda: client.ping()["snapshots"] == 1, timeout=120)
        state = farm.root / ".buildcat"
        # The journal restarted as generation 1 holding only what came after the fork.
        events = list(read_events(state / "journal.bin"))
        assert events[0] == ["generation", 1]
        assert [e[0] for e in events[1:]] == ["submit"] * 5
        kill_server(farm)
        farm.start_server(port=farm.port)
        jobs = client.jobs()
        assert [job["id"] for job in jobs] == [j.id for j in [big, *early, *during]]
        assert client.job(big.id).status()["tasks"]["queued"] == 60_000
        farm.start_worker("--no-blender")
        assert [job.results() for job in during] == [[n * n] for n in range(5)]
    finally:
        farm.stop()


def test_a_snapshot_waits_for_as_many_events_as_the_last_one_held_tasks(tmp_path: Path) -> None:
    """Before, a snapshot of the whole queue came every ``snapshot_every`` events, so a
    big job paid for it with the square of its size."""
    (tmp_path / "root").mkdir()
    config = ServerConfig(root=tmp_path / "root", discovery=False, snapshot_every=10)

    async def run() -> list[bool]:
        server = ServerFarm(config)
        assert server.journal is not None
        seen = []
        server.scheduler.submit([TaskSpec({"args": [n]}) for n in range(2_000)], time.time())
        for _ in range(10):
            server.record("pause", time.time(), "none")
        seen.append(server.snapshot_due())  # the first: after snapshot_every events
        await server.take_snapshot()
        assert server.snapshots == 1 and server.generation == 1
        for _ in range(1_500):
            server.record("pause", time.time(), "none")
        seen.append(server.snapshot_due())  # fewer events than the 2,000 tasks it held
        for _ in range(500):
            server.record("pause", time.time(), "none")
        seen.append(server.snapshot_due())
        await server.journal.settle()
        server.journal.close()
        return seen

    assert asyncio.run(run()) == [True, False, True]


def test_a_big_job_that_ends_is_snapshotted_soon(tmp_path: Path) -> None:
    """Its whole run is in the journal: a restart would replay it all, so the end of a
    job of 10,000 tasks or more is worth a snapshot (after snapshot_every events)."""
    (tmp_path / "root").mkdir()
    config = ServerConfig(root=tmp_path / "root", discovery=False, snapshot_every=10)

    async def run() -> list[bool]:
        server = ServerFarm(config)
        assert server.journal is not None
        scheduler, now = server.scheduler, time.time()
        job = scheduler.submit([TaskSpec({"args": [n]}) for n in range(10_000)], now)
        worker = scheduler.register("w", 1, {}, now)
        for _ in range(10):
            server.record("pause", now, job.id)
        await server.take_snapshot()  # it holds 10,000 tasks: the next waits for 10,000
        seen = []
        for task in scheduler.lease(worker.id, 9_990, now):
            scheduler.complete(worker.id, task.id, None, now)
        server.record("pause", now, job.id)
        server.after_change()
        seen.append(server.snapshot_due())  # not ended, too few events
        for task in scheduler.lease(worker.id, 10, now):
            scheduler.complete(worker.id, task.id, None, now)
        for _ in range(10):
            server.record("pause", now, job.id)
        server.after_change()  # the job ended
        seen.append(job.state == "done" and server.snapshot_due())
        await server.journal.settle()
        server.journal.close()
        return seen

    assert asyncio.run(run()) == [False, True]


def test_without_fork_the_snapshot_is_written_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows has no fork: there the snapshot and the journal's restart happen in one
    step, as before."""
    monkeypatch.setattr(snapshot, "CAN_FORK", False)
    (tmp_path / "root").mkdir()
    config = ServerConfig(root=tmp_path / "root", discovery=False)

    async def run() -> None:
        server = ServerFarm(config)
        assert server.journal is not None
        job = server.scheduler.submit([TaskSpec({"args": [1]})], time.time())
        server.record("pause", time.time(), job.id)
        await server.take_snapshot()
        server.journal.close()

    asyncio.run(run())
    state = tmp_path / "root" / ".buildcat"
    assert list(read_events(state / "journal.bin")) == [["generation", 1]]
    found = snapshot.read(state / "snapshot.bin")
    assert found is not None and found[0] == 1 and found[3] is None


def test_a_server_killed_during_a_snapshot_leaves_nothing_held(tmp_path: Path) -> None:
    """The child dies with its server and closes what it inherited: a server started after
    the first was killed mid-snapshot binds the same port, finds every job, and no
    half-written snapshot is left behind or renamed into place later."""
    farm = new_farm(tmp_path)
    farm.start_server("--snapshot-every", "10")
    assert farm.server is not None
    server_pid = farm.server.pid
    try:
        client: buildcat.Client = farm.client()
        big = client.map("farm_jobs:square", range(60_000))
        for _ in range(9):
            client.job(big.id).pause()  # 10 events: the snapshot is due
        # Stopped once it is under way: it has closed what it inherited, so it has also
        # asked to die with its server (the line before). Stopped earlier than that, right
        # after the fork, it could never die of its server's death.
        [child] = wait_for(lambda: under_way(server_pid), timeout=60, interval=0.002)
        os.kill(child, signal.SIGSTOP)
        kill_server(farm)
        wait_for(lambda: not Path(f"/proc/{child}").exists())  # it died with its server
        # (The 10 events it replays are too few for a snapshot of its own.)
        farm.start_server("--snapshot-every", "1000", port=farm.port)
        assert [job["id"] for job in client.jobs()] == [big.id]
        assert client.job(big.id).status()["state"] == "paused"
        assert client.job(big.id).status()["tasks"]["queued"] == 60_000
        state = farm.root / ".buildcat"
        assert snapshot.child_files(state) == [] and not (state / "snapshot.bin").exists()
    finally:
        farm.stop()


def test_a_start_that_replays_a_long_journal_is_snapshotted_soon(tmp_path: Path) -> None:
    """Before, the events a start replayed did not count: a server stopped before its
    next snapshot replayed the same long journal at every start after."""
    (tmp_path / "root").mkdir()
    config = ServerConfig(root=tmp_path / "root", discovery=False, snapshot_every=1_000)

    async def first() -> None:
        server = ServerFarm(config)
        assert server.journal is not None
        job = server.scheduler.submit([TaskSpec({"args": [n]}) for n in range(5_000)], time.time())
        for _ in range(1_500):
            server.record("pause", time.time(), job.id)
        await server.journal.settle()
        server.journal.close()

    async def again() -> bool:
        server = ServerFarm(config)  # replays 1,500 events: more than snapshot_every
        assert server.journal is not None
        due = server.snapshot_due()
        server.journal.close()
        return due

    asyncio.run(first())
    assert asyncio.run(again())


def test_a_stopping_server_lets_the_snapshot_being_written_finish(tmp_path: Path) -> None:
    """Before, a graceful stop killed a snapshot being written: the next start replayed
    the whole journal it would have replaced."""
    farm = new_farm(tmp_path)
    farm.start_server("--snapshot-every", "10")
    assert farm.server is not None
    server = farm.server
    try:
        client = farm.client()
        client.map("farm_jobs:square", range(60_000))
        for n in range(9):  # 10 events: a snapshot is due
            client.submit("farm_jobs:square", n)
        [child] = wait_for(lambda: children(server.pid), timeout=60, interval=0.002)
        os.kill(child, signal.SIGSTOP)  # the snapshot is being written while the stop comes
        try:
            server.send_signal(signal.SIGTERM)
            wait_for(lambda: "shutting down" in farm.log_text("server"), timeout=30)
            assert server.poll() is None  # waiting for the snapshot
        finally:
            os.kill(child, signal.SIGCONT)
        assert server.wait(60) == 0
        assert server.stdout is not None
        server.stdout.close()
        log = farm.log_text("server")
        assert "journal: snapshot 1 written" in log and "given up" not in log
        farm.start_server(port=farm.port)
        wait_for(lambda: "snapshot generation 1 and 0 event(s) replayed" in farm.log_text("server"))
        assert len(client.jobs()) == 10
    finally:
        farm.stop()
