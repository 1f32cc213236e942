"""The journal: every change to the queue, appended to a file before the client is answered.

Records are ``[length u32][crc32 u32][msgpack event]``. Writes are grouped: whatever was
appended while one write+fsync ran goes out in the next, so a busy server pays one fsync
for many requests. On start the server replays the file; a torn last record (a crash in
the middle of a write) is cut off with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from buildcat import protocol
from buildcat.errors import FarmError

log = logging.getLogger(__name__)

HEADER = struct.Struct(">II")


class JournalError(FarmError):
    """The journal cannot be read or written."""


def read_events(path: Path) -> Iterator[list[Any]]:
    """The events in the journal, in order; cuts a torn or corrupt tail off the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise JournalError(f"cannot read the journal {path}: {exc.strerror}") from None
    offset = 0
    while offset < len(data):
        if offset + HEADER.size > len(data):
            break
        length, checksum = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        record = data[start : start + length]
        if len(record) < length or zlib.crc32(record) != checksum:
            break
        try:
            event = protocol.unpack(record, trusted=True)
        except FarmError:
            break
        yield event
        offset = start + length
    if offset < len(data):
        log.warning(
            "journal %s: skipped a torn record at byte %d (%d bytes); the server probably "
            "crashed while writing it",
            path,
            offset,
            len(data) - offset,
        )
        with open(path, "r+b") as handle:
            handle.truncate(offset)


class Journal:
    """Appends events; :meth:`commit` returns once everything appended so far is on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.file = open(path, "ab")  # noqa: SIM115 - open for the server's lifetime
        except OSError as exc:
            raise JournalError(f"cannot open the journal {path}: {exc.strerror}") from None
        self.buffer: list[bytes] = []
        self.written = 0  # events on disk
        self.appended = 0  # events appended
        self._writer: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self.failed: str | None = None

    def append(self, *event: Any) -> None:
        record = protocol.pack(list(event))
        self.buffer.append(HEADER.pack(len(record), zlib.crc32(record)) + record)
        self.appended += 1

    async def commit(self) -> None:
        """Wait until every event appended so far is written and fsynced."""
        target = self.appended
        while self.written < target:
            if self.failed is not None:
                raise JournalError(self.failed)
            if self._writer is None or self._writer.done():
                self._writer = asyncio.create_task(self._write())
            self._done.clear()
            await self._done.wait()
        if self.failed is not None:
            raise JournalError(self.failed)

    async def _write(self) -> None:
        try:
            while self.buffer:
                chunk, self.buffer = b"".join(self.buffer), []
                count = self.appended
                try:
                    await asyncio.to_thread(self._sync_write, chunk)
                except OSError as exc:
                    self.failed = f"cannot write the journal {self.path}: {exc.strerror}"
                    log.error("%s", self.failed)
                    return
                self.written = count
        finally:
            self._done.set()

    def _sync_write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.file.flush()
        os.fsync(self.file.fileno())

    def restart(self, generation: int) -> None:
        """Start an empty journal of a new generation: everything appended so far is in a
        snapshot already on disk. Call with no write in flight (right after commit())."""
        self.file.close()
        self.file = open(self.path, "wb")  # noqa: SIM115 - open for the server's lifetime
        record = protocol.pack(["generation", generation])
        self._sync_write(HEADER.pack(len(record), zlib.crc32(record)) + record)
        self.buffer = []
        self.written = self.appended
        self._done.set()

    def close(self) -> None:
        if self.buffer:
            try:
                self._sync_write(b"".join(self.buffer))
                self.buffer = []
            except OSError:
                pass
        self.file.close()


def replay(scheduler: Any, events: Iterator[list[Any]]) -> int:
    """Apply recorded events to a fresh scheduler, in order; returns how many."""
    count = 0
    for event in events:
        try:
            _apply(scheduler, event)
        except (FarmError, ValueError, TypeError) as exc:
            log.warning("journal: skipped event %d (%s): %s", count, event[:1], exc)
        count += 1
    return count


def _apply(scheduler: Any, event: list[Any]) -> None:
    from buildcat.server.scheduler import TaskSpec

    kind, now, *args = event
    if kind == "submit":
        job_id, specs, name, job_kind, priority, requires, attempts, owner, meta, timeout, *rest = (
            args
        )
        key, digest = [*rest, "", ""][:2]  # journals from before idempotency keys lack them
        scheduler.submit(
            [TaskSpec(payload=payload, depends=depends) for payload, depends in specs],
            now, name=name, kind=job_kind, priority=priority, requires=requires,
            max_attempts=attempts, owner=owner, meta=meta, job_id=job_id, timeout=timeout,
            key=key, digest=digest,
        )  # fmt: skip
    elif kind == "register":
        worker_id, name, slots, capabilities, info = args
        scheduler.register(name, slots, capabilities, now, info=info, worker_id=worker_id)
    elif kind == "unregister":
        scheduler.unregister(args[0], now)
    elif kind == "lease":
        scheduler.lease_exactly(args[0], args[1], now)
    elif kind == "complete":
        worker_id, task_id, result, log_text, *timing = args  # older journals: no timing
        scheduler.complete(worker_id, task_id, result, now, log_text, *timing)
    elif kind == "fail":
        worker_id, task_id, error, traceback, log_text, *timing = args
        scheduler.fail(worker_id, task_id, error, traceback, now, log_text, True, *timing)
    elif kind == "priority":
        scheduler.set_priority(args[0], args[1])
    elif kind == "release":
        scheduler.release(args[0], args[1], now)
    elif kind == "requeue":
        scheduler.requeue_exactly(args[0], now)
    elif kind == "cancel":
        scheduler.cancel(args[0], now)
    elif kind == "pause":
        scheduler.pause(args[0])
    elif kind == "resume":
        scheduler.resume(args[0])
    elif kind == "retry":
        scheduler.retry(args[0], now)
    elif kind == "unblock":
        scheduler.unblock(args[0], args[1])
    else:
        raise JournalError(f"unknown event {kind!r}")
