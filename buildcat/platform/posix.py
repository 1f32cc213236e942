"""Linux (and any other POSIX system but macOS): process groups, signals, fcntl locks, and
``PR_SET_PDEATHSIG`` so what a task starts dies with it.

Nothing else in buildcat imports this module: :mod:`buildcat.platform` chooses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import pwd
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from buildcat.platform import watch

assert sys.platform != "win32"  # mypy skips the rest when it checks for Windows

log = logging.getLogger(__name__)

NAME = "linux" if sys.platform.startswith("linux") else sys.platform
#: Added to every ``os.open`` of ours. Python opens descriptors non-inheritable anyway;
#: Windows needs O_BINARY there.
OPEN_FLAGS = os.O_CLOEXEC
O_NONBLOCK = os.O_NONBLOCK
O_NOCTTY = os.O_NOCTTY
#: The worker asks its child process to cancel the running task with this signal.
CANCEL_SIGNAL = signal.SIGUSR1
#: What a person or a service manager sends to stop ``farm worker`` / ``farm server``.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


# ---- stopping farm processes ------------------------------------------------------------------


def on_stop_signals(
    loop: asyncio.AbstractEventLoop, callback: Callable[[int], None]
) -> Callable[[], None]:
    """Call ``callback(signum)`` in ``loop`` on SIGTERM or SIGINT; returns what undoes it."""
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, callback, signum)

    def undo() -> None:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)

    return undo


# ---- starting programs ------------------------------------------------------------------------


def new_group() -> dict[str, Any]:
    """``Popen`` keyword arguments: the program in a session (process group) of its own, so
    a cancel reaches all it started and the terminal's Ctrl-C does not."""
    return {"start_new_session": True}


def _prctl(option: int, value: int) -> bool:
    with contextlib.suppress(Exception):
        return bool(ctypes.CDLL(None, use_errno=True).prctl(option, value) == 0)
    return False


def tied_to_me(before_exec: Callable[[], None] | None = None) -> dict[str, Any]:
    """``Popen`` keyword arguments: a group of its own (:func:`new_group`), and the program
    dies with this process even when this one is killed with -9 (Linux:
    ``PR_SET_PDEATHSIG``). ``before_exec`` runs in the new process first."""

    def prepare() -> None:
        if before_exec is not None:
            before_exec()
        if sys.platform.startswith("linux"):
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return {**new_group(), "preexec_fn": prepare}


def after_start(pid: int) -> None:
    """Called with a program just started with :func:`tied_to_me` (Linux: nothing to do)."""


def children_die_with_me() -> bool:
    """Make every process started from now on end with this one (Windows: a job object).
    Here each program is tied by :func:`tied_to_me` instead."""
    return False


def become_subreaper() -> bool:
    """Make orphans of this process's descendants its own children (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def watch_parent(on_death: Callable[[], None]) -> threading.Thread:
    """Call ``on_death`` (in a thread) once this process's parent is gone."""
    return watch.watch_parent(os.getppid(), on_death)


# ---- signalling -------------------------------------------------------------------------------


def send_signal(process: subprocess.Popen[Any], signum: int) -> None:
    """SIGINT (stop what you render) or SIGTERM (leave) to ``process``."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)


def send_cancel(pid: int) -> None:
    """Tell a worker's child process to cancel the task it runs (CANCEL_SIGNAL)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, CANCEL_SIGNAL)


def terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def terminate_group(pid: int) -> None:
    """SIGTERM to the process group ``pid`` leads."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)


def kill_group(pid: int) -> None:
    """SIGKILL to the process group ``pid`` leads."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def kill_group_after_exit(pid: int) -> None:
    """SIGKILL to what is left of the process group ``pid`` led, its leader gone."""
    kill_group(pid)


def group_alive(pid: int) -> bool:
    """Whether any process of the group ``pid`` led is still there (its members that
    were left to this process, a subreaper, are reaped first)."""
    with contextlib.suppress(ChildProcessError, OSError):
        while os.waitpid(-pid, os.WNOHANG)[0] != 0:
            pass
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap(pid: int) -> None:
    """Collect ``pid`` if it is a child of ours that has exited."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def no_children() -> bool:
    """True when this process certainly has no child processes (one system call)."""
    if not hasattr(os, "waitid"):
        return False
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    except OSError:
        pass
    return False


async def exited(process: asyncio.subprocess.Process) -> None:
    """Return once ``process`` has exited, whoever still holds its pipes (Linux: a pidfd)."""
    if sys.platform == "linux":
        try:
            descriptor = os.pidfd_open(process.pid)
        except ProcessLookupError:
            return
        except OSError:  # an old kernel: poll
            pass
        else:
            loop = asyncio.get_running_loop()
            gone = loop.create_future()

            def on_exit() -> None:
                if not gone.done():
                    gone.set_result(None)

            loop.add_reader(descriptor, on_exit)
            try:
                await gone
            finally:
                loop.remove_reader(descriptor)
                os.close(descriptor)
            return
    while process.returncode is None:
        await asyncio.sleep(0.1)


@contextlib.contextmanager
def time_limit(seconds: float, overtime: Callable[[], BaseException]) -> Iterator[None]:
    """Raise ``overtime()`` in the code inside after ``seconds`` (SIGALRM: only in the main
    thread; elsewhere there is no limit here)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise overtime()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---- files ------------------------------------------------------------------------------------


def lock_byte(descriptor: int, offset: int) -> None:
    """Lock one byte at ``offset`` for this process (POSIX ``fcntl`` lock), or raise OSError:
    EACCES/EAGAIN while another holds it, another errno where locks do not work."""
    fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)


def pread(descriptor: int, size: int, offset: int) -> bytes:
    return os.pread(descriptor, size, offset)


def pwrite(descriptor: int, data: bytes | memoryview, offset: int) -> int:
    return os.pwrite(descriptor, data, offset)


def make_private(descriptor: int) -> None:
    """Only this user may read or write the file (mode 0600)."""
    os.fchmod(descriptor, 0o600)


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in ``folder`` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def raise_open_files_limit(most: int) -> tuple[int, int]:
    """Raise this process's open-files soft limit towards ``most`` (its hard limit at
    most); returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = most if hard == resource.RLIM_INFINITY else min(hard, most)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, wanted, exc)
            return soft, soft
        return soft, wanted
    return soft, soft


def user_name() -> str:
    """The name the system has for this process's user."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid with no passwd entry (some containers)
        return f"uid{os.getuid()}"


__all__ = [
    "CANCEL_SIGNAL",
    "NAME",
    "OPEN_FLAGS",
    "O_NOCTTY",
    "O_NONBLOCK",
    "STOP_SIGNALS",
    "after_start",
    "become_subreaper",
    "children_die_with_me",
    "exited",
    "fsync_folder",
    "group_alive",
    "kill",
    "kill_group",
    "kill_group_after_exit",
    "lock_byte",
    "make_private",
    "new_group",
    "no_children",
    "on_stop_signals",
    "pread",
    "pwrite",
    "raise_open_files_limit",
    "reap",
    "send_cancel",
    "send_signal",
    "terminate",
    "terminate_group",
    "tied_to_me",
    "time_limit",
    "user_name",
    "watch_parent",
]
