"""The server's durable state against what happens to it in real life: a second server on the
same state folder (on this host, or on another host that shares the root), bits flipped in the
journal and the snapshot, the state folder deleted under a running server, writes that fail
and then succeed again, modes that keep the state private, and replay of a huge journal."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import stat
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest

import buildcat
from buildcat import launch, protocol
from buildcat.errors import FarmError
from buildcat.server import snapshot
from buildcat.server.app import Farm as ServerFarm
from buildcat.server.app import ServerConfig
from buildcat.server.journal import Journal, JournalError, read_events
from tests.conftest import Farm, unused_port, wait_for
from tests.test_reliability import kill_server, new_farm

RECORD_HEADER = struct.Struct(">II")


def record_spans(data: bytes) -> list[tuple[int, int]]:
    """Where each ``[length][crc32][msgpack]`` record of an intact journal starts and ends."""
    spans, offset = [], 0
    while offset < len(data):
        length, _ = RECORD_HEADER.unpack_from(data, offset)
        spans.append((offset, offset + RECORD_HEADER.size + length))
        offset += RECORD_HEADER.size + length
    return spans


def encode_record(event: list[Any]) -> bytes:
    body = msgpack.packb(event, use_bin_type=True)
    return RECORD_HEADER.pack(len(body), zlib.crc32(body)) + body


def refused_start(farm: Farm, *extra: str, name: str = "refused") -> str:
    """Start ``farm server`` on the farm's root; it must refuse: returns its stderr."""
    log_path = farm.logs / f"{name}.log"
    with launch.free_log(log_path) as log:
        try:
            process, port = launch.start_server(
                farm.root, "--no-discovery", *extra,
                port=unused_port(avoid={farm.port}), log=log, timeout=60,
            )  # fmt: skip
        except FarmError:
            return log_path.read_text()
    launch.stop(process)
    raise AssertionError(f"the server started (port {port}); it should have refused")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("farm: error:")]


# ---- one server per state folder -------------------------------------------------------------


def test_a_second_server_on_the_same_state_folder_refuses_and_names_the_first(
    tmp_path: Path,
) -> None:
    farm = new_farm(tmp_path)
    farm.start_server("--snapshot-every", "40")
    try:
        client = farm.client()
        acknowledged = [client.submit("farm_jobs:square", n).id for n in range(50)]
        assert farm.server is not None
        [line] = error_lines(refused_start(farm))
        assert line.startswith(f"farm: error: the state folder {farm.root / '.buildcat'} is in use")
        for part in (socket.gethostname(), f"pid {farm.server.pid}", f"port {farm.port}"):
            assert part in line
        # The first one carries on (its snapshot included) and keeps every acknowledged job.
        acknowledged += [client.submit("farm_jobs:square", n).id for n in range(50, 60)]
        wait_for(lambda: "journal: snapshot 1 written" in farm.log_text("server"))
        kill_server(farm)
        farm.start_server(port=farm.port)
        assert [job["id"] for job in client.jobs()] == acknowledged
    finally:
        farm.stop()


def read_holder(state: Path) -> dict[str, Any]:
    return json.loads((state / "server.lock").read_text())


def test_the_server_keeps_a_fresh_record_of_who_holds_the_state_folder(tmp_path: Path) -> None:
    farm = new_farm(tmp_path)
    state = farm.root / ".buildcat"
    before = time.time()
    farm.start_server()
    try:
        assert farm.server is not None
        holder = read_holder(state)
        assert holder["host"] == socket.gethostname()
        assert (holder["pid"], holder["port"], holder["state"]) == (
            farm.server.pid,
            farm.port,
            "running",
        )
        assert before - 1 <= holder["started_at"] <= time.time()
        # Alive means refreshed: the record changes while the server runs.
        wait_for(lambda: read_holder(state)["beat"] > holder["beat"], timeout=30)
        assert read_holder(state)["refreshed_at"] > holder["refreshed_at"]
        launch.stop(farm.server)
        farm.server = None
        # A clean stop says so, so a server on another host may take over at once.
        assert read_holder(state)["state"] == "stopped"
        farm.start_server(port=farm.port)
        assert read_holder(state)["pid"] == farm.server.pid
    finally:
        farm.stop()


