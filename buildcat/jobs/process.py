"""Running an outside program for a task (shell commands, script files): its output is
the task log, its exit code the outcome, and a cancel ends its whole process group.

The program runs in a session (and so a process group) of its own with the farm root as
its working directory. Each line it prints goes to ``on_line`` (and so into the task
log). With ``on_progress``, it also gets the write end of a pipe, named in
``BUILDCAT_PROGRESS_FD``, on which ``buildcat.progress()`` in a Python program (or any
program that writes ``FRACTION MESSAGE`` lines to it) reports progress. When the program
ends, or the task is cancelled (TaskCancelled raised in this process), what is left of
its group gets SIGTERM, then SIGKILL after a grace period.

On Windows (type-checked, not tested here) the group is a console process group: Ctrl-Break,
then ``taskkill /T``; the output is read by a thread per pipe (``select`` takes only
sockets there) and there is no progress pipe.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import queue
import select
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from buildcat import platform
from buildcat.errors import FarmError
from buildcat.jobs import context
from buildcat.jobs.context import PROGRESS_FD_VARIABLE

#: SIGTERM to the group, then SIGKILL after this long (well inside the worker's own
#: ``--cancel-grace``, after which it kills the whole task process).
STOP_GRACE_SECONDS = 5.0
#: Once the program has exited, output still arriving (from something it left running
#: with the pipe open) is read for this long before its group is ended.
LINGER_SECONDS = 0.5
#: A line longer than this is passed on in pieces (output with no newline in sight).
MAX_LINE_CHARS = 64 * 1024
#: Lines of output kept for the error of a failed run.
TAIL_LINES = 10


class ProcessFailed(FarmError):
    """The program exited non-zero, could not start, or left out an output it must write."""

    #: The message is the whole reason: reported without a traceback through buildcat.
    complete_reason = True


def _reset_signals() -> None:
    """In the program's process, before it starts (POSIX)."""
    # The task process ignores SIGINT and SIGTERM (the worker decides when it stops), and
    # an ignored signal stays ignored across exec: a shell could not even trap SIGTERM.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


class _Lines:
    """Bytes in, lines out (``\\n`` or ``\\r`` ends one: a progress bar redraws with ``\\r``)."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self.on_line = on_line
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self.pending + self.decoder.decode(data, final=final)
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self.pending = lines.pop()
        if final and self.pending:
            lines.append(self.pending)
            self.pending = ""
        while len(self.pending) > MAX_LINE_CHARS:
            lines.append(self.pending[:MAX_LINE_CHARS])
            self.pending = self.pending[MAX_LINE_CHARS:]
        for line in lines:
            self.on_line(line)


def exit_reason(code: int) -> str:
    """``exited with code 3`` / ``was killed by SIGKILL``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def failure(what: str, code: int, tail: Sequence[str]) -> ProcessFailed:
    """The error of a run that exited non-zero: its exit code and its last lines."""
    lines = [line for line in tail if line.strip()]
    shown = "".join(f"\n  {line[:500]}" for line in lines)
    return ProcessFailed(
        f"{what} {exit_reason(code)}" + (f"; its last output:{shown}" if shown else "")
    )


