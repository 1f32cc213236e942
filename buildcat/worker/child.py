"""The child process a worker keeps alive between tasks; runs job functions one at a time.

Frames on stdin/stdout are a 4-byte big-endian length and a msgpack map. Every frame
names its ``kind`` (``run``; ``ready``, ``progress``, ``result``) and, but ``ready``, the
``task`` and ``seq`` of the request it belongs to, so the worker can tell a frame that is
not the answer it waits for. The function's own prints are captured and sent back with
its result as the task log.

The worker may write several ``run`` frames at once (quick tasks): they are run in
order, each with its own log, context and answer. A cancel then names its request: the
number comes down the cancel pipe (``BUILDCAT_CANCEL_FD``), then PIPED_CANCEL_SIGNAL; it
stops that task only (one not started yet is answered as cancelled, unrun). CANCEL_SIGNAL
alone, as ever, stops whatever task runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import sys
import threading
import time
import traceback
from typing import Any, BinaryIO

from buildcat import platform, protocol
from buildcat.errors import FarmError, JobFault
from buildcat.jobs import context
from buildcat.jobs.context import TaskCancelled
from buildcat.jobs.python import load_function
from buildcat.worker import processes
from buildcat.worker.tasklog import TaskLog, max_log_bytes

HEADER = struct.Struct(">I")
#: The environment variable that names the descriptor the worker's cancels come down,
#: each the number of the request to stop.
CANCEL_FD_VARIABLE = "BUILDCAT_CANCEL_FD"
CANCEL_SEQ = struct.Struct(">Q")
#: The signal that says a request's number came down the cancel pipe (POSIX only).
PIPED_CANCEL_SIGNAL: signal.Signals | None = getattr(signal, "SIGUSR2", None)
#: Results travel in reports to the server, a few per message: keep each one modest.
MAX_RESULT_BYTES = 4 * 1024 * 1024


def read_frame(stream: BinaryIO) -> Any | None:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (length,) = HEADER.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        return None
    return protocol.unpack(data)


class Cancels:
    """Which requests the worker cancelled, and the signal handler that stops the one
    running. ``pipe``: the descriptor the requests' numbers come down (``None``: every
    cancel is for the task that runs)."""

    def __init__(self, pipe: int | None) -> None:
        self.pipe = pipe
        self.asked: set[int] = set()
        #: The request whose job function runs now (``None`` between tasks).
        self.running: int | None = None
        self.raised = False

    def begin(self, seq: int) -> None:
        """Request ``seq`` starts: raises TaskCancelled when it was cancelled already."""
        self.running, self.raised = seq, False
        if seq in self.asked:
            self.raised = True
            raise TaskCancelled("cancelled")

    def end(self) -> None:
        seq, self.running = self.running, None
        if seq is not None and self.asked:  # numbers only grow: older ones are done with
            self.asked = {asked for asked in self.asked if asked > seq}

    def read(self) -> None:
        if self.pipe is None:
            return
        with contextlib.suppress(OSError):  # BlockingIOError: nothing more to read
            while data := os.read(self.pipe, 8 * CANCEL_SEQ.size):
                for offset in range(0, len(data) - len(data) % CANCEL_SEQ.size, CANCEL_SEQ.size):
                    self.asked.add(CANCEL_SEQ.unpack_from(data, offset)[0])

    def on_signal(self, signum: int, frame: object) -> None:
        """CANCEL_SIGNAL: stop the task that runs. PIPED_CANCEL_SIGNAL: stop the one of
        the numbers that came down the pipe, if one of them runs."""
        piped = signum == PIPED_CANCEL_SIGNAL
        if piped:
            self.read()
        seq = self.running
        # Once per task: a second cancel must not break into the job's own cleanup (a warm
        # Blender half stopped, its input closed, left running for the idle reaper to trip
        # on); and never the task after the one meant (it was cancelled as it ended).
        if seq is None or self.raised or (piped and seq not in self.asked):
            return
        self.raised = True
        # The class job code can import (buildcat.TaskCancelled): this module runs as __main__.
        raise TaskCancelled("cancelled")


def _cancel_pipe() -> int | None:
    if sys.platform == "win32":
        return None
    text = os.environ.pop(CANCEL_FD_VARIABLE, "")
    if not text.isdigit() or PIPED_CANCEL_SIGNAL is None:
        return None
    fd = int(text)
    try:
        os.set_blocking(fd, False)
    except OSError:
        return None
    os.set_inheritable(fd, False)  # what a task starts does not get it
    return fd


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


def _parent_died() -> None:
    # A worker killed with SIGKILL cannot stop its children: they notice and leave, and
    # take what their tasks started with them.
    with contextlib.suppress(Exception):
        processes.end_leftovers()
    os._exit(1)


def text(value: Any) -> str:
    """``value`` as text msgpack can carry (lone surrogates replaced)."""
    try:
        string = str(value)
    except Exception:
        string = f"<{type(value).__name__} that str() fails on>"
    return string.encode("utf-8", "replace").decode("utf-8")


def main() -> None:
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # C-level prints must never land in the protocol stream
    stdin = sys.stdin.buffer
    lock = threading.Lock()

    def send(message: dict[str, Any]) -> bool:
        try:
            data = protocol.pack(message)
        except protocol.ProtocolError:
            return False
        with lock:
            out.write(HEADER.pack(len(data)) + data)
        return True

    # The worker decides what happens to tasks (drain, give back): the child runs in a
    # session of its own and leaves only when told to.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cancels = Cancels(_cancel_pipe())
    signal.signal(platform.CANCEL_SIGNAL, cancels.on_signal)  # between tasks it stops nothing
    if cancels.pipe is not None and PIPED_CANCEL_SIGNAL is not None:
        signal.signal(PIPED_CANCEL_SIGNAL, cancels.on_signal)
    processes.become_subreaper()  # what a task starts, even a detached daemon, stays below
    platform.children_die_with_me()  # Windows: a job object (elsewhere each is tied)
    root = os.environ.get("BUILDCAT_ROOT", os.getcwd())
    if root not in sys.path:
        sys.path.insert(0, root)
    platform.watch_parent(_parent_died)
    try:
        capture = TaskLog(max_bytes=max_log_bytes())
    except FarmError:  # the worker checks it at start; never fail here
        capture = TaskLog()
    real_stdout, real_stderr = sys.stdout, sys.stderr
    send({"kind": "ready", "pid": os.getpid()})
    while True:
        request = read_frame(stdin)
        if request is None:
            return
        task_id = str(request.get("task", ""))
        seq = request.get("seq")
        frame = {"task": task_id, "seq": seq}

        def report(
            fraction: float, message: str, frame: dict[str, Any] = frame, capture: Any = capture
        ) -> None:
            update = {**frame, "kind": "progress", "fraction": fraction, "message": message}
            if not send(update):  # context.progress checked it: this is only a last resort
                capture.write(f"buildcat: warning: progress {fraction!r} could not be sent\n")

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
        try:
            cancels.begin(seq if isinstance(seq, int) else -1)
            function = load_function(request["function"], root)
            result = function(*request.get("args", []), **request.get("kwargs", {}))
            check_result(result)
            reply: dict[str, Any] = {"ok": True, "result": result}
        except BaseException as exc:  # SystemExit from a job fails the task, not the child
            reply = failure(exc)
        finally:
            cancels.end()
            sys.stdout, sys.stderr = real_stdout, real_stderr
        try:
            ended = processes.end_leftovers(keep=context.kept_processes())
        except Exception as exc:  # never let the cleanup take the child down
            ended = []
            capture.write(f"buildcat: could not end the task's processes: {exc}\n")
        if ended:
            capture.write(
                f"buildcat: ended {len(ended)} process(es) the task left running: "
                f"{', '.join(ended[:20])}{' ...' if len(ended) > 20 else ''}\n"
            )
        reply.update(frame, kind="result", log=text(capture.take()))
        if not send(reply):
            # An error text msgpack could not carry: say so, in the same frame shape.
            error = "the task's error could not be sent back: " + text(reply.get("error"))
            send({**frame, "kind": "result", "ok": False, "error": error, "traceback": "",
                  "log": reply["log"]})  # fmt: skip


def failure(exc: BaseException) -> dict[str, Any]:
    if getattr(exc, "complete_reason", False):
        # The message says all (a render error: Blender's own reason); buildcat's frames
        # would only hide it.
        reply: dict[str, Any] = {"ok": False, "error": text(exc), "traceback": ""}
    else:
        reply = _failure_with_traceback(exc)
    if isinstance(exc, JobFault):
        reply["job_fault"] = True  # the scheduler fails the job now, blaming no worker
    return reply


def _failure_with_traceback(exc: BaseException) -> dict[str, Any]:
    return {
        "ok": False,
        "error": text(f"{type(exc).__name__}: {exc}"),
        # The first frame is the child's loop; the user's code starts below it.
        "traceback": text(
            "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next)
                if exc.__traceback__ is not None
                else traceback.format_exception_only(type(exc), exc)
            )
        ),
    }


if __name__ == "__main__":
    main()