class OtherHost:
    """A farm server on another host, as this one sees it through a shared root whose locks
    do not reach across (NFS mounted ``nolock``, SMB with ``nobrl``): only its record in
    ``server.lock``, rewritten in place every half second while it lives."""

    def __init__(self, state: Path, refreshed_at: float | None = None) -> None:
        state.mkdir(parents=True, exist_ok=True)
        self.path = state / "server.lock"
        self.started_at = time.time() - 600
        #: None: refreshed now at each beat; a number: a host whose clock is that far behind.
        self.refreshed_at = refreshed_at
        self.beat = 0
        self.alive = threading.Event()
        self._thread: threading.Thread | None = None
        self.write()

    def write(self, state: str = "running") -> None:
        record = {
            "host": "render-07", "boot_id": "a-kernel-this-host-does-not-share", "pid": 4242,
            "port": 8765, "bind": "0.0.0.0", "started_at": self.started_at,
            "refreshed_at": time.time() if self.refreshed_at is None else self.refreshed_at,
            "beat": self.beat, "state": state,
        }  # fmt: skip
        text = json.dumps(record).encode().ljust(511) + b"\n"
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.pwrite(descriptor, text, 0)
        finally:
            os.close(descriptor)

    def _run(self) -> None:
        while self.alive.is_set():
            self.beat += 1
            self.write()
            time.sleep(0.5)

    @contextmanager
    def running(self) -> Iterator[None]:
        self.alive.set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        try:
            yield
        finally:
            self.alive.clear()
            self._thread.join()


def test_a_server_on_another_host_holding_the_state_folder_is_refused_while_alive(
    tmp_path: Path,
) -> None:
    farm = new_farm(tmp_path)
    state = farm.root / ".buildcat"
    other = OtherHost(state)
    with other.running():
        [line] = error_lines(refused_start(farm, name="fresh"))
        assert "is in use by the farm server on render-07 (pid 4242, port 8765" in line
    # A host whose clock runs an hour behind: its record looks old, but it keeps beating.
    skewed = OtherHost(state, refreshed_at=time.time() - 3600)
    with skewed.running():
        [line] = error_lines(refused_start(farm, name="skewed"))
        assert "is in use by the farm server on render-07" in line
    assert farm.log_text("skewed").count("watching its record") == 1
    # Once it has stopped beating (crashed, powered off), its claim lapses.
    OtherHost(state, refreshed_at=time.time() - 3600)
    farm.start_server()
    try:
        text = farm.log_text("server")
        assert "took over the state folder from the farm server on render-07 (pid 4242" in text
        assert read_holder(state)["host"] == socket.gethostname()
        farm.client().submit("farm_jobs:square", 3)
    finally:
        farm.stop()
    # A clean stop on the other host: no wait at all.
    OtherHost(state).write(state="stopped")
    farm.start_server(port=farm.port)
    try:
        assert farm.log_text("server").count("took over the state folder") == 1
    finally:
        farm.stop()


def test_a_journal_written_by_someone_else_is_never_overwritten_or_destroyed(
    tmp_path: Path,
) -> None:
    """Should a second writer get past the lock (another host, locks that do not reach), the
    server must not write over its records nor start the journal afresh on top of them: it
    refuses changes instead and says why."""
    other = new_farm(tmp_path, "other")
    other.start_server()
    try:
        foreign_jobs = [other.client().submit("farm_jobs:square", n).id for n in range(3)]
        kill_server(other)
    finally:
        other.stop()
    foreign = (other.root / ".buildcat" / "journal.bin").read_bytes()
    foreign_records = foreign[record_spans(foreign)[0][1] :]  # all but its generation record

    farm = new_farm(tmp_path)
    journal = farm.root / ".buildcat" / "journal.bin"
    farm.start_server("--snapshot-every", "10")
    try:
        client = farm.client()
        mine = [client.submit("farm_jobs:square", n).id for n in range(3)]
        with open(journal, "ab") as handle:
            handle.write(foreign_records)
        refusals = 0
        for n in range(12):  # enough events for a snapshot, were they accepted
            with pytest.raises(buildcat.RequestRejected) as refused:
                client.submit("farm_jobs:square", n)
            assert refused.value.status == 503
            assert "changed by another process" in str(refused.value)
            refusals += 1
        assert refusals == 12
        assert "snapshot 1 written" not in farm.log_text("server")
        assert journal.read_bytes().endswith(foreign_records)
        kill_server(farm)
        submitted = [e[2] for e in read_events(journal) if e[0] == "submit"]
        assert submitted == mine + foreign_jobs
    finally:
        farm.stop()


