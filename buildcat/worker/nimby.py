"""NIMBY ("not in my back yard", as Afanasy calls it): a desktop worker started with
``farm worker --nimby`` stays away while the machine is in use: someone logged in at its
console, or its CPU busy with other programs.

:func:`reason` is the rule (pure); :func:`check` reads the machine and applies it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys

#: Busy: the 1-minute load average above this share of the cores while the worker runs
#: nothing (while it runs tasks, the load is its own: only the console counts then).
BUSY_SHARE = 0.75
#: How often a NIMBY worker looks again.
CHECK_SECONDS = 10.0


def reason(console_users: list[str], load: float | None, cores: int, running: int) -> str:
    """Why the worker stays away now ("" when it need not): a console user, or, while it
    runs nothing, a load average that says other programs keep the CPU busy."""
    if console_users:
        return f"{', '.join(sorted(set(console_users)))} logged in at the console"
    if running == 0 and load is not None and load > BUSY_SHARE * max(cores, 1):
        return f"the CPU is busy with other programs (load {load:.1f} on {cores} cores)"
    return ""


def console_users(who_output: str) -> list[str]:
    """The users of ``who`` lines that sit at the machine: a text console (``tty2``), the
    graphical session (``:0``, macOS's ``console``) or a terminal inside it (``pts/1
    ... (:0)``); not a remote login (``pts/3 ... (10.0.0.7)``)."""
    users = []
    for line in who_output.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        user, terminal = fields[0], fields[1]
        host = fields[-1] if fields[-1].startswith("(") else ""
        local_display = host.startswith("(:")
        if terminal.startswith(("tty", ":")) or terminal == "console" or local_display:
            users.append(user)
    return users


def check(running: int) -> str:
    """:func:`reason` for this machine now (blocking: run it in a thread). Machines with
    no ``who`` (Windows) are judged by their load alone, and those with no load average
    by their console alone."""
    who = shutil.which("who")
    users: list[str] = []
    if who is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found = subprocess.run([who], capture_output=True, text=True, timeout=5, check=False)
            users = console_users(found.stdout)
    load = None
    if sys.platform != "win32":  # Windows has no load average
        with contextlib.suppress(OSError):
            load = os.getloadavg()[0]
    return reason(users, load, os.cpu_count() or 1, running)
