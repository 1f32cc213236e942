"""Big task results live in files under the state folder, not in memory or the journal,
and a job's results stream to the client one after another.

A result whose msgpack form is over :data:`FILE_THRESHOLD` bytes (other than a map of
``outputs``: a render's record, which the server reads) is written to
``<state>/results/<job>/<index>-<nonce>.bin`` (mode 0600: a temporary name, fsynced,
renamed) before its completion is journaled; the task, the journal and the snapshot hold
only a reference, ``{"$result-file": {"name", "size", "crc"}}``. A reader checks the file
against its size and CRC-32: a missing or damaged file is reported for that task, never
read as another task's data (the name carries the task's index, the folder its job).

``GET /api/v1/jobs/{job}/results?offset=&limit=`` streams; ``GET /api/v1/tasks/{task}``
reads the one file. Without a journal the server keeps every result in memory (nothing it
holds outlives it, so nothing is written).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from aiohttp import web

from buildcat import protocol
from buildcat.server import views
from buildcat.server.farm import farm_of
from buildcat.server.replies import reply_type
from buildcat.server.scheduler import Task

log = logging.getLogger(__name__)

API = protocol.API_PREFIX
#: Results packed larger than this go to a file; smaller ones stay in the task record.
FILE_THRESHOLD = 64 * 1024
#: The reserved map keys: a one-key map with a key of this prefix is ours. A task result
#: that looks like one is kept wrapped in ``VALUE_KEY`` and handed back unwrapped.
RESERVED_PREFIX = "$result-"
FILE_KEY = "$result-file"
VALUE_KEY = "$result-value"
#: What a results reply holds in place of a result that cannot be read (see the docs).
ERROR_KEY = "$result-error"
#: A streamed reply is sent in pieces of about this many bytes (or this many results).
PIECE_BYTES = 1024 * 1024
PIECE_ITEMS = 4096
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FILE_NAME = re.compile(r"(\d{1,7})-[0-9a-f]{16}\.bin")


class ResultUnreadable(Exception):
    """A task's result file is missing or damaged; the message says which and how."""


def escape(result: Any) -> Any:
    """``result`` as the task record keeps it: as it is, unless it looks like a reference."""
    if isinstance(result, dict) and len(result) == 1:
        (key,) = result
        if isinstance(key, str) and key.startswith(RESERVED_PREFIX):
            return {VALUE_KEY: result}
    return result


def reference_of(recorded: Any) -> dict[str, Any] | None:
    """The file reference a task record holds, or None for a result kept inline."""
    if isinstance(recorded, dict) and len(recorded) == 1 and FILE_KEY in recorded:
        ref = recorded[FILE_KEY]
        return ref if isinstance(ref, dict) else {}
    return None


def unescape(recorded: Any) -> Any:
    """A result kept inline, as the task returned it."""
    if isinstance(recorded, dict) and len(recorded) == 1 and VALUE_KEY in recorded:
        return recorded[VALUE_KEY]
    return recorded


@dataclass(slots=True)
class Kept:
    """What a completion records for one result, and the file written for it (if any)."""

    recorded: Any
    path: Path | None = None


