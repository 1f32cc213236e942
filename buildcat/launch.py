"""Starting ``farm server`` and ``farm worker`` as child processes (the demo, tests, benchmarks)."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from buildcat import platform
from buildcat.errors import FarmError

LISTENING = re.compile(rb"listening on https?://(?P<host>[^:\s]+):(?P<port>\d+)")


def farm_command(*args: str, program: Sequence[str] = ()) -> list[str]:
    """``farm ARGS`` as this Python runs it (the single executable is ``farm`` itself),
    or as ``program`` (another ``farm``: a test of the executable) runs it."""
    if program:
        return [*program, *args]
    if getattr(sys, "frozen", False):
        return [sys.executable, *args]
    return [sys.executable, "-m", "buildcat", *args]


def start_server(
    root: Path,
    *extra: str,
    bind: str = "127.0.0.1",
    port: int = 0,
    log: IO[bytes] | int | None = None,
    timeout: float = 30.0,
    wrap: Sequence[str] = (),
    env: dict[str, str] | None = None,
    program: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``farm server`` and return it with the port it listens on.

    ``wrap`` goes before the command (``ip netns exec NAME`` runs it on another "host");
    ``program`` is the ``farm`` to run (see :func:`farm_command`).
    """
    process = subprocess.Popen(
        [
            *wrap,
            *farm_command(
                "server",
                "--bind",
                bind,
                "--port",
                str(port),
                "--root",
                str(root),
                *extra,
                program=program,
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            line = process.stdout.readline()
            if not line:
                break
            seen += line
            match = LISTENING.search(line)
            if match:
                return process, int(match["port"])
    stop(process)
    raise FarmError(f"farm server did not start: {seen.decode(errors='replace').strip()}")


def start_worker(
    port: int,
    root: Path,
    *extra: str,
    host: str = "127.0.0.1",
    log: IO[bytes] | int | None = None,
    env: dict[str, str] | None = None,
    program: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        farm_command(
            "worker",
            "--host",
            host,
            "--port",
            str(port),
            "--root",
            str(root),
            *extra,
            program=program,
        ),
        stdout=log,
        stderr=log,
        env=env,
    )


def end(process: subprocess.Popen[Any], signum: int, grace: float) -> int:
    """Send ``signum``, then SIGKILL after ``grace`` seconds: never leaves the process behind."""
    if process.poll() is None:
        platform.send_signal(process, signum)  # SIGINT on Windows: Ctrl-Break to its group
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; closes the pipe we read its address from."""
    end(process, signal.SIGTERM, timeout)
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode


def stop_all(processes: Sequence[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """Stop processes together: signal all, then wait for each (workers before servers)."""
    for process in processes:
        if process.poll() is None:
            platform.send_signal(process, signal.SIGTERM)
    for process in processes:
        stop(process, timeout)


def free_log(path: Path) -> IO[bytes]:
    """A log file to append to, 0600 (a farm's logs are as private as its secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | platform.OPEN_FLAGS
    return os.fdopen(os.open(path, flags, 0o600), "ab")


__all__ = ["end", "farm_command", "free_log", "start_server", "start_worker", "stop", "stop_all"]
