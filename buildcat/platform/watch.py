"""Noticing that a parent process has gone, where the kernel cannot be asked to tell us
(macOS has no ``PR_SET_PDEATHSIG``).

- :func:`watch_parent`: a thread that calls back once this process's parent is gone
  (kqueue ``NOTE_EXIT`` on macOS, else it polls ``os.getppid()``).
- ``python watch.py GROUP LAUNCHER``: a watchdog a launcher starts
  beside a program it cannot change (Blender, a shell command): when the launcher (the
  watchdog's parent) dies, the program's process group is killed; once that group is
  gone, the watchdog leaves.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable

assert sys.platform != "win32"  # POSIX: Windows ties processes with a job object instead

#: How often a poll looks again.
POLL_SECONDS = 0.25


def wait_for_parent(parent: int, poll: float = POLL_SECONDS, until: float | None = None) -> bool:
    """Block until this process's parent (``parent``) is gone: True; False at the
    ``until`` deadline (monotonic), if one is given."""
    if sys.platform == "darwin":
        # kqueue tells at once; when ``parent`` is already gone the registration fails.
        with contextlib.suppress(OSError):
            queue = select.kqueue()
            try:
                exit_event = select.kevent(
                    parent,
                    filter=select.KQ_FILTER_PROC,
                    flags=select.KQ_EV_ADD | select.KQ_EV_ONESHOT,
                    fflags=select.KQ_NOTE_EXIT,
                )
                queue.control([exit_event], 0, 0)
                while os.getppid() == parent:
                    left = None if until is None else until - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    queue.control(None, 1, poll if left is None else min(poll, left))
            finally:
                queue.close()
            return True
    while os.getppid() == parent:  # an orphan is adopted by another process (init, launchd)
        if until is not None and time.monotonic() >= until:
            return False
        time.sleep(poll)
    return True


def watch_parent(
    parent: int, on_death: Callable[[], None], poll: float = POLL_SECONDS
) -> threading.Thread:
    """Start a daemon thread that calls ``on_death`` once ``parent`` is no longer this
    process's parent."""

    def run() -> None:
        wait_for_parent(parent, poll)
        on_death()

    thread = threading.Thread(target=run, name="parent-watch", daemon=True)
    thread.start()
    return thread


def group_gone(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def guard(group: int, parent: int, poll: float = POLL_SECONDS) -> int:
    """The watchdog: kill process group ``group`` if this process's parent (``parent``,
    given: it may have died before this one got to ask) dies before the group is gone.
    Returns 1 when it killed the group, 0 when the group ended by itself."""
    while not group_gone(group):
        if wait_for_parent(parent, poll, until=time.monotonic() + poll):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
            return 1
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not all(arg.isdigit() for arg in argv):
        print("usage: python watch.py GROUP LAUNCHER", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides, not a terminal
    return guard(int(argv[0]), int(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
