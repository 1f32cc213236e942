"""What a task prints: captured for its result and written, capped, to its log file.

The log file is ``<root>/.buildcat/logs/JOB/TASK.log``. Each attempt's part of it is
capped at ``BUILDCAT_MAX_TASK_LOG`` bytes (default 8 MiB): the first half is written as
it is printed, then the last half is kept in memory and written when the task ends,
with a line that says how much was left out between them. A log file that cannot be
written (a full or read-only root) never fails the task: the file is given up, and
the tail that goes back with the result says so.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections import deque
from typing import BinaryIO

from buildcat import auth
from buildcat.errors import FarmError
from buildcat.root import open_private_log

#: The environment variable that caps each attempt's part of a task log.
MAX_LOG_VARIABLE = "BUILDCAT_MAX_TASK_LOG"
DEFAULT_MAX_LOG_BYTES = 8 * 1024 * 1024
#: A cap below this would leave no room for the head, the tail and the notes.
MIN_MAX_LOG_BYTES = 1024
_SIZE = re.compile(r"\s*(\d+)\s*([KMG]i?B?|B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``8388608``, ``8M``, ``512KiB``, ``1G`` -> bytes; FarmError for anything else."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise FarmError(
            f"{MAX_LOG_VARIABLE} must be a size in bytes like 8388608, 512K or 8M, not {text!r}"
        )
    unit = (match[2] or "B")[0].upper()
    size = int(match[1]) * {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit]
    if size < MIN_MAX_LOG_BYTES:
        raise FarmError(f"{MAX_LOG_VARIABLE} must be at least {MIN_MAX_LOG_BYTES} bytes")
    return size


def max_log_bytes(environ: dict[str, str] | None = None) -> int:
    """The cap from the environment (checked by the worker at start)."""
    value = (os.environ if environ is None else environ).get(MAX_LOG_VARIABLE, "").strip()
    return parse_size(value) if value else DEFAULT_MAX_LOG_BYTES


class TaskLog(io.TextIOBase):
    """``sys.stdout`` and ``sys.stderr`` of a running task."""

    def __init__(self, tail_chars: int = 64 * 1024, max_bytes: int = DEFAULT_MAX_LOG_BYTES) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.tail_chars = tail_chars
        self.max_bytes = max_bytes
        self.path: str | None = None
        self.header = ""
        self._file: BinaryIO | None = None
        self._wrapper: io.TextIOWrapper | None = None
        self._written = 0
        self._held: deque[bytes] = deque()
        self._held_bytes = 0
        self._left_out = 0
        self._capped = False
        self._lost = ""
        self._redactor: auth.Redactor | None = None

    def start(self, path: str | None, header: str) -> None:
        self.path, self.header = path, header
        self._written = self._held_bytes = self._left_out = 0
        self._held.clear()
        self._capped = False
        # A task that prints the secret (an environment dump) writes [farm secret].
        self._redactor = auth.Redactor(auth.task_secret())

    @property
    def _head_bytes(self) -> int:
        return self.max_bytes // 2

    @property
    def _tail_bytes(self) -> int:
        return self.max_bytes - self._head_bytes

    def write(self, text: str) -> int:
        if self._redactor is None:
            self._redactor = auth.Redactor(auth.task_secret())
        self._write(self._redactor.feed(text))
        return len(text)

    def _write(self, text: str) -> None:
        if not text:
            return
        self._remember(text)
        if self.path is not None:
            self._log(text.encode("utf-8", "replace"))

    def _remember(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size > 2 * self.tail_chars:
            joined = "".join(self.parts)[-self.tail_chars :]
            self.parts, self.size = [joined], len(joined)

    def _log(self, data: bytes) -> None:
        try:
            if self._file is None:
                self._wrapper = open_private_log(self.path or "")
                self._file = self._wrapper.buffer  # type: ignore[assignment]
                self._put(self.header.encode("utf-8", "replace"))
            if not self._capped:
                room = self._head_bytes - self._written
                if len(data) <= room:
                    self._put(data)
                    return
                self._put(data[:room])
                data = data[room:]
                self._capped = True
                self._put(
                    f"\n--- buildcat: this attempt printed more than {self._head_bytes:,} "
                    f"bytes; the rest is held back and its last {self._tail_bytes:,} bytes "
                    f"are written when the task ends ({MAX_LOG_VARIABLE}="
                    f"{self.max_bytes}) ---\n".encode()
                )
            self._hold(data)
        except (OSError, ValueError) as exc:
            self._give_up(exc)

    def _put(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._written += len(data)
        if b"\n" in data:
            self._file.flush()  # `farm logs --follow` sees each line as it is printed

    def _hold(self, data: bytes) -> None:
        self._held.append(data)
        self._held_bytes += len(data)
        while self._held_bytes - len(self._held[0]) >= self._tail_bytes:
            dropped = self._held.popleft()
            self._held_bytes -= len(dropped)
            self._left_out += len(dropped)
        excess = self._held_bytes - self._tail_bytes
        if excess > 0:
            self._held[0] = self._held[0][excess:]
            self._held_bytes -= excess
            self._left_out += excess

    def _give_up(self, exc: BaseException) -> None:
        # A full or read-only root must not fail the task: stop writing the file.
        path, self.path = self.path, None
        reason = getattr(exc, "strerror", None) or str(exc)
        self._lost = f"buildcat: the task log {path} could not be written ({reason}); only "
        self._lost += "this tail of the output is kept\n"
        self._close_quietly()

    def _close_quietly(self) -> None:
        wrapper, self._wrapper, self._file = self._wrapper, None, None
        if wrapper is not None:
            try:
                wrapper.close()
            except (OSError, ValueError):
                # Unflushed bytes that cannot be written: drop them, close the descriptor.
                with contextlib.suppress(OSError, ValueError):
                    os.close(wrapper.fileno())

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except (OSError, ValueError) as exc:
                self._give_up(exc)

    def _finish_file(self) -> None:
        if self._file is None or self.path is None:
            return
        try:
            if self._capped:
                self._put(
                    f"\n--- buildcat: {self._left_out:,} bytes of output left out here; "
                    f"the log keeps the first {self._head_bytes:,} and the last "
                    f"{self._tail_bytes:,} bytes of each attempt ({MAX_LOG_VARIABLE}) ---\n"
                    .encode()
                )  # fmt: skip
                for chunk in self._held:
                    self._put(chunk)
                if self._held and not self._held[-1].endswith(b"\n"):
                    self._put(b"\n")
            self._file.flush()
        except (OSError, ValueError) as exc:
            self._give_up(exc)

    def take(self) -> str:
        """End the task's log: write the held tail, close the file, return the tail."""
        if self._redactor is not None:
            self._write(self._redactor.end())
        self._finish_file()
        self._close_quietly()
        self._held.clear()
        self.path = None
        if self._lost:  # said last, where the tail that goes back with the result ends
            self._remember(("" if "".join(self.parts[-1:]).endswith("\n") else "\n") + self._lost)
            self._lost = ""
        text = "".join(self.parts)[-self.tail_chars :]
        self.parts, self.size = [], 0
        return text