def run(
    argv: Sequence[str],
    *,
    cwd: str,
    env: dict[str, str],
    on_line: Callable[[str], None],
    on_progress: Callable[[str], None] | None = None,
    tail: deque[str] | None = None,
    grace: float = STOP_GRACE_SECONDS,
) -> int:
    """Run ``argv``; returns its exit code (negative: the signal that killed it).

    ``tail`` (a deque with a maxlen) keeps the last lines printed. Any exception while it
    runs (TaskCancelled) ends its process group before it is raised again."""
    # $PWD names the folder it runs in (the worker's own would be inherited otherwise):
    # programs such as Blender resolve relative paths against $PWD, not the real one.
    env = {**env, "PWD": os.path.abspath(cwd)}
    progress_read = progress_write = -1
    pass_fds: tuple[int, ...] = ()
    if on_progress is not None and sys.platform != "win32":  # no pass_fds on Windows
        progress_read, progress_write = os.pipe()
        # The inode makes a program that inherited only the variable (not the descriptor)
        # report nothing, rather than write into whatever file has that number there.
        inode = os.fstat(progress_write).st_ino
        env = {**env, PROGRESS_FD_VARIABLE: f"{progress_write}:{inode}"}
        pass_fds = (progress_write,)
    try:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            # One process group to end on cancel; it must not outlive the task process
            # (a worker killed with -9).
            **platform.tied_to_me(before_exec=_reset_signals),
        )
    except OSError as exc:
        if progress_read >= 0:
            os.close(progress_read)
        raise ProcessFailed(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    finally:
        if progress_write >= 0:
            os.close(progress_write)
    platform.after_start(process.pid)
    assert process.stdout is not None
    streams = {process.stdout.fileno(): _Lines(_keeping(on_line, tail))}
    if progress_read >= 0 and on_progress is not None:
        streams[progress_read] = _Lines(on_progress)
    try:
        _pump(process, streams)
        ended = end_group(process, grace)  # what it left running (a `&` job) ends with it
        _drain(streams)
        if ended:
            print(f"buildcat: ended what {argv[0]} left running in its process group ({ended})")
        return int(process.returncode)
    except BaseException as exc:
        ended = end_group(process, grace, streams)
        _drain(streams)
        why = "cancelled" if isinstance(exc, context.TaskCancelled) else type(exc).__name__
        print(f"buildcat: {why}: ended {argv[0]} and its process group ({ended or 'gone'})")
        raise
    finally:
        process.stdout.close()
        if progress_read >= 0:
            os.close(progress_read)


def _keeping(on_line: Callable[[str], None], tail: deque[str] | None) -> Callable[[str], None]:
    if tail is None:
        return on_line

    def keep(line: str) -> None:
        tail.append(line)
        on_line(line)

    return keep


def _pump(process: subprocess.Popen[bytes], streams: dict[int, _Lines]) -> None:
    """Pass output on until every stream is closed, or the program has exited and a
    moment has passed (something it started holds the pipe open)."""
    if sys.platform == "win32":
        _pump_by_threads(process, streams)
        return
    exited_at: float | None = None
    with selectors.DefaultSelector() as selector:
        for fd in streams:
            selector.register(fd, selectors.EVENT_READ)
        while True:
            if selector.get_map():
                for key, _ in selector.select(timeout=0.1):
                    data = os.read(key.fd, 65536)
                    if data:
                        streams[key.fd].feed(data)
                    else:
                        selector.unregister(key.fd)
                        streams[key.fd].feed(b"", final=True)
            else:  # it closed its output but runs on
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(0.1)
            if process.poll() is not None:
                if not selector.get_map():
                    return
                if exited_at is None:
                    exited_at = time.monotonic()
                elif time.monotonic() - exited_at > LINGER_SECONDS:
                    return


def _pump_by_threads(process: subprocess.Popen[bytes], streams: dict[int, _Lines]) -> None:
    """:func:`_pump` where ``select`` takes no pipes (Windows): a thread reads each one."""
    arrived: queue.Queue[tuple[int, bytes]] = queue.Queue()

    def read(fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            arrived.put((fd, data))
            if not data:
                return

    for fd in streams:
        threading.Thread(target=read, args=(fd,), name="output", daemon=True).start()
    still_open = set(streams)
    exited_at: float | None = None
    while True:
        with contextlib.suppress(queue.Empty):
            fd, data = arrived.get(timeout=0.1)
            if data:
                streams[fd].feed(data)
            else:
                still_open.discard(fd)
                streams[fd].feed(b"", final=True)
        if process.poll() is not None:
            if not still_open:
                return
            if exited_at is None:
                exited_at = time.monotonic()
            elif time.monotonic() - exited_at > LINGER_SECONDS:
                return


def _drain(streams: dict[int, _Lines]) -> None:
    """Read what is left in the pipes (their writers are gone now), then end the lines."""
    if sys.platform == "win32":  # what is left arrives through _pump_by_threads's threads
        for lines in streams.values():
            lines.feed(b"", final=True)
        return
    deadline = time.monotonic() + 1.0
    for fd, lines in streams.items():
        os.set_blocking(fd, False)
        while time.monotonic() < deadline:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                break
            if not data:
                break
            lines.feed(data)
        lines.feed(b"", final=True)


def _group_left(process: subprocess.Popen[bytes]) -> bool:
    """Whether any process of the program's group is still there."""
    if process.poll() is None:
        return True
    # This process is a subreaper: members whose parent died are its children now.
    return platform.group_alive(process.pid)


def end_group(
    process: subprocess.Popen[bytes],
    grace: float = STOP_GRACE_SECONDS,
    streams: dict[int, _Lines] | None = None,
) -> str:
    """SIGTERM to the program's process group, SIGKILL after ``grace`` seconds, passing
    on what it prints meanwhile. Returns the signal that ended the last of it (``""``:
    nothing was left)."""
    if not _group_left(process):
        return ""
    platform.terminate_group(process.pid)
    if _wait_group(process, time.monotonic() + grace, streams or {}):
        return "SIGTERM"
    platform.kill_group(process.pid)
    process.wait()
    _wait_group(process, time.monotonic() + grace, streams or {})
    return f"SIGKILL after {grace:g} s"


def _wait_group(
    process: subprocess.Popen[bytes], deadline: float, streams: dict[int, _Lines]
) -> bool:
    """Wait (reading output) until the group is gone (True) or the deadline (False)."""
    while time.monotonic() < deadline:
        if not _group_left(process):
            return True
        _read_some(streams, 0.02)
    return not _group_left(process)


def _read_some(streams: dict[int, _Lines], timeout: float) -> None:
    """Pass on what output is ready within ``timeout`` (or just wait that long)."""
    readable: list[int] = []
    if streams and sys.platform != "win32":  # Windows: _pump_by_threads's threads read
        with contextlib.suppress(OSError, ValueError):
            readable = select.select(list(streams), [], [], timeout)[0]
    else:
        time.sleep(timeout)
    for fd in readable:
        with contextlib.suppress(OSError):
            data = os.read(fd, 65536)
            if data:
                streams[fd].feed(data)


def parse_progress_line(line: str) -> tuple[float, str] | None:
    """``0.5 halfway`` (what ``buildcat.progress()`` writes to the pipe) -> (0.5, "halfway")."""
    number, _, message = line.strip().partition(" ")
    try:
        return float(number), message
    except ValueError:
        return None
