"""The journal: every change to the queue, appended to a file before the client is answered.

Records are ``[length u32][crc32 u32][msgpack event]``. Writes are grouped: whatever was
appended while one write+fsync ran goes out in the next, so a busy server pays one fsync
for many requests. On start the server replays the file one record at a time. Only a torn
*final* record (a crash in the middle of the last write) is cut off, with a warning;
damage anywhere else stops the server (:class:`JournalDamaged`) unless it was started with
``--salvage``, which sets the damaged bytes aside and replays every intact record.

A write that fails (disk full) is undone (the file is cut back to its last whole record)
and answered 503; the next write that succeeds ends that state by itself. A change is
applied only once its record is written (:meth:`Journal.commit` ``then``), so a failed
write drops it whole; records of what had happened already (a lease handed out) stay
buffered for the next write. A journal that is
no longer at its path, or that someone else wrote to, is never written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from buildcat import platform, protocol
from buildcat.errors import FarmError

log = logging.getLogger(__name__)

HEADER = struct.Struct(">II")
#: Reads go this far ahead: replay holds one chunk, or one record when it is bigger.
READ_CHUNK = 1024 * 1024
#: Every kind of event the server journals (the first item of each record's list).
KINDS = (
    "generation", "submit", "register", "unregister", "lease", "complete", "fail",
    "priority", "release", "requeue", "cancel", "pause", "resume", "retry", "unblock",
    "notify", "notified",
    "archive", "unarchive", "delete", "requeue-task",
    "worker-set", "worker-requeue", "worker-forget",
)  # fmt: skip
# Where an intact record may start, found by what its body begins with: a msgpack array
# (every event is a list: up to 15 items in one byte, else 0xdc and a 16-bit count) whose
# first item is the name of an event kind.
_RECORD_START = re.compile(
    b"(?=(?:[\\x91-\\x9f]|\\xdc[\\x00-\\xff]{2})(?:"
    + b"|".join(re.escape(bytes([0xA0 | len(k)]) + k.encode()) for k in KINDS)
    + b"))",
    re.DOTALL,
)

T = TypeVar("T")


class JournalError(FarmError):
    """The journal cannot be read or written."""


class JournalGone(JournalError):
    """The journal at its path is no longer the file this server writes: it was deleted or
    replaced, or someone else wrote to it. Nothing more is written to it."""


@dataclass(slots=True, frozen=True)
class Damage:
    """Bytes of the journal that are not intact records, up to the next intact one."""

    offset: int
    length: int
    #: The record (counted from 1) that should have started at ``offset``.
    record: int
    reason: str


class JournalDamaged(JournalError):
    """Damage before the end of the journal: replaying past it could change the queue."""

    def __init__(self, path: Path, damage: Damage, intact_after: int) -> None:
        self.path, self.damage, self.intact_after = path, damage, intact_after
        super().__init__(
            f"the journal {path} is damaged at byte {damage.offset} (record {damage.record}: "
            f"{damage.reason}; {damage.length} byte(s) up to "
            + (
                f"the next intact record, {intact_after} intact record(s) after it)"
                if intact_after
                else "the end, no intact record after it)"
            )
            + ": the server changed nothing; start it with --salvage to set the damaged bytes "
            "aside and replay every intact record"
        )


@dataclass(slots=True)
class JournalReader:
    """Reads a journal one record at a time, checking each (memory: one read chunk or one
    record). Iterate :meth:`events`; afterwards ``torn``, ``damage`` and ``end`` say what
    was found. Reading never changes the file."""

    path: Path
    #: Damage is recorded and skipped instead of raising :class:`JournalDamaged`.
    salvage: bool = False
    #: Once set (after the first record, the generation), reading goes on from this offset:
    #: the records before it are in a snapshot already.
    resume_at: int = 0
    #: ``(offset, bytes)`` of a torn final record, which a start cuts off.
    torn: tuple[int, int] | None = None
    damage: list[Damage] = field(default_factory=list)
    #: Intact records read.
    records: int = 0
    #: Where the last intact record ends (the file's length once a torn tail is cut).
    end: int = 0
    _size: int = 0
    _handle: Any = None
    _buffer: memoryview = field(default_factory=lambda: memoryview(b""))
    _buffer_at: int = 0

    def events(self) -> Generator[list[Any], None, None]:
        try:
            self._handle = open(self.path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return
        except OSError as exc:
            raise JournalError(f"cannot read the journal {self.path}: {exc.strerror}") from None
        try:
            self._size = os.fstat(self._handle.fileno()).st_size
            offset = 0
            while offset < self._size:
                parsed = self._record_at(offset)
                if isinstance(parsed, tuple):
                    event, offset = parsed
                    self.records += 1
                    self.end = offset
                    yield event
                    if self.resume_at > offset:
                        offset = self.end = self.resume_at
                        self.resume_at = 0
                    continue
                following = self._next_record(offset + 1)
                if following is None and self._may_be_torn(offset):
                    self.torn = (offset, self._size - offset)
                    return
                damage = Damage(
                    offset, (following or self._size) - offset, self.records + 1, parsed
                )
                if not self.salvage:
                    intact = 0 if following is None else self._count_intact(following)
                    raise JournalDamaged(self.path, damage, intact)
                self.damage.append(damage)
                if following is None:
                    return
                offset = following
        finally:
            self._handle.close()
            self._buffer = memoryview(b"")

    def _read(self, offset: int, size: int) -> memoryview:
        """``size`` bytes at ``offset`` (fewer at the end of the file)."""
        start = offset - self._buffer_at
        if start < 0 or start + size > len(self._buffer):
            self._handle.seek(offset)
            self._buffer = memoryview(self._handle.read(max(size, READ_CHUNK)))
            self._buffer_at, start = offset, 0
        return self._buffer[start : start + size]

    def _record_at(self, offset: int) -> tuple[list[Any], int] | str:
        """The intact record at ``offset`` and where the next begins, or why there is none."""
        header = self._read(offset, HEADER.size)
        if len(header) < HEADER.size:
            return "half a record header at the end"
        length, checksum = HEADER.unpack(header)
        end = offset + HEADER.size + length
        if end > self._size:
            return f"a record of {length} byte(s) that runs past the end of the file"
        body = self._read(offset + HEADER.size, length)
        if zlib.crc32(body) != checksum:
            return "checksum mismatch"
        try:
            # msgpack reads the memoryview in place: no copy of a big record.
            event = protocol.unpack(cast(bytes, body), trusted=True)
        except FarmError:
            return "checksum matches but the record does not decode"
        if not isinstance(event, list) or not event or not isinstance(event[0], str):
            return "not an event"
        return event, end

    def _next_record(self, start: int) -> int | None:
        """Where the next intact record after damage begins, or None."""
        window = 4 * READ_CHUNK
        position = start
        while position < self._size:
            self._handle.seek(position)
            chunk = self._handle.read(window + 64)  # a match at the window's edge fits
            for match in _RECORD_START.finditer(chunk):
                if match.start() >= window:
                    break  # the next window looks at it
                # The header sits in front of the body the pattern matches.
                candidate = position + match.start() - HEADER.size
                if candidate >= start and isinstance(self._record_at(candidate), tuple):
                    return candidate
            position += window
        return None

    def _may_be_torn(self, offset: int) -> bool:
        """Could the bytes from ``offset`` to the end be the beginning of one record whose
        write a crash interrupted? (A header cut short, or one whose record runs past the
        end; or zeros, where a file system extended the file before the data landed.)"""
        header = self._read(offset, HEADER.size)
        if len(header) < HEADER.size:
            return True
        length, _ = HEADER.unpack(header)
        if offset + HEADER.size + length > self._size:
            return True
        position = offset
        while position < self._size:
            chunk = self._read(position, READ_CHUNK)
            if chunk.tobytes().strip(b"\x00"):
                return False
            position += len(chunk)
        return True

    def _count_intact(self, offset: int) -> int:
        count = 0
        while offset < self._size:
            parsed = self._record_at(offset)
            if not isinstance(parsed, tuple):
                break
            count, offset = count + 1, parsed[1]
        return count


def read_events(path: Path) -> Iterator[list[Any]]:
    """The events in the journal, in order (without a torn final record); raises
    :class:`JournalDamaged` at damage before the end. Never changes the file."""
    return JournalReader(path).events()


def encode(event: list[Any]) -> bytes:
    record = protocol.pack(event)
    return HEADER.pack(len(record), zlib.crc32(record)) + record


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable."""
    platform.fsync_folder(folder)


