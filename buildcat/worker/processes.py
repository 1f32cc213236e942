"""The processes a task starts, found and ended with it (even a daemon that detached).

A worker's child process runs in a session of its own and is a *child subreaper*
(Linux): whatever a task starts stays below it, even a daemon that forked twice and
called ``setsid``, so after each task the child ends what is left below it. Everything
started below a child carries its ``BUILDCAT_CHILD_TOKEN`` in its environment: when the
child itself dies (killed, crashed), the agent ends what carries the token.

Processes are found through ``/proc`` (Linux). Elsewhere nothing is found here: on
Windows the job object (:mod:`buildcat.platform`) ends what a task process leaves.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Collection

from buildcat import platform

#: The environment variable that marks every process started below one child process.
TOKEN_VARIABLE = "BUILDCAT_CHILD_TOKEN"
#: Processes left by a task get SIGTERM, then SIGKILL after this long.
END_GRACE_SECONDS = 1.0
#: Give up on processes that keep forking faster than they are killed after this long.
END_GIVE_UP_SECONDS = 10.0


def become_subreaper() -> bool:
    """Make orphans of this process's descendants its own children (Linux only)."""
    return platform.become_subreaper()


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (empty when it is gone)."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children") as handle:
                found.extend(int(part) for part in handle.read().split())
        except FileNotFoundError:
            return _children_by_scan(pid)  # a kernel without CONFIG_PROC_CHILDREN
        except OSError:
            continue
    return found


def _children_by_scan(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry}/stat") as handle:
                    # The command (2nd field) may hold spaces and parentheses.
                    fields = handle.read().rpartition(")")[2].split()
                if int(fields[1]) == pid:
                    found.append(int(entry))
    return found


def descendants(pid: int, skip: Collection[int] = ()) -> list[int]:
    """Every process below ``pid``, leaving out ``skip`` and what is below them."""
    found: list[int] = []
    pending = [child for child in children(pid) if child not in skip]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(child for child in children(current) if child not in skip)
    return found


def describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return f"{pid} ({handle.read().strip()})"
    except OSError:
        return str(pid)


def alive(pid: int) -> bool:
    """Running (or stopped), not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _reap(pids: Collection[int]) -> None:
    for pid in pids:
        platform.reap(pid)


def _signal(pids: Collection[int], send: Callable[[int], None]) -> None:
    for pid in pids:
        send(pid)


def end_leftovers(keep: Collection[int] = ()) -> list[str]:
    """End every process below this one except ``keep`` (and theirs): SIGTERM, then
    SIGKILL after END_GRACE_SECONDS. Returns what was running (``pid (name)``)."""
    if platform.no_children():  # one system call when the task started nothing (the usual case)
        return []
    me = os.getpid()
    pending = [pid for pid in descendants(me, keep) if alive(pid)]
    _reap([pid for pid in children(me) if pid not in keep])  # zombies of finished ones
    if not pending:
        return []
    ended = [describe(pid) for pid in pending]
    _signal(pending, platform.terminate)
    started = time.monotonic()
    while True:
        _reap([pid for pid in children(me) if pid not in keep])
        pending = [pid for pid in descendants(me, keep) if alive(pid)]
        if not pending:
            break
        waited = time.monotonic() - started
        if waited > END_GIVE_UP_SECONDS:
            break
        if waited > END_GRACE_SECONDS:
            _signal(pending, platform.kill)
        time.sleep(0.02)
    _reap([pid for pid in children(me) if pid not in keep])
    return ended


def marked(token: str) -> list[int]:
    """The processes (of this user) whose environment holds ``TOKEN_VARIABLE=token``."""
    needle = f"{TOKEN_VARIABLE}={token}".encode()
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/environ", "rb") as handle:
            if needle in handle.read().split(b"\0") and alive(int(entry)):
                found.append(int(entry))
    return found


def end_marked(token: str) -> list[str]:
    """SIGKILL every process carrying ``token`` (what a dead child left); returns them."""
    if not token or not os.path.isdir("/proc"):
        return []
    ended: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < END_GIVE_UP_SECONDS:
        found = marked(token)
        if not found:
            break
        ended.extend(describe(pid) for pid in found)
        _signal(found, platform.kill)
        time.sleep(0.02)
    return ended
