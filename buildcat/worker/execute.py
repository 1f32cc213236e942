"""Child processes that run job functions and stay alive between tasks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import sys
from collections.abc import Callable
from typing import Any

from buildcat import protocol

HEADER = struct.Struct(">I")
#: The largest frame a child may send back (a result, a log tail).
MAX_FRAME = protocol.MAX_BODY_BYTES


class ChildDied(Exception):
    """The child exited (crashed, was killed) while running a task."""


class Child:
    """One long-lived Python process that runs tasks sent to it, one at a time."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self) -> None:
        # The worker's own FARM_TOKEN stays with the worker: tasks get FARM_TOKEN_FILE.
        inherited = {key: value for key, value in os.environ.items() if key != "FARM_TOKEN"}
        env = {**inherited, **self.env, "PYTHONUNBUFFERED": "1"}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "buildcat.worker.child",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=2**20,
        )
        hello = await self._read()
        if hello.get("type") != "ready":
            raise ChildDied(f"child did not start: {hello!r}")

    async def _read(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        try:
            header = await self.process.stdout.readexactly(HEADER.size)
            (length,) = HEADER.unpack(header)
            if length > MAX_FRAME:
                raise ChildDied(f"child sent a frame of {length} bytes")
            data = await self.process.stdout.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            code = await self.process.wait()
            raise ChildDied(f"the process running the task exited with code {code}") from exc
        message = protocol.unpack(data, trusted=True)
        if not isinstance(message, dict):
            raise ChildDied("child sent a malformed frame")
        return message

    async def run(
        self,
        task_id: str,
        payload: dict[str, Any],
        on_progress: Callable[[float, str], None],
        attempt: int = 0,
    ) -> dict[str, Any]:
        """Run one task; returns the result frame or raises ChildDied."""
        if self.process is None or self.process.returncode is not None:
            await self.start()
        assert self.process is not None and self.process.stdin is not None
        frame = protocol.pack(
            {
                "task": task_id,
                "attempt": attempt,
                "function": payload.get("function"),
                "args": payload.get("args", []),
                "kwargs": payload.get("kwargs", {}),
            }
        )
        try:
            self.process.stdin.write(HEADER.pack(len(frame)) + frame)
            await self.process.stdin.drain()
        except (ConnectionError, BrokenPipeError) as exc:
            code = await self.process.wait()
            raise ChildDied(f"the process running the task exited with code {code}") from exc
        while True:
            message = await self._read()
            if message.get("type") == "progress":
                on_progress(float(message.get("fraction", 0.0)), str(message.get("message", "")))
                continue
            return message

    def interrupt(self) -> None:
        """Ask the running task to stop (it raises TaskCancelled inside the job function)."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGUSR1)

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def close(self) -> None:
        """Ask the child to leave (end of its stdin), killing it if it lingers."""
        if self.process is None or self.process.returncode is not None:
            return
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 2.0)
        except TimeoutError:
            self.kill()
            await self.process.wait()
