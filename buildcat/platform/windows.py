"""Windows: console control events instead of signals, a job object instead of
``PR_SET_PDEATHSIG`` and process groups, ``msvcrt.locking`` instead of ``fcntl``.

- ``farm worker`` / ``farm server`` stop on Ctrl-C or Ctrl-Break (SIGINT, SIGBREAK),
  through ``signal.signal``: the Proactor event loop has no ``add_signal_handler``.
- The worker and each of its task processes put themselves in a job object with
  ``JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE``: everything they start (and everything that
  starts) is in it, so it all ends when they do, however they end.
- Programs start with ``CREATE_NEW_PROCESS_GROUP``: Ctrl-Break reaches one program (the
  cancel of a task), ``taskkill /T`` ends its tree.

This module imports on any system (the tests on Linux drive its logic with a fake
kernel32); what only Windows has is used inside ``sys.platform == "win32"`` branches.
Nothing else in buildcat imports it: :mod:`buildcat.platform` chooses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

NAME = "windows"

# Numbers from the Windows headers, for the tests that run elsewhere; Windows's own
# Python gives them by name.
if sys.platform == "win32":
    CREATE_NEW_PROCESS_GROUP = subprocess.CREATE_NEW_PROCESS_GROUP
    CTRL_BREAK_EVENT = signal.CTRL_BREAK_EVENT
    SIGBREAK = signal.SIGBREAK
    #: Bytes as written (no newline translation); descriptors are non-inheritable anyway.
    OPEN_FLAGS = os.O_BINARY
else:
    CREATE_NEW_PROCESS_GROUP = 0x00000200
    CTRL_BREAK_EVENT = 1
    SIGBREAK = 21
    OPEN_FLAGS = 0x8000
O_NONBLOCK = 0
O_NOCTTY = 0
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9  # the JOBOBJECTINFOCLASS value
SYNCHRONIZE = 0x00100000
INFINITE = 0xFFFFFFFF

#: The worker asks its child process to cancel the running task with Ctrl-Break.
CANCEL_SIGNAL = SIGBREAK
#: Ctrl-C and Ctrl-Break in the console stop ``farm worker`` / ``farm server``.
STOP_SIGNALS = (signal.SIGINT, SIGBREAK)


class IO_COUNTERS(ctypes.Structure):  # Windows's own names
    _fields_ = [
        ("ReadOperationCount", ctypes.c_uint64),
        ("WriteOperationCount", ctypes.c_uint64),
        ("OtherOperationCount", ctypes.c_uint64),
        ("ReadTransferCount", ctypes.c_uint64),
        ("WriteTransferCount", ctypes.c_uint64),
        ("OtherTransferCount", ctypes.c_uint64),
    ]


class JOBOBJECT_BASIC_LIMIT_INFORMATION(ctypes.Structure):
    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", ctypes.c_uint32),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", ctypes.c_uint32),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", ctypes.c_uint32),
        ("SchedulingClass", ctypes.c_uint32),
    ]


class JOBOBJECT_EXTENDED_LIMIT_INFORMATION(ctypes.Structure):
    _fields_ = [
        ("BasicLimitInformation", JOBOBJECT_BASIC_LIMIT_INFORMATION),
        ("IoInfo", IO_COUNTERS),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryLimit", ctypes.c_size_t),
        ("PeakJobMemoryLimit", ctypes.c_size_t),
    ]


def kill_on_close_limits() -> JOBOBJECT_EXTENDED_LIMIT_INFORMATION:
    """The limits of a job whose processes all end when its last handle closes."""
    limits = JOBOBJECT_EXTENDED_LIMIT_INFORMATION()
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    return limits


def kernel32() -> Any:
    """kernel32.dll with the signatures used here (handles are pointer-sized)."""
    if sys.platform == "win32":
        library = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = ctypes.c_void_p
        library.CreateJobObjectW.restype = handle
        library.CreateJobObjectW.argtypes = (ctypes.c_void_p, ctypes.c_wchar_p)
        library.SetInformationJobObject.argtypes = (
            handle, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32
        )  # fmt: skip
        library.AssignProcessToJobObject.argtypes = (handle, handle)
        library.GetCurrentProcess.restype = handle
        library.OpenProcess.restype = handle
        library.OpenProcess.argtypes = (ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32)
        library.WaitForSingleObject.argtypes = (handle, ctypes.c_uint32)
        library.CloseHandle.argtypes = (handle,)
        return library
    raise OSError(errno.ENOSYS, "kernel32 is Windows's")


def _last_error() -> int:
    if sys.platform == "win32":
        return ctypes.get_last_error()
    return 0


def join_kill_on_close_job(library: Any) -> Any:
    """Put this process in a new job object that kills all its processes when its last
    handle (ours, never inherited) closes; returns the handle, or None (with a warning)."""
    job = library.CreateJobObjectW(None, None)
    if not job:
        log.warning("cannot create a job object (error %s)", _last_error())
        return None
    limits = kill_on_close_limits()
    if not library.SetInformationJobObject(
        job, JOB_OBJECT_EXTENDED_LIMIT_INFORMATION, ctypes.pointer(limits), ctypes.sizeof(limits)
    ) or not library.AssignProcessToJobObject(job, library.GetCurrentProcess()):
        log.warning(
            "cannot put this process in a job object (error %s): what its tasks start may "
            "outlive it",
            _last_error(),
        )
        library.CloseHandle(job)
        return None
    return job


_job: Any = None


def children_die_with_me() -> bool:
    """Make every process started from now on end with this one: a job object."""
    global _job
    if _job is None:
        try:
            _job = join_kill_on_close_job(kernel32())
        except OSError as exc:
            log.warning("cannot reach kernel32: %s", exc)
    return _job is not None


# ---- stopping farm processes ------------------------------------------------------------------


def on_stop_signals(
    loop: asyncio.AbstractEventLoop, callback: Callable[[int], None]
) -> Callable[[], None]:
    """Call ``callback(signum)`` in ``loop`` on Ctrl-C or Ctrl-Break; returns what undoes it."""

    def handler(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(callback, signum)

    previous = [(signum, signal.signal(signum, handler)) for signum in STOP_SIGNALS]

    def undo() -> None:
        for signum, before in previous:
            signal.signal(signum, before if before is not None else signal.SIG_DFL)

    return undo


# ---- starting programs ------------------------------------------------------------------------


def new_group() -> dict[str, Any]:
    """``Popen`` keyword arguments: the program in a console process group of its own
    (Ctrl-Break reaches it alone; the console's Ctrl-C does not)."""
    return {"creationflags": CREATE_NEW_PROCESS_GROUP}


def tied_to_me(before_exec: Callable[[], None] | None = None) -> dict[str, Any]:
    """A group of its own; the job object (:func:`children_die_with_me`) ties it to this
    process. ``before_exec`` is POSIX's (Windows has no fork): ignored."""
    return new_group()


def after_start(pid: int) -> None:
    """Nothing: the job object already holds what was started."""


def become_subreaper() -> bool:
    return False


def watch_parent(on_death: Callable[[], None]) -> threading.Thread:
    """Call ``on_death`` (in a thread) once this process's parent has exited."""
    parent = os.getppid()

    def run() -> None:
        with contextlib.suppress(OSError):
            library = kernel32()
            handle = library.OpenProcess(SYNCHRONIZE, 0, parent)
            if handle:
                library.WaitForSingleObject(handle, INFINITE)
                library.CloseHandle(handle)
            on_death()  # no handle: it is gone already

    thread = threading.Thread(target=run, name="parent-watch", daemon=True)
    thread.start()
    return thread


# ---- signalling -------------------------------------------------------------------------------


def send_signal(process: subprocess.Popen[Any], signum: int) -> None:
    """SIGINT: Ctrl-Break to the program's own group (started with :func:`new_group`);
    SIGTERM and anything else: TerminateProcess."""
    with contextlib.suppress(OSError):
        if signum == signal.SIGINT:
            os.kill(process.pid, CTRL_BREAK_EVENT)
        else:
            process.terminate()


def send_cancel(pid: int) -> None:
    """Tell a worker's child process to cancel the task it runs (Ctrl-Break)."""
    with contextlib.suppress(OSError):
        os.kill(pid, CTRL_BREAK_EVENT)


def terminate(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)  # TerminateProcess


def kill(pid: int) -> None:
    terminate(pid)


def terminate_group(pid: int) -> None:
    """Ctrl-Break to the console process group ``pid`` leads."""
    with contextlib.suppress(OSError):
        os.kill(pid, CTRL_BREAK_EVENT)


def kill_tree_command(pid: int) -> list[str]:
    return ["taskkill", "/F", "/T", "/PID", str(pid)]


def kill_group(pid: int) -> None:
    """End ``pid`` and every process below it."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(kill_tree_command(pid), capture_output=True, timeout=30, check=False)


def kill_group_after_exit(pid: int) -> None:
    """Nothing: the leader's job object ended what it started, and once it has exited its
    pid may already name another process."""


def group_alive(pid: int) -> bool:
    """Windows cannot list a console group: once its leader has exited, what it left is
    the job object's (it ends with the task process)."""
    return False


def reap(pid: int) -> None:
    """Nothing: Windows has no zombies."""


def no_children() -> bool:
    return False


async def exited(process: asyncio.subprocess.Process) -> None:
    """Return once ``process`` has exited, whoever still holds its pipes."""
    while process.returncode is None:
        await asyncio.sleep(0.1)


@contextlib.contextmanager
def time_limit(seconds: float, overtime: Callable[[], BaseException]) -> Iterator[None]:
    """No alarm signal on Windows: no limit here (the caller's own timeout still holds)."""
    yield


# ---- files ------------------------------------------------------------------------------------

#: pread/pwrite are a seek and a read or write here: one at a time.
_position = threading.Lock()


def lock_byte(descriptor: int, offset: int) -> None:
    """Lock one byte at ``offset`` (``msvcrt.locking``), or raise OSError: EACCES while
    another process holds it."""
    if sys.platform == "win32":
        import msvcrt

        with _position:
            os.lseek(descriptor, offset, os.SEEK_SET)
            try:
                msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
            except OSError as exc:  # EACCES, or EDEADLOCK: held by another process
                raise OSError(errno.EACCES, exc.strerror) from None
            finally:
                os.lseek(descriptor, 0, os.SEEK_SET)
        return
    raise OSError(errno.ENOLCK, "msvcrt is Windows's")


def pread(descriptor: int, size: int, offset: int) -> bytes:
    with _position:
        os.lseek(descriptor, offset, os.SEEK_SET)
        return os.read(descriptor, size)


def pwrite(descriptor: int, data: bytes | memoryview, offset: int) -> int:
    with _position:
        os.lseek(descriptor, offset, os.SEEK_SET)
        return os.write(descriptor, data)


def make_private(descriptor: int) -> None:
    """Nothing: a file's access is its folder's ACL on Windows (the user's own)."""


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Nothing: Windows cannot open a folder to fsync it (NTFS journals renames)."""


def raise_open_files_limit(most: int) -> tuple[int, int]:
    """Nothing to raise: sockets are not counted against a limit on Windows."""
    return 0, 0


def user_name() -> str:
    return os.environ.get("USERNAME") or "user"


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