def open_private(path: Path, flags: int) -> int:
    """Open (creating it 0600) a file only the farm's user may read, like the secret; one an
    older release created readable is made private too."""
    descriptor = os.open(path, flags | os.O_CREAT | platform.OPEN_FLAGS, 0o600)
    try:
        platform.make_private(descriptor)
    except OSError:
        os.close(descriptor)
        raise
    return descriptor


class Journal:
    """Appends events; :meth:`commit` returns once the events its request appended are on
    disk, and raises :class:`JournalError` (answered 503) when they cannot be."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = open_private(path, os.O_RDWR)
            self.size = os.fstat(self.fd).st_size
        except OSError as exc:
            raise JournalError(f"cannot open the journal {path}: {exc.strerror}") from None
        self.buffer: list[bytes] = []
        #: For each buffered record: a fact (applied already, so kept through a failed write
        #: for the next one) or a change still waiting on this write (dropped with it).
        self._facts: list[bool] = []
        #: The generation its first record names (0: none yet).
        self.generation = 0
        self.written = 0  # events settled: on disk, or refused
        self.appended = 0  # events appended
        self._writer: asyncio.Task[None] | None = None
        self._waiting: deque[tuple[int, asyncio.Future[None], Callable[[], None] | None]] = deque()
        #: Why the last write failed (cleared by the next one that succeeds).
        self.failed: str | None = None
        #: Why nothing is ever written again (see :class:`JournalGone`).
        self.gone: str | None = None
        # Where a write that failed got to: the file is cut back to ``size`` before the
        # next one, so the bytes of a half-written record never stay in front of others.
        self._attempted: int | None = None

    def append(self, *event: Any) -> None:
        """Encode (raises ProtocolError before anything is appended) and buffer an event
        that has happened already (a lease handed out): a write that fails keeps it for the
        next one, so the file never misses what the server's memory holds."""
        self.append_record(encode(list(event)), fact=True)

    def append_record(self, record: bytes, fact: bool = False) -> None:
        """Buffer an event :func:`encode` made; one that is not a ``fact`` is a change
        applied only once written (:meth:`commit` ``then``), dropped if the write fails."""
        self.appended += 1
        if self.gone is None:
            self.buffer.append(record)
            self._facts.append(fact)

    async def commit(self, then: Callable[[], None] | None = None) -> None:
        """Wait until every event appended so far is written and fsynced. ``then`` runs the
        moment they are (in the order of the events, whether or not the caller still waits),
        and never when they cannot be: a change applied by ``then`` is never ahead of disk."""
        target = self.appended
        if target <= self.written:
            if then is not None:
                then()
            return
        if self.gone is not None:
            raise JournalError(self.gone)
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((target, future, then))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        await future

    async def settle(self) -> None:
        """Wait until nothing is buffered or being written (raises if the last write failed)."""
        while True:
            await self.commit()
            if self._writer is None or self._writer.done():
                if self.failed is not None:
                    raise JournalError(self.failed)
                if self.gone is not None:
                    raise JournalError(self.gone)
                if not self.buffer:
                    return
            else:
                await asyncio.shield(self._writer)

    async def _write(self) -> None:
        while self.buffer and self.gone is None:
            records, facts = self.buffer, self._facts
            chunk, self.buffer, self._facts = b"".join(records), [], []
            count = self.appended
            try:
                await asyncio.to_thread(self._sync_write, chunk)
            except JournalGone as exc:
                self.refuse(str(exc))
                return
            except OSError as exc:
                message = f"cannot write the journal {self.path}: {exc.strerror}"
                if self.failed is None:
                    log.error(
                        "journal: %s: changes are refused (503) until a write succeeds", message
                    )
                self.failed = message
                self._settle(count, message)
                kept = [record for record, fact in zip(records, facts, strict=True) if fact]
                self.buffer[:0], self._facts[:0] = kept, [True] * len(kept)
                if len(self.buffer) == len(kept):
                    return  # only facts left: tried again with the next change's write
                continue
            if self.failed is not None:
                log.warning("journal: writes succeed again; changes are accepted")
                self.failed = None
            self._settle(count, None)

    def _settle(self, count: int, error: str | None) -> None:
        self.written = max(self.written, count)
        while self._waiting and self._waiting[0][0] <= count:
            _, future, then = self._waiting.popleft()
            if error is None and then is not None:
                try:
                    then()
                except Exception:  # a bug: the writer must go on for the other requests
                    log.exception("journal: applying a written change failed")
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(JournalError(error))

    def refuse(self, reason: str) -> None:
        """Never write again (the journal is gone or someone else writes it): every change
        is answered 503 with ``reason``. Safe to call more than once."""
        if self.gone is not None:
            return
        self.gone = reason
        self.buffer, self._facts = [], []
        log.error(
            "journal: %s: every change is refused (503) from now on; what was acknowledged "
            "lives on in this server's memory only: stop it, put the state folder right and "
            "start it again",
            reason,
        )
        self._settle(self.appended, reason)

    def _check_in_place(self) -> None:
        """Raise JournalGone unless the file at our path is ours and holds only our bytes."""
        try:
            at_path = os.stat(self.path)
        except FileNotFoundError:
            at_path = None
        own = os.fstat(self.fd)
        if at_path is None or (at_path.st_dev, at_path.st_ino) != (own.st_dev, own.st_ino):
            raise JournalGone(
                f"the journal {self.path} is no longer at its path (deleted or replaced while "
                "the server ran)"
            )
        expected = self.size if self._attempted is None else self._attempted
        if own.st_size != expected:
            raise JournalGone(
                f"the journal {self.path} was changed by another process ({own.st_size} "
                f"bytes where this server wrote {expected}): is a second server writing it?"
            )

    def _sync_write(self, chunk: bytes) -> None:
        self._check_in_place()
        if self._attempted is not None:
            self._cut_back()
        view, offset = memoryview(chunk), self.size
        self._attempted = offset
        try:
            while view:
                written = platform.pwrite(self.fd, view, offset)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                offset += written
                self._attempted = offset
                view = view[written:]
            os.fsync(self.fd)
        except OSError:
            with contextlib.suppress(OSError):  # else tried again before the next write
                self._cut_back()
            raise
        self.size, self._attempted = offset, None

    def _cut_back(self) -> None:
        os.ftruncate(self.fd, self.size)
        os.fsync(self.fd)
        self._attempted = None

    def restart(self, generation: int, snapshot: Callable[[], T] | None = None) -> T | None:
        """Start an empty journal of a new ``generation``; returns what ``snapshot`` did.

        ``snapshot`` must put everything appended so far durably into a snapshot (or be
        None when that is so already: a journal older than the snapshot, or an empty one).
        The new journal is prepared first and takes the old one's place only after
        ``snapshot`` returned, and only if the old one holds nothing this server did not
        write: nothing that is not in a snapshot is ever destroyed. Call with nothing in
        flight (after :meth:`settle`)."""
        if self.gone is not None:
            raise JournalError(self.gone)
        try:
            self._check_in_place()
        except JournalGone as exc:
            self.refuse(str(exc))
            raise
        fresh, fresh_path = self._fresh(generation)
        try:
            os.fsync(fresh)
            result = snapshot() if snapshot is not None else None
        except BaseException:
            _discard(fresh, fresh_path)  # nothing changed: the old journal goes on
            raise
        try:
            self._check_in_place()
            os.replace(fresh_path, self.path)
        except (OSError, JournalGone) as exc:
            _discard(fresh, fresh_path)
            # The snapshot of this generation is in place: the old journal's later records
            # would be taken for stale at the next start, so none may be acknowledged.
            reason = str(exc) if isinstance(exc, JournalGone) else exc.strerror
            self.refuse(
                f"snapshot {generation} is in place but the journal did not restart: {reason}"
            )
            raise JournalError(self.gone or reason) from None
        old, self.fd = self.fd, fresh
        os.close(old)
        self.size, self._attempted = os.fstat(fresh).st_size, None
        self.generation = generation
        try:
            fsync_folder(self.path.parent)
        except OSError as exc:
            log.warning("journal: cannot fsync %s: %s", self.path.parent, exc.strerror)
        self.buffer, self._facts = [], []
        self.written = self.appended
        return result

    async def rebase(self, generation: int, offset: int) -> None:
        """Start a journal of a new ``generation`` that holds only this one's records from
        ``offset`` on (a snapshot holds those before it). The records are copied off the
        event loop while the server goes on; only the last few are copied with nothing in
        flight (after :meth:`settle`)."""
        if self.gone is not None:
            raise JournalError(self.gone)
        fresh, fresh_path = self._fresh(generation)
        try:
            copied = offset
            while self.size - copied > READ_CHUNK:  # what is on disk already, in a thread
                end = self.size
                await asyncio.to_thread(_copy_range, self.fd, fresh, copied, end)
                copied = end
            await self.settle()
            # From here to the swap nothing awaits: no record is appended meanwhile.
            self._finish_rebase(fresh, fresh_path, generation, copied)
        except BaseException:
            _discard(fresh, fresh_path)
            raise

    def rebase_now(self, generation: int, offset: int) -> None:
        """:meth:`rebase` at a start, before anything is appended."""
        fresh, fresh_path = self._fresh(generation)
        try:
            self._finish_rebase(fresh, fresh_path, generation, offset)
        except BaseException:
            _discard(fresh, fresh_path)
            raise

    def _fresh(self, generation: int) -> tuple[int, Path]:
        fresh_path = self.path.with_name(self.path.stem + ".tmp")
        fresh = open_private(fresh_path, os.O_RDWR | os.O_TRUNC)
        try:
            os.write(fresh, encode(["generation", generation]))
        except BaseException:
            _discard(fresh, fresh_path)
            raise
        return fresh, fresh_path

    def _finish_rebase(self, fresh: int, fresh_path: Path, generation: int, copied: int) -> None:
        _copy_range(self.fd, fresh, copied, self.size)
        os.fsync(fresh)
        self._swap(fresh, fresh_path, generation)

    def _swap(self, fresh: int, fresh_path: Path, generation: int) -> None:
        """The fresh journal takes this one's place (both complete, nothing in flight)."""
        try:
            self._check_in_place()
            os.replace(fresh_path, self.path)
        except (OSError, JournalGone) as exc:
            reason = str(exc) if isinstance(exc, JournalGone) else exc.strerror
            # The snapshot holds its mark in this journal: appending to it stays right.
            raise JournalError(
                f"the journal did not restart as generation {generation}: {reason}"
            ) from None
        old, self.fd = self.fd, fresh
        os.close(old)
        self.size, self._attempted = os.fstat(fresh).st_size, None
        self.generation = generation
        try:
            fsync_folder(self.path.parent)
        except OSError as exc:
            log.warning("journal: cannot fsync %s: %s", self.path.parent, exc.strerror)

    def close(self) -> None:
        if self.buffer and self.gone is None:
            with contextlib.suppress(OSError, JournalError):  # unacknowledged: may be lost
                self._sync_write(b"".join(self.buffer))
                self.buffer, self._facts = [], []
        os.close(self.fd)


