"""Child processes that run job functions and stay alive between tasks.

A worker may send a child several tasks in one write (a batch of quick tasks): the child
runs them in order and answers each on its own. A cancel then names the request it is
for: its number goes down a pipe of its own (POSIX) before a signal that says so, so it
stops that task and no other; where there is no such pipe, a child is sent one task at
a time and the cancel signal stops whatever it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import buildcat
from buildcat import platform, protocol
from buildcat.errors import FarmError
from buildcat.jobs.script import python_in
from buildcat.worker import processes
from buildcat.worker.child import CANCEL_FD_VARIABLE, CANCEL_SEQ, PIPED_CANCEL_SIGNAL

log = logging.getLogger(__name__)

HEADER = struct.Struct(">I")
#: The largest frame a child may send back (a result, a log tail).
MAX_FRAME = protocol.MAX_BODY_BYTES
#: Whether children get a cancel pipe (and so can take several tasks at once).
CANCEL_PIPES = os.name == "posix" and PIPED_CANCEL_SIGNAL is not None


def check_python(choice: str) -> str:
    """``farm worker --python``: the interpreter's path, once it is known to run tasks.

    ``choice`` is a Python program (a path, or a name on PATH) or a virtual environment's
    folder. Tasks run there in ``python -m buildcat.worker.child``, so buildcat must
    import there, at the version of this worker (the protocol between them is not
    versioned); a FarmError of one line says which of these is not so."""
    path = Path(choice)
    found = shutil.which(str(python_in(path) or path) if path.is_dir() else choice)
    if found is None:
        raise FarmError(f"--python {choice}: no Python program there (a path, a name on PATH "
                        "or a virtual environment's folder)")  # fmt: skip
    probe = "import buildcat; print(buildcat.__version__)"
    try:
        done = subprocess.run(
            [found, "-c", probe], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FarmError(f"--python {choice}: it does not run ({exc})") from None
    version = done.stdout.strip()
    if done.returncode != 0 or not version:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        install = f"{found} -m pip install buildcat=={buildcat.__version__}"
        raise FarmError(f"--python {choice}: buildcat does not import there ({last}); "
                        f"install it with: {install}")  # fmt: skip
    if version != buildcat.__version__:
        raise FarmError(f"--python {choice} has buildcat {version}, this worker "
                        f"{buildcat.__version__}: install the same version there")  # fmt: skip
    return os.path.abspath(found)


class ChildDied(Exception):
    """The child exited (crashed, was killed) while running a task."""


class ChildConfused(ChildDied):
    """The child sent a frame that is not an answer to the task it was given: it has been
    killed, and the task has not run to an end the worker can trust."""


class Child:
    """One long-lived Python process that runs tasks sent to it, one at a time.

    It runs in a session of its own; everything it starts carries its token (see
    :mod:`buildcat.worker.processes`), and all of that is ended when it exits."""

    def __init__(self, env: dict[str, str], python: str | None = None) -> None:
        self.env = env
        #: The interpreter it runs in: the worker's own, or ``farm worker --python``'s.
        self.python = python or sys.executable
        self.process: asyncio.subprocess.Process | None = None
        self.token = ""
        self.seq = 0
        #: The request whose answer is awaited now (the task the child runs, or is about to).
        self.running_seq = 0
        #: Where cancels are written (``None``: no pipe, one task at a time).
        self.cancel_pipe: int | None = None
        self._reaper: asyncio.Task[None] | None = None

    @property
    def takes_batches(self) -> bool:
        """Whether several tasks may be sent at once: a cancel can name the one it means."""
        return self.cancel_pipe is not None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self) -> None:
        """Start the process (ending one still there, and whatever it left running)."""
        await self.stop()
        self.token = secrets.token_hex(8)
        # The worker's own FARM_TOKEN stays with the worker: tasks get FARM_TOKEN_FILE.
        inherited = {key: value for key, value in os.environ.items() if key != "FARM_TOKEN"}
        env = {
            **inherited,
            **self.env,
            "PYTHONUNBUFFERED": "1",
            processes.TOKEN_VARIABLE: self.token,
        }
        extra: dict[str, Any] = {}
        cancel_read = -1
        if sys.platform != "win32" and CANCEL_PIPES:
            cancel_read, self.cancel_pipe = os.pipe()
            os.set_blocking(self.cancel_pipe, False)  # a child that reads none never blocks us
            env[CANCEL_FD_VARIABLE] = str(cancel_read)
            extra["pass_fds"] = (cancel_read,)
        try:
            self.process = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "buildcat.worker.child",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                limit=2**20,
                **platform.new_group(),
                **extra,
            )
        finally:
            if cancel_read >= 0:
                os.close(cancel_read)  # the child has its own copy
        self._reaper = asyncio.create_task(self._end_what_it_left(self.process, self.token))
        hello = await self._read()
        if hello.get("kind") != "ready":
            raise ChildDied(f"child did not start: {hello!r}")

    async def _end_what_it_left(self, process: asyncio.subprocess.Process, token: str) -> None:
        # Once the child is gone, nothing it started may go on: a daemon that kept the
        # protocol pipe open would otherwise hold this slot until it ended by itself.
        # not process.wait(): that also waits for the pipes to close
        await platform.exited(process)
        platform.kill_group_after_exit(process.pid)
        ended = await asyncio.to_thread(processes.end_marked, token)
        if ended:
            log.warning(
                "ended %d process(es) left by a task process that exited: %s",
                len(ended),
                ", ".join(ended[:20]),
            )

    async def _read(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        try:
            header = await self.process.stdout.readexactly(HEADER.size)
            (length,) = HEADER.unpack(header)
            if length > MAX_FRAME:
                raise self._confused(f"sent a frame of {length} bytes")
            data = await self.process.stdout.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            code = await self.process.wait()
            raise ChildDied(f"the process running the task exited with code {code}") from exc
        try:
            message = protocol.unpack(data, trusted=True)
        except protocol.ProtocolError as exc:
            raise self._confused(f"sent a malformed frame ({exc})") from None
        if not isinstance(message, dict):
            raise self._confused("sent a frame that is not a map")
        return message

    def _confused(self, what: str) -> ChildConfused:
        self.kill()
        return ChildConfused(f"the process running the task {what}; it was replaced")

    async def run(
        self,
        task_id: str,
        payload: dict[str, Any],
        on_progress: Callable[[float, str], None],
        attempt: int = 0,
    ) -> dict[str, Any]:
        """Run one task; returns its result frame or raises ChildDied (ChildConfused)."""
        if self.process is None or self.process.returncode is not None:
            await self.start()
        (seq,) = self.send([(task_id, payload, attempt)])
        await self.drain()
        return await self.receive(task_id, seq, on_progress)

    def send(self, requests: list[tuple[str, dict[str, Any], int]]) -> list[int]:
        """Write ``(task_id, payload, attempt)`` requests in one go; returns their request
        numbers (known before anything is awaited, so a cancel can name them at once).
        The child must be running; :meth:`drain` waits until the pipe took them."""
        assert self.process is not None and self.process.stdin is not None
        assert len(requests) == 1 or self.takes_batches, "one task at a time without a pipe"
        seqs = []
        parts: list[bytes] = []
        for task_id, payload, attempt in requests:
            self.seq += 1
            seqs.append(self.seq)
            frame = protocol.pack(
                {
                    "kind": "run",
                    "task": task_id,
                    "seq": self.seq,
                    "attempt": attempt,
                    "function": payload.get("function"),
                    "args": payload.get("args", []),
                    "kwargs": payload.get("kwargs", {}),
                }
            )
            parts += (HEADER.pack(len(frame)), frame)
        with contextlib.suppress(ConnectionError, BrokenPipeError):
            self.process.stdin.write(b"".join(parts))  # a gone child fails in drain()
        return seqs

    async def drain(self) -> None:
        assert self.process is not None and self.process.stdin is not None
        try:
            await self.process.stdin.drain()
        except (ConnectionError, BrokenPipeError) as exc:
            code = await self.process.wait()
            raise ChildDied(f"the process running the task exited with code {code}") from exc

    async def receive(
        self, task_id: str, seq: int, on_progress: Callable[[float, str], None]
    ) -> dict[str, Any]:
        """The answer to request ``seq`` (task ``task_id``), its progress reports passed to
        ``on_progress`` on the way; a frame for any other request is ChildConfused."""
        self.running_seq = seq
        while True:
            message = await self._read()
            kind = message.get("kind")
            if message.get("task") != task_id or message.get("seq") != seq:
                raise self._confused(
                    f"sent a {kind!r} frame for task {message.get('task')!r} "
                    f"(request {message.get('seq')!r}) while running {task_id} "
                    f"(request {seq})"
                )
            if kind == "progress":
                fraction, text = message.get("fraction"), message.get("message", "")
                if (
                    isinstance(fraction, (int, float))
                    and not isinstance(fraction, bool)
                    and math.isfinite(fraction)
                    and isinstance(text, str)
                ):
                    on_progress(min(1.0, max(0.0, float(fraction))), text)
                else:
                    log.warning("task %s: dropped a malformed progress report", task_id)
                continue
            if kind != "result":
                raise self._confused(f"sent a frame of kind {kind!r} while running {task_id}")
            return message

    def interrupt(self, seq: int) -> None:
        """Ask the task of request ``seq`` to stop (it raises TaskCancelled inside the job
        function; one the child has yet to start ends at once, unrun)."""
        if self.process is not None and self.process.returncode is None:
            if self.cancel_pipe is None or PIPED_CANCEL_SIGNAL is None:
                platform.send_cancel(self.process.pid)  # one task at a time: the one it runs
                return
            with contextlib.suppress(OSError):  # full: the child reads none; it is stuck
                os.write(self.cancel_pipe, CANCEL_SEQ.pack(seq))
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, PIPED_CANCEL_SIGNAL)

    def kill(self) -> None:
        """Kill the child and its process group (the rest follows once it is gone)."""
        if self.process is not None and self.process.returncode is None:
            platform.kill_group(self.process.pid)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def stop(self) -> None:
        """Kill the child (if still there) and wait until what it left is ended too."""
        if self.process is not None and self.process.returncode is None:
            self.kill()
            await self.process.wait()
        if self._reaper is not None:
            with contextlib.suppress(Exception):
                await self._reaper
            self._reaper = None
        if self.cancel_pipe is not None:
            os.close(self.cancel_pipe)
            self.cancel_pipe = None

    async def close(self) -> None:
        """Ask the child to leave (end of its stdin), killing it if it lingers."""
        if self.process is None:
            return
        if self.process.returncode is None:
            if self.process.stdin is not None:
                self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 2.0)
            except TimeoutError:
                self.kill()
        await self.stop()
