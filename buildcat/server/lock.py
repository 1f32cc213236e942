"""One server per state folder: a lock held for the server's whole life, and a record of who
holds it that the holder keeps fresh, for hosts the lock does not reach.

``<state dir>/server.lock`` is never replaced or deleted. Its holder

- holds a POSIX lock (``fcntl``) on one byte far past its end. The kernel enforces it on
  a local disk; on NFS it reaches the other clients only where locking works
  (NLM for v3, built into v4) and the mount has no ``nolock``/``local_lock``; SMB
  enforces it when the mount forwards byte-range locks (cifs without ``nobrl``). That
  byte lies past the record, so SMB's mandatory locks never keep anyone from reading it.
- keeps a JSON record at its start (host, kernel boot id, pid, port, start time, and a
  beat counted up every :data:`REFRESH_SECONDS`), rewritten in place and fsynced.

A new server that gets the lock still reads the record. Written by a server of this kernel
(same boot id), the lock is proof enough that its writer is gone. Written by another host,
it is trusted while it is fresh: refreshed in the last :data:`FRESH_SECONDS` by this host's
clock, or seen to change while watched for :data:`WATCH_SECONDS` (a host whose clock is
off still shows it is alive by beating). A server that stopped cleanly says so, and is
taken over at once.

What it cannot promise: two servers started on two hosts within the same moment, on a
share whose locks do not reach across, can both start; each checks at every refresh
that the record is still its own, and the one that finds another's stops accepting
changes (503) at once. A holder frozen (SIGSTOP, a hung mount) for longer than
:data:`FRESH_SECONDS` + :data:`WATCH_SECONDS` can be taken over, and finds out the same way.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from buildcat import platform
from buildcat.errors import FarmError
from buildcat.farmrecord import FRESH_SECONDS as FRESH_SECONDS
from buildcat.farmrecord import is_fresh

log = logging.getLogger(__name__)

LOCK_NAME = "server.lock"
RECORD_BYTES = 512
#: The holder rewrites its record this often.
REFRESH_SECONDS = 2.0
# A record refreshed within FRESH_SECONDS (by this host's clock) is alive: the rule is
# buildcat.farmrecord.is_fresh, which members also apply to the server's public record.
#: A record that does not look fresh is watched this long for a beat before it is taken over.
WATCH_SECONDS = 5.0
#: The byte the lock covers: far past the record.
LOCK_OFFSET = 1 << 30


class StateFolderBusy(FarmError):
    """Another server holds the state folder."""


def _boot_id() -> str:
    """Names this kernel (whose locks every process of it shares), not just the host name."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return socket.gethostname()


