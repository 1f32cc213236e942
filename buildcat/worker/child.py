"""The child process a worker keeps alive between tasks; runs job functions one at a time.

Frames on stdin/stdout are a 4-byte big-endian length and a msgpack map. The function's
own prints are captured and sent back with its result as the task log.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import sys
import threading
import time
import traceback
from typing import Any, BinaryIO

from buildcat import protocol
from buildcat.jobs import context
from buildcat.jobs.context import TaskCancelled
from buildcat.jobs.python import load_function
from buildcat.root import open_private_log

HEADER = struct.Struct(">I")
#: Results travel in reports to the server, a few per message: keep each one modest.
MAX_RESULT_BYTES = 4 * 1024 * 1024


class _Capture(io.TextIOBase):
    """Collects what a task prints: the tail goes back with the result, the whole of it
    to the task's log file under the root (created on the first write only)."""

    def __init__(self, limit: int = 64 * 1024) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.limit = limit
        self.log_path: str | None = None
        self.header = ""
        self._file: io.TextIOWrapper | None = None

    def start(self, log_path: str | None, header: str) -> None:
        self.log_path, self.header = log_path, header

    def write(self, text: str) -> int:
        self.parts.append(text)
        self.size += len(text)
        if self.size > 2 * self.limit:
            joined = "".join(self.parts)[-self.limit :]
            self.parts, self.size = [joined], len(joined)
        if self.log_path is not None:
            try:
                if self._file is None:
                    self._file = open_private_log(self.log_path)
                    self._file.write(self.header)
                self._file.write(text)
            except OSError:
                self.log_path = None  # a full or read-only root must not fail the task
        return len(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def take(self) -> str:
        text = "".join(self.parts)[-self.limit :]
        self.parts, self.size = [], 0
        if self._file is not None:
            self._file.close()
            self._file = None
        self.log_path = None
        return text


def read_frame(stream: BinaryIO) -> Any | None:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (length,) = HEADER.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        return None
    return protocol.unpack(data)


def _cancel(signum: int, frame: object) -> None:
    # The class job code can import (buildcat.TaskCancelled): this module runs as __main__.
    raise TaskCancelled("cancelled")


class ResultError(Exception):
    """A job function returned something that cannot travel back to the server."""


def check_result(result: Any) -> None:
    """Refuse results msgpack cannot carry, that are too big or nested too deeply."""
    try:
        size = len(protocol.pack(result))
        protocol.check_depth(result)
    except protocol.ProtocolError as exc:
        raise ResultError(f"the result cannot be sent back: {exc}") from None
    if size > MAX_RESULT_BYTES:
        raise ResultError(
            f"the result is {size:,} bytes, more than the {MAX_RESULT_BYTES:,} a task may "
            "return: write large outputs to files under the farm root and return their paths"
        )


def _watch_parent(parent: int) -> None:
    # A worker killed with SIGKILL cannot stop its children: they notice and leave.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def main() -> None:
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # C-level prints must never land in the protocol stream
    stdin = sys.stdin.buffer
    lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        try:
            data = protocol.pack(message)
        except protocol.ProtocolError as exc:
            data = protocol.pack(
                {"type": "result", "ok": False, "error": str(exc), "traceback": ""}
            )
        with lock:
            out.write(HEADER.pack(len(data)) + data)

    # Ctrl-C or systemd's SIGTERM reach the whole process group; the worker decides what
    # happens to tasks (drain, give back), so the child leaves only when told to.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a cancel that arrives between tasks
    root = os.environ.get("BUILDCAT_ROOT", os.getcwd())
    if root not in sys.path:
        sys.path.insert(0, root)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    capture = _Capture()
    real_stdout, real_stderr = sys.stdout, sys.stderr
    send({"type": "ready", "pid": os.getpid()})
    while True:
        request = read_frame(stdin)
        if request is None:
            return
        task_id = request.get("task", "")

        def report(fraction: float, message: str, task_id: str = task_id) -> None:
            send({"type": "progress", "task": task_id, "fraction": fraction, "message": message})

        context.set_current(
            context.TaskContext(
                root=root,
                worker_name=os.environ.get("BUILDCAT_WORKER_NAME", ""),
                slots=int(os.environ.get("BUILDCAT_WORKER_SLOTS", "1")),
                task_id=task_id,
                report=report,
            )
        )
        if task_id:
            job_id = task_id.rpartition(".")[0]
            capture.start(
                os.path.join(root, ".buildcat", "logs", job_id, f"{task_id}.log"),
                f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} task {task_id} attempt "
                f"{request.get('attempt', '?')} on {os.environ.get('BUILDCAT_WORKER_NAME', '')}\n",
            )
        sys.stdout = sys.stderr = capture
        signal.signal(signal.SIGUSR1, _cancel)
        try:
            function = load_function(request["function"], root)
            result = function(*request.get("args", []), **request.get("kwargs", {}))
            check_result(result)
            reply: dict[str, Any] = {"type": "result", "ok": True, "result": result}
        except BaseException as exc:  # SystemExit from a job fails the task, not the child
            reply = {
                "type": "result",
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                # The first frame is this loop; the user's code starts below it.
                "traceback": "".join(
                    traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next)
                    if exc.__traceback__ is not None
                    else traceback.format_exception_only(type(exc), exc)
                ),
            }
        finally:
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            sys.stdout, sys.stderr = real_stdout, real_stderr
        reply["log"] = capture.take()
        send(reply)


if __name__ == "__main__":
    main()
