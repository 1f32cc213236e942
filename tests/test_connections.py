"""Nobody outside the farm can stop it by holding connections: real sockets on loopback
against a real ``farm server`` (idle, half-sent, a thousand at once, an open-files flood)."""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildcat import launch
from tests.conftest import Farm, secret_header, unused_port, wait_for

PING = b"GET /api/v1/ping HTTP/1.1\r\nHost: farm\r\n"


@pytest.fixture(autouse=True)
def enough_files() -> None:
    """The test itself holds over a thousand sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))


def start_server(farm: Farm, *extra: str, open_files: str = "") -> None:
    """``farm server`` on loopback; ``open_files`` (``SOFT:HARD``) starts it with that
    limit, as a distribution's default of 1024 would."""
    wrap = ["prlimit", f"--nofile={open_files}", "--"] if open_files else []
    farm.server, farm.port = launch.start_server(
        farm.root, "--no-discovery", "--log-level", "debug", *extra,
        port=unused_port(), log=farm._log("server"), wrap=wrap,
    )  # fmt: skip


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[Farm]:
    root = tmp_path / "root"
    root.mkdir()
    farm = Farm(root=root, logs=tmp_path / "logs")
    try:
        yield farm
    finally:
        farm.stop()


def connect(port: int, send: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if send:
        sock.sendall(send)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def member_ping(port: int, root: Path) -> int:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/api/v1/ping", headers=secret_header(root))
        return connection.getresponse().status
    finally:
        connection.close()


def test_idle_and_half_sent_connections_are_closed_within_the_timeouts(bare: Farm) -> None:
    start_server(bare, "--header-timeout", "1", "--idle-timeout", "2")
    opened = time.monotonic()
    idle = [connect(bare.port) for _ in range(20)]
    half = [connect(bare.port, PING) for _ in range(20)]  # no blank line: never finished
    refused = [connect(bare.port, PING + b"\r\n") for _ in range(5)]  # 401, then silent
    # A member's kept-alive connection, quiet after one answer.
    headers = b"".join(f"{k}: {v}\r\n".encode() for k, v in secret_header(bare.root).items())
    member = connect(bare.port, PING + headers + b"\r\n")
    everything = [*idle, *half, *refused, member]
    closed_at: dict[int, float] = {}

    def all_closed() -> bool:
        for index, sock in enumerate(everything):
            if index not in closed_at and closed_by_server(sock):
                closed_at[index] = time.monotonic() - opened
        return len(closed_at) == len(everything)

    try:
        wait_for(all_closed, timeout=60, interval=0.05)
    finally:
        for sock in everything:
            sock.close()
    # Roughly within the timeouts; the bound is loose for a loaded machine.
    print(f"closed after {min(closed_at.values()):.2f}-{max(closed_at.values()):.2f} s")
    assert member_ping(bare.port, bare.root) == 200


def test_a_member_gets_in_while_one_peer_holds_1100_idle_connections(bare: Farm) -> None:
    """The server starts with the usual 1024 open files: it raises that to the hard limit,
    and the peer's connections beyond the cap are closed as new ones come."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    start_server(bare, "--header-timeout", "120", "--max-unauthenticated", "64",
                 open_files=f"1024:{hard}")  # fmt: skip
    held = []
    try:
        for _ in range(1100):
            with contextlib.suppress(OSError):
                held.append(connect(bare.port))
        assert len(held) == 1100
        assert member_ping(bare.port, bare.root) == 200
        # The cap stays open (the newest, within their header timeout), less the one the
        # member's own connection pushed out before it showed the secret.
        closed = wait_for(lambda: sum(closed_by_server(s) for s in held) >= 1100 - 64 and
                          sum(closed_by_server(s) for s in held), 30)  # fmt: skip
        assert 1100 - 64 <= closed <= 1100 - 63
    finally:
        for sock in held:
            sock.close()
    log = bare.log_text("server")
    assert "open-files limit raised from 1024" in log
    assert log.count("never showed the farm secret") <= 2  # once, and once per thousand
    assert member_ping(bare.port, bare.root) == 200


def test_running_out_of_open_files_is_logged_once_and_the_server_recovers(bare: Farm) -> None:
    """A hard limit of 256 open files that cannot be raised, and 400 idle connections: the
    accept errors are written once (not one line per attempt), the idle connections go
    at the header timeout and members get in again."""
    start_server(bare, "--header-timeout", "2", "--max-unauthenticated", "100000",
                 open_files="256:256")  # fmt: skip
    held = []
    try:
        for _ in range(400):
            with contextlib.suppress(OSError):
                held.append(connect(bare.port))
        wait_for(lambda: "out of system resource" in bare.log_text("server"), 30)

        def member_in() -> bool:
            with contextlib.suppress(OSError):
                return member_ping(bare.port, bare.root) == 200
            return False

        wait_for(member_in, 60, interval=0.2)
    finally:
        for sock in held:
            sock.close()
    log = bare.log_text("server")
    assert log.count("out of system resource") <= 2, log.count("out of system resource")
    assert log.count("Too many open files") <= 2


def test_thumbnail_reads_that_hang_hold_their_own_threads_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read stuck in the kernel (a hung NFS file): each request gets 504 after its
    timeout, once every place is taken the next get 503 at once, and the event loop's
    own thread pool (the journal's) is as free as before."""
    import asyncio
    import threading

    from aiohttp import web as aiohttp_web

    from buildcat.server import web

    release = threading.Event()

    def hung(path: Path, limit: int = 0) -> bytes:
        release.wait(60)
        return b""

    monkeypatch.setattr(web, "read_regular_file", hung)

    async def main() -> None:
        reader = web.ThumbnailReader(threads=2, places=4)
        asked = [reader.read(Path("frame.png"), timeout=0.3) for _ in range(6)]
        answers = await asyncio.gather(*asked, return_exceptions=True)
        assert sorted(type(answer).__name__ for answer in answers) == [
            *[aiohttp_web.HTTPGatewayTimeout.__name__] * 4,
            *[aiohttp_web.HTTPServiceUnavailable.__name__] * 2,
        ]
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 7), 10) == 7
        release.set()

    asyncio.run(main())