def test_starting_the_journal_afresh_never_destroys_records_it_did_not_write(
    tmp_path: Path,
) -> None:
    """``Journal.restart`` (a snapshot's last step) replaces the file only when it holds
    nothing but what this server wrote, all of it in the snapshot."""
    path = tmp_path / "journal.bin"
    journal = Journal(path)

    async def write_one() -> None:
        journal.append("submit", 1.0, "mine")
        await journal.commit()

    asyncio.run(write_one())
    foreign = encode_record(["submit", 2.0, "theirs"])
    with open(path, "ab") as handle:
        handle.write(foreign)
    refused = ""
    try:
        journal.restart(1)
    except JournalError as exc:
        refused = str(exc)
    finally:
        journal.close()
    assert path.read_bytes().endswith(foreign)
    assert "changed by another process" in refused


# ---- damage ------------------------------------------------------------------------------------


def test_a_flipped_bit_inside_the_journal_stops_the_server_and_salvage_sets_it_aside(
    tmp_path: Path,
) -> None:
    farm = new_farm(tmp_path)
    state = farm.root / ".buildcat"
    journal = state / "journal.bin"
    farm.start_server()
    try:
        client = farm.client()
        ids = [client.submit("farm_jobs:square", n).id for n in range(30)]
        kill_server(farm)
        data = journal.read_bytes()
        spans = record_spans(data)
        assert len(spans) == 31  # the generation, then 30 submits
        start, end = spans[9]  # record 10 holds the 9th submit
        damaged = bytearray(data)
        damaged[start + 20] ^= 0x04
        journal.write_bytes(damaged)

        [line] = error_lines(refused_start(farm))
        assert line.startswith(f"farm: error: the journal {journal} is damaged at byte {start} ")
        assert (
            "record 10" in line and "21 intact record(s) after it" in line and "--salvage" in line
        )
        assert journal.read_bytes() == damaged  # refusing changed nothing

        farm.start_server("--salvage", port=farm.port)
        survivors = ids[:8] + ids[9:]
        assert [job["id"] for job in client.jobs()] == survivors
        [aside] = state.glob("journal-damaged-*.bin")
        assert aside.read_bytes() == damaged[start:end]
        assert stat.S_IMODE(aside.stat().st_mode) == 0o600
        assert f"set aside {end - start} damaged byte(s) at byte {start}" in farm.log_text("server")
        # Salvage leaves a journal that replays by itself: a plain restart needs no option.
        kill_server(farm)
        farm.start_server(port=farm.port)
        assert [job["id"] for job in client.jobs()] == survivors
        farm.start_worker("--no-blender")
        assert client.job(ids[29]).results() == [29 * 29]
    finally:
        farm.stop()


def test_only_a_torn_final_record_is_ever_cut_whatever_bit_flips(tmp_path: Path) -> None:
    """Every single-bit flip anywhere in a 31-record journal: reading it either reports the
    damage, or gives back every record unchanged except, at most, a torn last one."""
    events = [["generation", 0]] + [["submit", float(n), f"J{n}", "x" * (n % 5)] for n in range(30)]
    original = b"".join(encode_record(event) for event in events)
    path = tmp_path / "journal.bin"
    silent_losses = []
    for bit in range(len(original) * 8):
        flipped = bytearray(original)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(flipped)
        try:
            got = list(read_events(path))
        except JournalError:
            continue
        if got not in (events, events[:-1]):
            silent_losses.append((bit, len(got)))
    assert silent_losses == []