class ResultStore:
    """The ``results`` folder of one server's state folder (``enabled`` with a journal)."""

    def __init__(self, folder: Path, *, enabled: bool = True) -> None:
        self.folder = folder
        self.enabled = enabled

    def job_folder(self, job_id: str) -> Path:
        if not _JOB_ID.fullmatch(job_id):  # ids are ours; never a path that leaves results/
            raise ValueError(f"not a job id: {job_id!r}")
        return self.folder / job_id

    # ---- writing -----------------------------------------------------------------------

    def plan(self, task_id: str, result: Any) -> tuple[Any, bytes | None]:
        """``(recorded, packed)``: what the task record keeps, and the bytes that must go to
        a file first (None when the result stays inline). Cheap; runs on the loop."""
        if not self.enabled or result is None or isinstance(result, bool | int | float):
            return escape(result), None
        if isinstance(result, dict) and isinstance(result.get("outputs"), list):
            # A render's record (frames, outputs): the server reads it for the frame list,
            # thumbnails and the dashboard, so it stays in the task record, whatever its size.
            return result, None
        packed = protocol.pack(result)
        job_id, _, index = task_id.rpartition(".")
        if len(packed) <= FILE_THRESHOLD or not _JOB_ID.fullmatch(job_id) or not index.isdigit():
            return escape(result), None
        return None, packed

    def write(self, task_id: str, packed: bytes) -> Kept:
        """Write one result's file durably (temporary name, fsync, rename); returns the
        reference to record. Blocking: call it in a thread."""
        job_id, _, index = task_id.rpartition(".")
        folder = self.job_folder(job_id)
        if not folder.is_dir():
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # private, as logs/ is
            folder.mkdir(mode=0o700, exist_ok=True)
        # A nonce per write: two reports of one task (a late one and the current holder's)
        # never write the same file, so the one recorded is the one its reference names.
        name = f"{int(index)}-{secrets.token_hex(8)}.bin"
        path = folder / name
        temporary = folder / f".{name}.part"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        descriptor = os.open(temporary, flags, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(packed)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        reference = {"name": name, "size": len(packed), "crc": zlib.crc32(packed)}
        return Kept({FILE_KEY: reference}, path)

    def write_all(self, pending: list[tuple[str, bytes]]) -> list[Kept]:
        """:meth:`write` for several results, then each folder synced once (the renames
        are durable before the completions that name them are journaled)."""
        kept: list[Kept] = []
        try:
            for task_id, packed in pending:
                kept.append(self.write(task_id, packed))
        except BaseException:
            self.remove_files(k.path for k in kept)
            raise
        for folder in {k.path.parent for k in kept if k.path is not None}:
            _sync_folder(folder)
        return kept

    def remove_files(self, paths: Iterable[Path | None]) -> None:
        for path in paths:
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()

    def path_of(self, task_id: str, recorded: Any) -> Path | None:
        """The file a task record names, or None (a result kept inline, or a bad name)."""
        reference = reference_of(recorded)
        name = reference.get("name") if reference else None
        job_id, _, index = task_id.rpartition(".")
        match = _FILE_NAME.fullmatch(name) if isinstance(name, str) else None
        if match is None or not index.isdigit() or int(match.group(1)) != int(index):
            return None
        try:
            return self.job_folder(job_id) / match.group(0)
        except ValueError:
            return None

    def remove_job(self, job_id: str) -> None:
        """A deleted job's result files go (blocking: call it in a thread)."""
        try:
            shutil.rmtree(self.job_folder(job_id))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("job %s: cannot remove its result files: %s", job_id, exc)
            return
        log.info("job %s: removed its result files", job_id)

    def sweep(self, known: set[str]) -> int:
        """Remove the folders of jobs the server does not hold (deleted while the server
        stopped before their files went). Blocking: call it in a thread."""
        removed = 0
        if not self.enabled or not self.folder.is_dir():
            return removed
        for entry in self.folder.iterdir():
            if entry.is_dir() and entry.name not in known and _JOB_ID.fullmatch(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed

    # ---- reading -----------------------------------------------------------------------

    def read_packed(self, task_id: str, recorded: Any) -> bytes:
        """The msgpack bytes of a task's result; raises ResultUnreadable for a missing or
        damaged file. Blocking for a file: call it in a thread."""
        reference = reference_of(recorded)
        if reference is None:
            return protocol.pack(unescape(recorded))
        path = self.path_of(task_id, recorded)
        size, crc = reference.get("size"), reference.get("crc")
        if path is None or not isinstance(size, int):
            raise ResultUnreadable(f"task {task_id}: its result reference is malformed")
        where = f"results/{path.parent.name}/{path.name}"
        try:
            with open(path, "rb") as handle:
                data = handle.read(size + 1)
        except FileNotFoundError:
            raise ResultUnreadable(f"task {task_id}: its result file {where} is missing") from None
        except (OSError, ValueError) as exc:
            raise ResultUnreadable(
                f"task {task_id}: cannot read its result file {where}: {exc}"
            ) from None
        if len(data) != size:
            raise ResultUnreadable(
                f"task {task_id}: its result file {where} is damaged "
                f"({'more than ' if len(data) > size else ''}{min(len(data), size):,} bytes, "
                f"{size:,} expected)"
            )
        if zlib.crc32(data) != crc:
            raise ResultUnreadable(f"task {task_id}: its result file {where} is damaged (checksum)")
        return data

    def read(self, task_id: str, recorded: Any) -> Any:
        """A task's result, as it returned it (ResultUnreadable, see :meth:`read_packed`)."""
        if reference_of(recorded) is None:
            return unescape(recorded)
        try:
            return protocol.unpack(self.read_packed(task_id, recorded), trusted=True)
        except protocol.ProtocolError:
            raise ResultUnreadable(f"task {task_id}: its result file is damaged") from None

    def encoded(self, task_id: str, recorded: Any, content_type: str) -> bytes:
        """One item of a results reply, in the reply's format; an unreadable result is an
        ``{"$result-error": why}`` item, so the others still arrive."""
        try:
            if content_type == protocol.MSGPACK:
                return self.read_packed(task_id, recorded)
            return protocol.encode(self.read(task_id, recorded), content_type, exact=False)
        except ResultUnreadable as exc:
            log.error("%s", exc)
            return protocol.encode({ERROR_KEY: str(exc)}, content_type, exact=False)
        except protocol.ProtocolError as exc:
            message = f"task {task_id}: its result cannot be shown as {content_type}: {exc}"
            return protocol.encode({ERROR_KEY: message}, content_type, exact=False)

    def piece(
        self, items: list[tuple[str, Any]], position: int, content_type: str
    ) -> tuple[bytes, int]:
        """The next piece of a results reply from ``items[position]`` on, joined as the
        format wants it (about PIECE_BYTES or PIECE_ITEMS), and where the next one starts.
        Blocking (files): call it in a thread."""
        parts: list[bytes] = []
        size = 0
        end = position
        while end < len(items) and len(parts) < PIECE_ITEMS and size < PIECE_BYTES:
            task_id, recorded = items[end]
            parts.append(self.encoded(task_id, recorded, content_type))
            size += len(parts[-1])
            end += 1
        if content_type == protocol.MSGPACK:
            return b"".join(parts), end
        return (b"," if position else b"") + b",".join(parts), end


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform opens folders (Windows)
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


STORE_KEY = web.AppKey("result_store", ResultStore)


def store_of(request: web.Request) -> ResultStore:
    return request.app[STORE_KEY]


# ---- routes -------------------------------------------------------------------------------


async def job_results(request: web.Request) -> web.StreamResponse:
    """A job's results in task order, streamed: ``{"id", "state", "offset", "total",
    "results": [...]}`` written piece by piece (files read in a thread), so the reply is
    never built whole; ``offset`` and ``limit`` ask for a page of it."""
    farm = farm_of(request)
    store = store_of(request)
    job = farm.scheduler.job(request.match_info["job"])
    offset = views.query_number(request.query, "offset", 0, 0, 10**9)
    limit = (
        views.query_number(request.query, "limit", 0, 0, 10**9)
        if "limit" in request.query
        else None
    )
    tasks: list[Task] = job.tasks[offset : None if limit is None else offset + limit]
    # What the reply holds is taken now (references are small): it is the job as it was
    # when asked, whatever happens while it streams.
    items = [(task.id, task.result) for task in tasks]
    content_type = reply_type(request)
    head = {"id": job.id, "state": str(job.state), "offset": offset, "total": len(job.tasks)}
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    if content_type == protocol.MSGPACK:
        packer = msgpack.Packer(use_bin_type=True)
        start = packer.pack_map_header(len(head) + 1)
        start += b"".join(packer.pack(key) + packer.pack(value) for key, value in head.items())
        start += packer.pack("results") + packer.pack_array_header(len(items))
        end = b""
    else:
        start = protocol.encode(head, content_type)[:-1] + b', "results": ['
        end = b"]}"
    loop = asyncio.get_running_loop()
    try:
        await response.write(start)
        position = 0
        while position < len(items):
            data, position = await loop.run_in_executor(
                None, store.piece, items, position, content_type
            )
            await response.write(data)
        await response.write(end)
        await response.write_eof()
    except ConnectionResetError:  # the reader left (it had what it wanted): nothing lost
        log.debug("results of job %s: the reader left before the end", job.id)
    return response


async def task_result(store: ResultStore, task: Task) -> tuple[Any, str]:
    """``(result, why it cannot be read)`` of one task, its file read in a thread."""
    if reference_of(task.result) is None:
        return unescape(task.result), ""
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, store.read, task.id, task.result), ""
    except ResultUnreadable as exc:
        log.error("%s", exc)
        return None, str(exc)


def add_routes(app: web.Application, store: ResultStore) -> None:
    app[STORE_KEY] = store
    app.router.add_get(f"{API}/jobs/{{job}}/results", job_results)
