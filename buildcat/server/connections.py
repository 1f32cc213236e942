"""Who may hold the server's connections, and for how long: nobody outside the farm can
stop it by opening sockets and sending nothing, half a request, or errors by the thousand.

- a connection that brings no complete request header within ``header_timeout`` of
  opening, or sits ``idle_timeout`` after its last answer with no request, is closed;
- a peer (an IP address) holds at most ``per_peer`` connections that have not yet shown
  the farm secret or the dashboard cookie: a new one closes its oldest such connection;
- the open-files soft limit is raised to the hard limit at start;
- a log message that repeats (``Too many open files``, a flood of bad requests) is
  written once, then once more with a count when it comes again after a quiet spell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from buildcat import platform

log = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_PER_PEER = 128
#: A message seen again within this many seconds is counted, not written.
REPEAT_WINDOW = 10.0
#: Never raise the open-files limit past this (an unlimited hard limit cannot be the soft one).
MAX_OPEN_FILES = 1 << 20


@dataclass(slots=True, eq=False)
class _Connection:
    peer: str
    handler: Any
    transport: asyncio.Transport
    deadline: float
    #: Requests being handled now (a long poll, an event stream): never idle meanwhile.
    busy: int = 0
    authenticated: bool = False


@dataclass(slots=True)
class ConnectionGuard:
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    per_peer: int = DEFAULT_PER_PEER
    #: Every open connection, by its aiohttp protocol (``request.protocol``).
    connections: dict[Any, _Connection] = field(default_factory=dict)
    #: Per peer, its connections not yet authenticated, oldest first.
    waiting: dict[str, OrderedDict[Any, None]] = field(default_factory=dict)
    closed_idle: int = 0
    closed_over_cap: int = 0
    _sweeper: asyncio.Task[None] | None = None

    def install(self, server: web.Server) -> None:
        """Watch every connection ``server`` (the runner's protocol factory) accepts."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self.opened(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            lost(handler, exc)
            self.forget(handler)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        self._sweeper = asyncio.create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    def opened(self, handler: Any, transport: asyncio.Transport) -> None:
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) and peername else "?"
        now = time.monotonic()
        self.connections[handler] = _Connection(peer, handler, transport, now + self.header_timeout)
        waiting = self.waiting.setdefault(peer, OrderedDict())
        waiting[handler] = None
        while len(waiting) > self.per_peer:
            oldest_handler, _ = waiting.popitem(last=False)
            oldest = self.connections[oldest_handler].transport
            self.closed_over_cap += 1
            if self.closed_over_cap == 1 or self.closed_over_cap % 1000 == 0:
                log.warning(
                    "%s holds more than %d connections that never showed the farm secret: "
                    "closing its oldest (%d so far)",
                    peer,
                    self.per_peer,
                    self.closed_over_cap,
                )
            oldest.abort()

    def forget(self, handler: Any) -> None:
        connection = self.connections.pop(handler, None)
        if connection is not None:
            self._unwait(connection)

    def _unwait(self, connection: _Connection) -> None:
        waiting = self.waiting.get(connection.peer)
        if waiting is not None:
            waiting.pop(connection.handler, None)
            if not waiting:
                del self.waiting[connection.peer]

    def started(self, handler: Any) -> None:
        connection = self.connections.get(handler)
        if connection is not None:
            connection.busy += 1

    def ended(self, handler: Any) -> None:
        connection = self.connections.get(handler)
        if connection is not None:
            connection.busy -= 1
            connection.deadline = time.monotonic() + (
                self.idle_timeout if connection.authenticated else self.header_timeout
            )

    def authenticated(self, handler: Any) -> None:
        connection = self.connections.get(handler)
        if connection is not None and not connection.authenticated:
            connection.authenticated = True
            self._unwait(connection)

    async def _sweep(self) -> None:
        tick = max(0.05, min(self.header_timeout, self.idle_timeout) / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            late = [c for c in self.connections.values() if not c.busy and c.deadline <= now]
            for connection in late:
                self.closed_idle += 1
                connection.transport.abort()
            if late:
                log.debug("closed %d idle or half-sent connection(s)", len(late))


@web.middleware
async def connection_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Marks the connection busy while its request is handled (so a long poll or an
    event stream is never taken for an idle connection)."""
    guard = request.app.get(GUARD_KEY)
    if guard is None:
        return await handler(request)
    guard.started(request.protocol)
    try:
        return await handler(request)
    finally:
        guard.ended(request.protocol)


GUARD_KEY = web.AppKey("connection_guard", ConnectionGuard)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's open-files soft limit to its hard limit; returns (before, after)."""
    return platform.raise_open_files_limit(MAX_OPEN_FILES)


class RepeatFilter(logging.Filter):
    """Writes a repeating message once; when it comes again after ``window`` seconds of
    quiet or more, writes it with how many times it came meanwhile."""

    def __init__(self, window: float = REPEAT_WINDOW) -> None:
        super().__init__()
        self.window = window
        self.seen: dict[tuple[str, str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = type(record.exc_info[1]).__name__ if record.exc_info else ""
        key = (record.name, str(record.msg).split("\n", 1)[0], kind)
        now = time.monotonic()
        last = self.seen.get(key)
        if last is not None and now - last[0] < self.window:
            self.seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg = f"{record.msg} (and {last[1]:,} more like it in {now - last[0]:.0f} s)"
            record.exc_info = record.exc_text = None  # the first one carried the traceback
        if len(self.seen) > 1000:
            self.seen.clear()
        self.seen[key] = (now, 0)
        return True


#: The loggers a flood from outside can fill: asyncio's accept errors, aiohttp's bad requests.
FLOODABLE_LOGGERS = ("asyncio", "aiohttp.server", "aiohttp.access", "aiohttp.web")


def install_repeat_filter() -> RepeatFilter:
    repeat = RepeatFilter()
    for name in FLOODABLE_LOGGERS:
        logging.getLogger(name).addFilter(repeat)
    return repeat