def test_a_damaged_snapshot_stops_the_server_whatever_bit_flips(tmp_path: Path) -> None:
    farm = new_farm(tmp_path)
    state = farm.root / ".buildcat"
    farm.start_server("--snapshot-every", "10")
    try:
        farm.start_worker("--no-blender")
        client = farm.client()
        assert client.map("farm_jobs:square", range(4)).results() == [0, 1, 4, 9]
        for n in range(8):
            client.submit("farm_jobs:square", n, priority=n)
        wait_for(lambda: "journal: snapshot 1 written" in farm.log_text("server"))
    finally:
        farm.stop()
    good = (state / "snapshot.bin").read_bytes()
    config = ServerConfig(root=farm.root, discovery=False)

    def loaded_state() -> dict[str, Any]:
        server = ServerFarm(config)
        try:
            return snapshot.dump(server.scheduler)
        finally:
            assert server.journal is not None
            server.journal.close()

    expected = loaded_state()
    outcomes: dict[str, int] = {}
    for bit in random.Random(12).sample(range(len(good) * 8), 200):
        flipped = bytearray(good)
        flipped[bit // 8] ^= 1 << (bit % 8)
        (state / "snapshot.bin").write_bytes(flipped)
        try:
            outcome = "loaded unchanged" if loaded_state() == expected else "silently changed"
        except FarmError as exc:
            damaged = "snapshot" in str(exc) and "damaged" in str(exc)
            outcome = "refused as damaged" if damaged else f"refused: {exc}"
        except Exception as exc:  # any other way to fail is a crash
            outcome = f"crashed: {type(exc).__name__}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes == {"refused as damaged": 200}
    # Started for real: one line, and the snapshot is left as it was.
    (state / "snapshot.bin").write_bytes(flipped)
    [line] = error_lines(refused_start(farm))
    assert line.startswith(f"farm: error: the snapshot {state / 'snapshot.bin'} is damaged")
    assert (state / "snapshot.bin").read_bytes() == flipped


def test_a_snapshot_an_older_release_wrote_loads_and_is_rewritten_with_a_checksum(
    tmp_path: Path,
) -> None:
    farm = new_farm(tmp_path)
    state = farm.root / ".buildcat"
    farm.start_server("--snapshot-every", "10")
    try:
        client = farm.client()
        ids = [client.submit("farm_jobs:square", n).id for n in range(12)]
        wait_for(lambda: "journal: snapshot 1 written" in farm.log_text("server"))
        kill_server(farm)
        # Before checksums a snapshot was the bare msgpack document of two keys.
        current = (state / "snapshot.bin").read_bytes()
        assert current.startswith(snapshot.MAGIC)
        document = protocol.unpack(current[snapshot.HEADER.size :], trusted=True)
        assert document.pop("after")[1] > 0  # written while the server ran
        (state / "snapshot.bin").write_bytes(protocol.pack(document))
        farm.start_server(port=farm.port)
        assert [job["id"] for job in client.jobs()] == ids
        assert "has no checksum (an older release wrote it)" in farm.log_text("server")
        assert (state / "snapshot.bin").read_bytes().startswith(snapshot.MAGIC)
        kill_server(farm)
        farm.start_server(port=farm.port)
        assert [job["id"] for job in client.jobs()] == ids
    finally:
        farm.stop()


# ---- a state folder that goes away, writes that fail and recover ------------------------------


def test_a_deleted_state_folder_answers_503_and_says_so(tmp_path: Path) -> None:
    farm = new_farm(tmp_path)
    farm.start_server()
    try:
        client = farm.client()
        kept = client.submit("farm_jobs:square", 1)
        shutil.rmtree(farm.root / ".buildcat")
        for n in range(5):
            with pytest.raises(buildcat.RequestRejected) as refused:
                client.submit("farm_jobs:square", n)
            assert refused.value.status == 503
            assert "is no longer at its path" in str(refused.value)
        assert kept.status()["state"] == "queued"  # reading goes on
        errors = [
            line
            for line in farm.log_text("server").splitlines()
            if " ERROR " in line and "no longer at its path" in line
        ]
        assert errors and "every change is refused" in errors[0]
    finally:
        farm.stop()


def prlimit_fsize(pid: int, limit: str) -> None:
    """Set the soft limit only: lifting it again needs no privilege."""
    subprocess.run(
        ["prlimit", "--pid", str(pid), f"--fsize={limit}:unlimited"], check=True, timeout=30
    )


def test_the_journal_recovers_by_itself_once_writes_succeed_again(tmp_path: Path) -> None:
    """A file-size limit set on the running server (as a full disk would) makes its journal
    writes fail, the last one half-way through a record; once lifted (space freed), changes
    are accepted again, and a restart replays exactly the acknowledged ones."""
    farm = new_farm(tmp_path)
    journal = farm.root / ".buildcat" / "journal.bin"
    farm.start_server()
    try:
        assert farm.server is not None
        client = farm.client()
        payload = "x" * 2000
        acknowledged = [client.submit("farm_jobs:echo", payload).id for _ in range(3)]
        # Room for half a submit: the write that fails leaves part of a record behind.
        prlimit_fsize(farm.server.pid, str(journal.stat().st_size + 1000))
        for _ in range(3):
            with pytest.raises(buildcat.RequestRejected) as refused:
                client.submit("farm_jobs:echo", payload)
            assert refused.value.status == 503
            assert "File too large" in str(refused.value)
        prlimit_fsize(farm.server.pid, "unlimited")
        acknowledged += [client.submit("farm_jobs:echo", payload).id for _ in range(3)]
        assert "journal: writes succeed again" in farm.log_text("server")
        kill_server(farm)
        submitted = [event[2] for event in read_events(journal) if event[0] == "submit"]
        assert submitted == acknowledged
        farm.start_server(port=farm.port)
        assert [job["id"] for job in client.jobs()] == acknowledged
        farm.start_worker("--no-blender")
        assert client.job(acknowledged[-1]).results() == [payload]
    finally:
        farm.stop()


# ---- privacy -------------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_journal_snapshot_lock_and_task_logs_are_private(tmp_path: Path) -> None:
    farm = new_farm(tmp_path)
    state = farm.root / ".buildcat"
    previous = os.umask(0o022)  # what most systems give: files 0644 unless made private
    farm.start_server("--snapshot-every", "10")
    try:
        farm.start_worker("--no-blender")
        client = farm.client()
        job = client.map("farm_jobs:chatty", range(6))
        assert job.results() == [1, 2, 3, 4, 5, 6]
        wait_for(lambda: "journal: snapshot 1 written" in farm.log_text("server"))
        for name in ("journal.bin", "snapshot.bin", "server.lock", "secret"):
            assert mode(state / name) == 0o600, name
        logs = state / "logs"
        assert mode(logs) == 0o700
        assert mode(logs / job.id) == 0o700
        task_logs = list((logs / job.id).glob("*.log"))
        assert task_logs and {mode(path) for path in task_logs} == {0o600}
        kill_server(farm)
        # A journal an older release left readable is made private at the next start.
        (state / "journal.bin").chmod(0o644)
        (state / "snapshot.bin").chmod(0o644)
        logs.chmod(0o755)
        farm.start_server(port=farm.port)
        assert mode(state / "journal.bin") == 0o600
        assert mode(state / "snapshot.bin") == 0o600
        assert mode(logs) == 0o700
    finally:
        os.umask(previous)
        farm.stop()


# ---- a huge journal ----------------------------------------------------------------------------


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_replaying_a_huge_journal_holds_one_record_at_a_time(tmp_path: Path) -> None:
    """Eight 25 MB pause requests (a flood through a huge ``worker`` field) make a 200 MB
    journal; replaying it must not hold the whole file, nor all its events, in memory."""
    farm = new_farm(tmp_path)
    journal = farm.root / ".buildcat" / "journal.bin"
    farm.start_server()
    try:
        job = farm.client().submit("farm_jobs:square", 4)
        assert farm.server is not None
        launch.stop(farm.server)
        farm.server = None
        huge = "w" * (25 * 1024 * 1024)
        with open(journal, "ab") as handle:
            for _ in range(8):
                handle.write(encode_record(["pause", time.time(), job.id, huge]))
        size = journal.stat().st_size
        assert size > 200 * 1024 * 1024
        farm.start_server(port=farm.port)
        assert job.status()["state"] == "paused"
        peak = peak_rss_bytes(farm.server.pid)  # type: ignore[union-attr]
        assert peak < size, f"replay peaked at {peak / 2**20:.0f} MiB for {size / 2**20:.0f} MiB"
    finally:
        farm.stop()