def _discard(fresh: int, fresh_path: Path) -> None:
    with contextlib.suppress(OSError):
        os.close(fresh)
    with contextlib.suppress(OSError):
        fresh_path.unlink()


def _copy_range(source: int, target: int, start: int, end: int) -> None:
    """Append bytes ``start`` to ``end`` of the file ``source`` to the file ``target``."""
    position = start
    while position < end:
        data = platform.pread(source, min(READ_CHUNK, end - position), position)
        if not data:
            raise OSError(errno.EIO, f"the journal ended at byte {position}, not {end}")
        os.write(target, data)
        position += len(data)


@dataclass(slots=True)
class Recovery:
    """What a start found in the journal."""

    journal: Journal
    #: The journal's generation; older than the snapshot's means it is in the snapshot.
    generation: int
    replayed: int
    #: Damaged parts set aside by ``--salvage``, as (file, damage).
    set_aside: list[tuple[Path, Damage]]
    #: The journal must start afresh (stale, empty or salvaged) once this start is done.
    restart: bool
    #: The snapshot holds the journal up to this offset: it must start afresh with only
    #: what follows (:meth:`Journal.rebase_now`).
    rebase: int | None = None


def recover(
    path: Path,
    scheduler: Any,
    snapshot_generation: int,
    *,
    salvage: bool = False,
    after: tuple[int, int] | None = None,
) -> Recovery:
    """Replay the journal at ``path`` onto a scheduler that holds the snapshot of
    ``snapshot_generation``, one record at a time; cut a torn final record off; with
    ``salvage``, set damaged parts aside. Raises JournalDamaged (changing nothing) for
    damage without ``salvage``. ``after``: the older journal generation and the offset in
    it up to which the snapshot holds it (a snapshot written while the server ran): a
    journal of that generation is replayed from there on, and is to be rebased
    (``Recovery.rebase``) rather than restarted."""
    reader = JournalReader(path, salvage=salvage)
    events = reader.events()
    generation, replayed, stale = 0, 0, False
    first = next(events, None)
    if first is not None and first[0] == "generation":
        generation = int(first[1])
    elif first is not None:
        if reader.damage and reader.damage[0].offset == 0 and snapshot_generation:
            # Without its generation, a journal beside a snapshot cannot be placed.
            raise JournalError(
                f"the journal {path} is damaged in its first record, its generation: whether "
                "it is in the snapshot already cannot be told; move it aside to start from "
                "the snapshot alone"
            )
        replayed += _apply_counted(scheduler, first, replayed)
    resumed = after is not None and generation == after[0] < snapshot_generation
    if resumed:
        assert after is not None
        size = path.stat().st_size
        if after[1] > size:
            events.close()
            raise JournalError(
                f"the snapshot holds the journal {path} up to byte {after[1]} but it has "
                f"{size}: it was cut short; move it aside to start from the snapshot alone"
            )
        reader.resume_at = after[1]
        for event in events:
            replayed += _apply_counted(scheduler, event, replayed)
    elif generation < snapshot_generation:
        stale = True  # a crash right after a snapshot: this journal is in it already
        events.close()
    else:
        for event in events:
            replayed += _apply_counted(scheduler, event, replayed)
    set_aside = [] if stale else _set_aside(path, reader.damage)
    if reader.torn is not None and not stale:
        offset, length = reader.torn
        log.warning(
            "journal %s: skipped a torn record at byte %d (%d bytes); the server probably "
            "crashed while writing it",
            path,
            offset,
            length,
        )
        try:
            os.truncate(path, offset)
        except OSError as exc:
            raise JournalError(f"cannot cut the torn record off {path}: {exc.strerror}") from None
    journal = Journal(path)
    journal.generation = generation
    restart = stale or journal.size == 0 or bool(set_aside)
    rebase = after[1] if resumed and after is not None and not restart else None
    return Recovery(journal, generation, replayed, set_aside, restart, rebase)


