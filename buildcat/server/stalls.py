"""Who holds the event loop: a watchdog thread that, at ``--log-level debug``, logs where
the server's main thread was whenever its event loop is late by more than
:data:`STALL` (the stack of the moment, once per stall). The loop beats every 50 ms
(:meth:`buildcat.server.farm.Farm.watch_loop`); the thread samples between beats."""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback

log = logging.getLogger(__name__)

#: A loop this late is held by someone: say by whom.
STALL = 0.1


class Watchdog:
    def __init__(self) -> None:
        self.beat = time.monotonic()
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="buildcat-stalls", daemon=True)

    def start(self) -> None:
        if log.isEnabledFor(logging.DEBUG):
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        reported = 0.0
        while not self._stop.wait(0.02):
            late = time.monotonic() - self.beat - 0.05
            if late < STALL or reported == self.beat:
                continue
            frame = sys._current_frames().get(self._main or 0)
            if frame is None:
                continue
            reported = self.beat
            where = " <- ".join(
                f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}"
                for f in reversed(traceback.extract_stack(frame)[-8:])
            )
            log.debug("event loop held %.0f ms so far, at %s", late * 1000, where)
