"""macOS: POSIX process groups, signals and fcntl locks as on Linux, but no
``PR_SET_PDEATHSIG``: a watchdog process (:mod:`buildcat.platform.watch`) ends what a
task started when the process that started it dies.

Nothing else in buildcat imports this module: :mod:`buildcat.platform` chooses it.
"""

# ruff: noqa: E402 (the assert comes first, for mypy)

from __future__ import annotations

import sys

assert sys.platform != "win32"  # mypy skips the rest when it checks for Windows

import os
import subprocess
from collections.abc import Callable
from typing import Any

from buildcat.platform import posix, watch
from buildcat.platform.posix import (
    CANCEL_SIGNAL,
    O_NOCTTY,
    O_NONBLOCK,
    OPEN_FLAGS,
    STOP_SIGNALS,
    children_die_with_me,
    exited,
    fsync_folder,
    group_alive,
    kill,
    kill_group,
    kill_group_after_exit,
    lock_byte,
    make_private,
    new_group,
    no_children,
    on_stop_signals,
    pread,
    pwrite,
    raise_open_files_limit,
    reap,
    send_cancel,
    send_signal,
    terminate,
    terminate_group,
    time_limit,
    user_name,
    watch_parent,
)

NAME = "darwin"


def tied_to_me(before_exec: Callable[[], None] | None = None) -> dict[str, Any]:
    """``Popen`` keyword arguments: a group of its own; :func:`after_start` ties it to this
    process (there is no ``PR_SET_PDEATHSIG`` here)."""
    options = posix.new_group()
    if before_exec is not None:
        options["preexec_fn"] = before_exec
    return options


def after_start(pid: int) -> None:
    """Start the watchdog that kills the group ``pid`` leads if this process dies first."""
    start_watchdog(pid)


def start_watchdog(pid: int) -> subprocess.Popen[bytes]:
    """``python watch.py GROUP LAUNCHER``: see :func:`buildcat.platform.watch.guard`. Run as
    a file (it needs only the standard library): importing buildcat would cost a start."""
    return subprocess.Popen(
        [sys.executable, "-I", watch.__file__, str(pid), str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not ended with the group of the process it guards
    )


def become_subreaper() -> bool:
    return False


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