def _apply_counted(scheduler: Any, event: list[Any], index: int) -> int:
    try:
        _apply(scheduler, event)
    except (FarmError, ValueError, TypeError) as exc:
        log.warning("journal: skipped event %d (%s): %s", index, event[:1], exc)
    return 1


def _set_aside(path: Path, damage: list[Damage]) -> list[tuple[Path, Damage]]:
    """Copy each damaged part into a file of its own beside the journal."""
    if not damage:
        return []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = []
    with open(path, "rb") as source:
        for part in damage:
            aside = path.with_name(f"{path.stem}-damaged-{stamp}-at-{part.offset}.bin")
            source.seek(part.offset)
            descriptor = open_private(aside, os.O_WRONLY | os.O_TRUNC)
            with os.fdopen(descriptor, "wb") as handle:
                remaining = part.length
                while remaining:
                    data = source.read(min(remaining, READ_CHUNK))
                    handle.write(data)
                    remaining -= len(data)
                handle.flush()
                os.fsync(handle.fileno())
            log.warning(
                "journal %s: set aside %d damaged byte(s) at byte %d (record %d: %s) in %s",
                path,
                part.length,
                part.offset,
                part.record,
                part.reason,
                aside,
            )
            kept.append((aside, part))
    if kept:
        fsync_folder(path.parent)
    return kept


