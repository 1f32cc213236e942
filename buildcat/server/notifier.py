"""Sends the job-end notices the scheduler owes (:mod:`buildcat.server.notices`).

Each notice has a task of its own on the server's loop: it makes sure the job's end is on
disk, POSTs the signed body with a time limit, waits with backoff after a failure, and
journals ``notified`` once the receiver took it (or it was given up) before anything else
is sent for it. A slow or dead receiver only ever holds its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import aiohttp

import buildcat
from buildcat.errors import FarmError
from buildcat.server import notices
from buildcat.server.journal import Journal
from buildcat.server.notices import Notice
from buildcat.server.scheduler import Scheduler

log = logging.getLogger(__name__)

#: Seconds one POST may take, connecting included.
SEND_TIMEOUT = 10.0
#: POSTs in flight at once, however many notices are owed.
CONCURRENT_SENDS = 16
#: Seconds between tries to write the journal before a notice goes out, when it cannot be.
JOURNAL_RETRY_SECONDS = 5.0


T = TypeVar("T")


class _Config(Protocol):
    @property
    def name(self) -> str: ...


class Owner(Protocol):
    """What the notifier needs of the server's state (``farm.Farm``): the notices owed, the
    journal, the farm's name and secret, and a way to journal a change."""

    scheduler: Scheduler
    journal: Journal | None
    secret: str

    @property
    def config(self) -> _Config: ...

    async def change(self, event: tuple[Any, ...], apply: Callable[[], T]) -> T: ...


class Notifier:
    """The delivery tasks of one server."""

    def __init__(self, farm: Owner) -> None:
        self.farm = farm
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._sends = asyncio.Semaphore(CONCURRENT_SENDS)
        self.running = False

    def start(self) -> None:
        """Begin sending what is owed (the notices a restart found too)."""
        self.running = True
        self.wake()

    def wake(self) -> None:
        """Start a delivery task for every notice made since the last call."""
        if not self.running:
            return
        for notice in self.farm.scheduler.notices.take_fresh():
            if notice.delivery not in self.tasks:
                self.tasks[notice.delivery] = asyncio.create_task(self._deliver(notice))

    async def stop(self) -> None:
        """At shutdown: what was not delivered stays owed in the journal for the next start."""
        self.running = False
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT),
                headers={"User-Agent": f"buildcat/{buildcat.__version__}"},
                # Receivers are the user's own; an answer never holds more than its status.
                connector=aiohttp.TCPConnector(limit=CONCURRENT_SENDS, force_close=True),
            )
        return self._session

    async def _deliver(self, notice: Notice) -> None:
        try:
            await self._job_end_on_disk(notice)
            while True:
                notice.attempts += 1
                outcome = await self._send(notice)
                if outcome is not None:
                    await self._settle(notice, outcome)
                    return
                delay = notices.next_delay(notice.attempts)
                now = time.time()
                if now + delay > notice.ended_at + notices.GIVE_UP_AFTER:
                    log.warning(
                        "notice %s for job %s to %s: given up after %d tries (%s)",
                        notice.delivery, notice.job_id, notice.url, notice.attempts,
                        notice.last_error,
                    )  # fmt: skip
                    await self._settle(notice, "gave up")
                    return
                notice.next_at = now + delay
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: say so; the notice stays owed for the next start
            log.exception("notice %s for job %s: delivery failed", notice.delivery, notice.job_id)
        finally:
            self.tasks.pop(notice.delivery, None)

    async def _job_end_on_disk(self, notice: Notice) -> None:
        """The job's end must be on disk before anyone hears of it (a journal that cannot
        be written now is tried again, as every change is)."""
        journal = self.farm.journal
        while journal is not None:
            try:
                await journal.commit()
                return
            except FarmError as exc:
                log.warning("notice %s waits for the journal: %s", notice.delivery, exc)
                await asyncio.sleep(JOURNAL_RETRY_SECONDS)

    async def _send(self, notice: Notice) -> str | None:
        """One try: "delivered", "gave up" (an answer that says never), or None (again)."""
        now = time.time()
        payload = notices.body(notice, notice.attempts, str(self.farm.config.name), now)
        timestamp = str(int(now))
        headers = {
            "Content-Type": "application/json",
            notices.EVENT_HEADER: notice.event,
            notices.DELIVERY_HEADER: notice.delivery,
            notices.TIMESTAMP_HEADER: timestamp,
            notices.SIGNATURE_HEADER: notices.signature(self.farm.secret, timestamp, payload),
        }
        async with self._sends:
            notice.next_at = None
            try:
                async with self.session().post(
                    notice.url, data=payload, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                notice.last_error = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
                log.info(
                    "notice %s for job %s to %s: try %d failed: %s",
                    notice.delivery, notice.job_id, notice.url, notice.attempts, notice.last_error,
                )  # fmt: skip
                return None
        if 200 <= status < 300:
            log.info(
                "notice %s for job %s delivered to %s (try %d, HTTP %d)",
                notice.delivery, notice.job_id, notice.url, notice.attempts, status,
            )  # fmt: skip
            return "delivered"
        notice.last_error = f"HTTP {status}"
        if notices.permanent(status):
            log.warning(
                "notice %s for job %s to %s: HTTP %d: given up (a 4xx other than 408, 425 "
                "and 429 is not tried again)",
                notice.delivery, notice.job_id, notice.url, status,
            )  # fmt: skip
            return "gave up"
        log.info(
            "notice %s for job %s to %s: try %d answered HTTP %d",
            notice.delivery, notice.job_id, notice.url, notice.attempts, status,
        )  # fmt: skip
        return None

    async def _settle(self, notice: Notice, outcome: str) -> None:
        """Journal that the notice is owed no more, then forget it."""
        scheduler = self.farm.scheduler
        try:
            await self.farm.change(
                ("notified", time.time(), notice.delivery, outcome),
                lambda: scheduler.notices.settle(notice.delivery),
            )
        except FarmError as exc:  # the journal cannot be written: sent again after a restart
            log.error("notice %s: cannot journal that it was %s: %s", notice.delivery, outcome, exc)
            scheduler.notices.settle(notice.delivery)
