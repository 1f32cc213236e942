"""A submit of any size, taken in pieces: the server's event loop never waits long on one.

A million-task submit is about 20 MB of msgpack. Decoded in one call, checked, hashed for
its idempotency key and encoded again for the journal, it held the event loop for ~15 s
on the development VM. Here each of those steps goes a piece of tasks at a time and
yields to the loop between pieces (:data:`PIECE` tasks): workers, dashboards and other
submits are answered meanwhile. The bytes are the same as one call would make: the
digest and the journal record do not depend on how they were cut.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgpack

from buildcat import protocol
from buildcat.errors import ProtocolError
from buildcat.server.journal import HEADER

#: Tasks made between two yields to the event loop (see also :class:`Pacer`).
PIECE = 1_000
#: The longest one piece of a submit holds the event loop (seconds), however busy the CPU.
SLICE = 0.02
#: A body this big is a big job (~50,000 small tasks): see :func:`buildcat.server.heap.building`.
BIG_BODY = 1024 * 1024


class Pacer:
    """Lets the event loop run once :data:`SLICE` has passed since it last did: on a
    loaded machine pieces get smaller, not longer."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since = time.perf_counter()

    async def tick(self) -> None:
        if time.perf_counter() - self._since >= SLICE:
            await asyncio.sleep(0)
            self._since = time.perf_counter()


async def decode_body(data: bytes) -> dict[str, Any]:
    """A msgpack submit body: a map whose ``tasks`` list is read one task at a time, each
    checked like any decoded body (nesting, 64-bit integers)."""
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=False, max_buffer_size=max(len(data), 1024)
    )
    unpacker.feed(data)
    body: dict[str, Any] = {}
    try:
        try:
            size = unpacker.read_map_header()
        except msgpack.UnpackValueError:
            protocol.unpack(data)  # malformed says so; else it is something other than a map
            raise ProtocolError("the body must be a map") from None
        for _ in range(size):
            key = unpacker.unpack()
            if key == "tasks":
                body[key] = await _read_tasks(unpacker)
            else:
                value = unpacker.unpack()
                protocol.check_depth({key: value})
                body[key] = value
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"malformed msgpack body: {exc}") from exc
    if unpacker.tell() != len(data):
        raise ProtocolError("malformed msgpack body: extra data after the map")
    return body


async def _read_tasks(unpacker: msgpack.Unpacker) -> Any:
    try:
        count = unpacker.read_array_header()
    except msgpack.UnpackValueError:
        return unpacker.unpack()  # not a list: the submit's own check says so
    tasks = []
    pacer = Pacer()
    for _ in range(count):
        item = unpacker.unpack()
        # body (0) > tasks (1) > the task (2): its own items are 3 deep.
        protocol.check_depth(item, protocol.MAX_DEPTH - 2)
        tasks.append(item)
        await pacer.tick()
    return tasks


async def digest(body: dict[str, Any]) -> str:
    """SHA-256 of the body without its ``key``, packed (what a repeat must match): the
    same bytes as ``protocol.pack`` of that map, hashed a piece at a time."""
    packer = msgpack.Packer(use_bin_type=True)
    hashed = hashlib.sha256()
    items = [(k, v) for k, v in body.items() if k != "key"]
    hashed.update(packer.pack_map_header(len(items)))
    for key, value in items:
        hashed.update(packer.pack(key))
        if key == "tasks" and isinstance(value, list):
            hashed.update(packer.pack_array_header(len(value)))
            await _pack_list(value, packer, hashed.update)
        else:
            hashed.update(_pack(packer, value))
    return hashed.hexdigest()


def task_item(packed: bytes, depends: Sequence[int]) -> bytes:
    """A submit event's ``[payload, depends]`` for one task, packed, its payload packed
    already (the bytes ``msgpack`` makes of that pair)."""
    return b"\x92" + packed + (msgpack.packb(list(depends)) if depends else b"\x90")


async def encode_event(
    event: list[Any], bulky: int, items: Iterable[Any], count: int, packed: bool = False
) -> bytes:
    """A journal record (``journal.encode``) of ``event`` whose item at index ``bulky`` is
    the list ``items`` (``count`` long), packed a piece at a time; ``packed``: the items
    are packed already (:func:`task_item`)."""
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_array_header(len(event))]
    for index, value in enumerate(event):
        if index == bulky:
            parts.append(packer.pack_array_header(count))
            await _pack_list(items, packer, parts.append, packed)
        else:
            parts.append(_pack(packer, value))
    size = sum(len(part) for part in parts)
    checksum, pacer = 0, Pacer()
    for part in parts:  # the checksum a piece at a time too
        checksum = zlib.crc32(part, checksum)
        await pacer.tick()
    return b"".join([HEADER.pack(size, checksum), *parts])


async def _pack_list(
    items: Iterable[Any], packer: msgpack.Packer, out: Callable[[bytes], Any], packed: bool = False
) -> None:
    """Pack the items of a list (its header is the caller's), yielding between pieces;
    ``packed``: each item is its bytes already."""
    piece: list[bytes] = []
    pacer = Pacer()
    for done, item in enumerate(items, 1):
        piece.append(item if packed else _pack(packer, item))
        if done % 100 == 0:
            out(b"".join(piece))
            piece = []
            await pacer.tick()
    out(b"".join(piece))


def _pack(packer: msgpack.Packer, value: Any) -> bytes:
    try:
        return packer.pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {type(value).__name__} as msgpack: {exc}") from exc