@dataclass(slots=True)
class Holder:
    """Who holds a state folder, as its ``server.lock`` says."""

    host: str
    pid: int
    port: int
    started_at: float
    refreshed_at: float
    beat: int = 0
    state: str = "running"
    boot_id: str = ""
    bind: str = ""
    #: Random, per server: tells a record of ours from another server's.
    claim: str = ""

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return f"the farm server on {self.host} (pid {self.pid}, port {self.port}, since {started})"

    def encode(self) -> bytes:
        text = json.dumps(asdict(self), sort_keys=True).encode()
        if len(text) >= RECORD_BYTES:
            raise FarmError(f"the holder record is longer than {RECORD_BYTES} bytes")
        return text.ljust(RECORD_BYTES - 1) + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> Holder | None:
        try:
            item: Any = json.loads(data.decode("utf-8"))
            return cls(
                host=str(item["host"]),
                pid=int(item["pid"]),
                port=int(item.get("port", 0)),
                started_at=float(item.get("started_at", 0.0)),
                refreshed_at=float(item.get("refreshed_at", 0.0)),
                beat=int(item.get("beat", 0)),
                state=str(item.get("state", "running")),
                boot_id=str(item.get("boot_id", "")),
                bind=str(item.get("bind", "")),
                claim=str(item.get("claim", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


class StateLock:
    """The state folder, held: see the module's docstring. Use :meth:`acquire`."""

    def __init__(self, path: Path, descriptor: int, holder: Holder) -> None:
        self.path = path
        self.fd = descriptor
        self.holder = holder
        #: Told (from the refresher's thread) why the folder is no longer ours.
        self.on_lost: Callable[[str], None] | None = None
        #: Told (from the refresher's thread) of every beat written, and of the clean stop:
        #: the server's public record (server/record.py) beats with the lock's.
        self.on_beat: Callable[[Holder], None] | None = None
        self._stop = threading.Event()
        self._lost: str | None = None
        self._thread = threading.Thread(target=self._refresh_loop, name="state-lock", daemon=True)

    @classmethod
    def acquire(cls, folder: Path, *, port: int, bind: str = "") -> StateLock:
        """Take the state folder, or raise StateFolderBusy naming who holds it."""
        path = folder / LOCK_NAME
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | platform.OPEN_FLAGS, 0o600)
            platform.make_private(descriptor)
        except OSError as exc:
            raise FarmError(f"cannot open {path}: {exc.strerror}") from None
        try:
            cls._lock_or_refuse(folder, descriptor)
            previous = cls._read(descriptor)
            if previous is not None:
                cls._check_previous(folder, descriptor, previous)
            now = time.time()
            holder = Holder(
                host=socket.gethostname(), pid=os.getpid(), port=port, started_at=now,
                refreshed_at=now, boot_id=_boot_id(), bind=bind, claim=secrets.token_hex(8),
            )  # fmt: skip
            lock = cls(path, descriptor, holder)
            lock._write()
        except BaseException:
            os.close(descriptor)  # and with it the lock
            raise
        lock._thread.start()
        return lock

    @staticmethod
    def _lock_or_refuse(folder: Path, descriptor: int) -> None:
        # POSIX locks belong to the process and end when it closes *any* descriptor of the
        # file: the holder opens server.lock once and reads its record through that one.
        try:
            platform.lock_byte(descriptor, LOCK_OFFSET)  # fcntl; msvcrt.locking on Windows
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                holder = None
                for _ in range(20):  # the holder may be writing its first record right now
                    holder = StateLock._read(descriptor)
                    if holder is not None:
                        break
                    time.sleep(0.05)
                who = holder.describe() if holder is not None else "another farm server"
                raise StateFolderBusy(
                    f"the state folder {folder} is in use by {who}: one server per state "
                    "folder; stop that one first"
                ) from None
            # ENOLCK and friends: a share without working locks. The record still guards.
            log.warning(
                "cannot lock %s (%s): relying on its holder record alone",
                folder / LOCK_NAME,
                exc.strerror,
            )

    @staticmethod
    def _read(descriptor: int) -> Holder | None:
        try:
            data = platform.pread(descriptor, RECORD_BYTES, 0)
        except OSError:
            return None
        return Holder.decode(data) if data.strip() else None

    @staticmethod
    def _check_previous(folder: Path, descriptor: int, previous: Holder) -> None:
        """Refuse while the record's writer may be alive on a host our lock does not reach."""
        if previous.state == "stopped":
            return
        if previous.boot_id == _boot_id():
            # Same kernel: its lock would have stopped us, so that server is gone.
            log.info("%s is gone (it did not stop cleanly)", previous.describe())
            return
        age = time.time() - previous.refreshed_at
        busy = (
            f"the state folder {folder} is in use by {previous.describe()}: one server per "
            "state folder; stop that one first"
        )
        if is_fresh(previous.refreshed_at, time.time()):
            raise StateFolderBusy(f"{busy} (its record was refreshed {age:.0f} s ago)")
        log.info(
            "the state folder's record names %s, last refreshed %.0f s ago by this host's "
            "clock: watching its record for %.0f s",
            previous.describe(),
            age,
            WATCH_SECONDS,
        )
        deadline = time.monotonic() + WATCH_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.25)
            seen = StateLock._read(descriptor)
            if seen is not None and (seen.beat, seen.refreshed_at, seen.claim) != (
                previous.beat,
                previous.refreshed_at,
                previous.claim,
            ):
                raise StateFolderBusy(f"{busy} (its record changed while watched)")
        log.warning(
            "took over the state folder from %s: its record has not changed for %.0f s",
            previous.describe(),
            max(age, WATCH_SECONDS),
        )

    def _write(self) -> None:
        platform.pwrite(self.fd, self.holder.encode(), 0)
        os.fsync(self.fd)

    def update(self, port: int) -> None:
        """Record the port actually bound (``--port 0``)."""
        self.holder.port = port
        with contextlib.suppress(OSError):
            self._write()

    def _refresh_loop(self) -> None:
        # A thread, not a task: a long snapshot that blocks the event loop must not make
        # a live server look gone to other hosts.
        failing = False
        while not self._stop.wait(REFRESH_SECONDS):
            lost = self._check()
            if lost is not None:
                self._lost = lost
                if self.on_lost is not None:
                    self.on_lost(lost)
                return
            self.holder.beat += 1
            self.holder.refreshed_at = time.time()
            try:
                self._write()
                failing = False
                self._tell_beat()
            except OSError as exc:
                if not failing:
                    log.warning("cannot refresh %s: %s", self.path, exc.strerror)
                failing = True

    def _check(self) -> str | None:
        """Why the state folder is no longer ours, or None."""
        try:
            at_path = os.stat(self.path)
            own = os.fstat(self.fd)
        except OSError:
            at_path = None
        if at_path is None or (at_path.st_dev, at_path.st_ino) != (own.st_dev, own.st_ino):
            return (
                f"the lock file {self.path} is no longer at its path (deleted or replaced "
                "while the server ran)"
            )
        seen = self._read(self.fd)
        if seen is not None and seen.claim != self.holder.claim:
            return f"{seen.describe()} took over the state folder {self.path.parent}"
        return None

    def release(self) -> None:
        """Say the folder is free (a server on another host may take it at once) and unlock."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._lost is None and self._check() is None:
            self.holder.state = "stopped"
            self.holder.refreshed_at = time.time()
            with contextlib.suppress(OSError):
                self._write()
            self._tell_beat()
        os.close(self.fd)

    def _tell_beat(self) -> None:
        if self.on_beat is not None:
            try:
                self.on_beat(self.holder)
            except Exception:  # the record is a convenience: never the lock's end
                log.exception("telling of the lock's beat failed")