#: The job actions of ``POST /api/v1/jobs/{job}/{action}``, as replayed.
_STEERING: dict[str, Callable[[Any, str, float, Any], Any]] = {
    "cancel": lambda scheduler, job_id, now, _: scheduler.cancel(job_id, now),
    "pause": lambda scheduler, job_id, now, _: scheduler.pause(job_id),
    "resume": lambda scheduler, job_id, now, _: scheduler.resume(job_id),
    "retry": lambda scheduler, job_id, now, _: scheduler.retry(job_id, now),
    "unblock": lambda scheduler, job_id, now, worker: scheduler.unblock(job_id, worker),
}


def _by(args: list[Any], index: int) -> str:
    """Who steered, from a record that says (journals before named tokens do not: "")."""
    return str(args[index]) if len(args) > index and isinstance(args[index], str) else ""


def replay(scheduler: Any, events: Iterator[list[Any]]) -> int:
    """Apply recorded events to a fresh scheduler, in order; returns how many."""
    count = 0
    for event in events:
        count += _apply_counted(scheduler, event, count)
    return count


def _apply(scheduler: Any, event: list[Any]) -> None:
    from buildcat.server.scheduler import TaskSpec

    kind, now, *args = event
    if kind == "submit":
        job_id, specs, name, job_kind, priority, requires, attempts, owner, meta, timeout, *rest = (
            args
        )
        # Journals from before idempotency keys lack them; from before jobs after jobs, after.
        key, digest, after, after_any = [*rest, "", "", [], False][:4]
        scheduler.submit(
            [TaskSpec(payload=payload, depends=depends) for payload, depends in specs],
            now, name=name, kind=job_kind, priority=priority, requires=requires,
            max_attempts=attempts, owner=owner, meta=meta, job_id=job_id, timeout=timeout,
            key=key, digest=digest, after=after, after_any=bool(after_any),
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
        worker_id, task_id, error, traceback, log_text, *rest = args
        # Older journals: no timing (before perf records), no job-fault flag.
        started_at, seconds, job_fault = [*rest, None, None, False][:3]
        scheduler.fail(
            worker_id, task_id, error, traceback, now, log_text, True, started_at, seconds,
            job_fault=bool(job_fault),
        )  # fmt: skip
    elif kind == "priority":  # [kind, now, job id, priority, by] (older: no by)
        scheduler.set_priority(args[0], args[1])
        scheduler.note(args[0], now, kind, _by(args, 2), priority=args[1])
    elif kind == "release":
        scheduler.release(args[0], args[1], now)
    elif kind == "requeue":
        scheduler.requeue_exactly(args[0], now)
    elif kind in _STEERING:  # [kind, now, job id, worker (unblock) or None, by]
        worker = args[1] if len(args) > 1 else None
        _STEERING[kind](scheduler, args[0], now, worker)
        extra = {"worker": worker} if kind == "unblock" and worker is not None else {}
        scheduler.note(args[0], now, kind, _by(args, 2), **extra)
    elif kind == "notify":  # the server's --notify URLs, given to a job it found unfinished
        job = scheduler.job(args[0])
        if isinstance(job.meta, dict):
            job.meta["notify"] = list(args[1])
    elif kind == "notified":  # a job-end notice delivered or given up: owed no more
        scheduler.notices.settle(args[0])
    elif kind in ("archive", "unarchive"):  # [kind, now, job id, by]
        scheduler.archive(args[0], now, args[1], archived=kind == "archive")
    elif kind == "delete":  # [kind, now, job id, by]: the job's logs went with it
        scheduler.delete(args[0], now)
    elif kind == "requeue-task":  # [kind, now, task id, by]
        scheduler.requeue_task(args[0], now, args[1])
    elif kind == "worker-set":  # [kind, now, worker name, changes, source, by]
        from buildcat.server import workerset

        workerset.apply(scheduler.worker_settings, args[0], args[1], args[2])
    elif kind == "worker-requeue":  # [kind, now, worker name, by]
        scheduler.requeue_worker(args[0], now)
    elif kind == "worker-forget":  # [kind, now, worker name, by]
        scheduler.forget_worker(args[0])
    else:
        raise JournalError(f"unknown event {kind!r}")
