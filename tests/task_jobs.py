"""Job functions that misbehave towards their worker (progress, frames, processes, logs);
copied into each test's farm root as a module by tests/test_task_isolation.py and
tests/test_task_processes.py."""

from __future__ import annotations

import fcntl
import os
import pathlib
import struct
import sys
import time

import msgpack

import buildcat


def echo(value: object) -> object:
    return value


def path_message(value: object) -> object:
    buildcat.progress(0.5, pathlib.Path("x"))  # type: ignore[arg-type]
    return value


def numpy_fraction(value: object) -> object:
    import numpy

    buildcat.progress(numpy.float32(0.25), "a numpy float")
    buildcat.progress(numpy.int64(1), "a numpy integer")
    return value


def text_fraction(value: object) -> object:
    buildcat.progress("50%")  # type: ignore[arg-type]
    return value


def nan_fraction(value: object) -> object:
    buildcat.progress(float("nan"), "not a number")
    return value


def surrogate_text(value: object) -> object:
    buildcat.progress(0.5, "bad \udcff text")
    print("printed \udcff too")
    return value


def _protocol_pipe() -> int:
    """The child's frame stream to its worker: the one pipe it writes besides 1 and 2."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in (0, 1, 2):
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            continue
        if target.startswith("pipe:") and flags & os.O_ACCMODE == os.O_WRONLY:
            return fd
    raise RuntimeError("no protocol pipe found")


def forge_result(value: object, marker: str) -> object:
    """The first run writes a result frame for another task into its worker's stream,
    as a broken child would; a later run (marker present) behaves."""
    path = buildcat.path(marker)
    if not path.exists():
        path.write_text("forged once")
        frame = msgpack.packb(
            {
                "type": "result",
                "kind": "result",
                "task": "J999.0",
                "seq": 1,
                "ok": True,
                "result": "forged",
                "log": "",
            }
        )
        os.write(_protocol_pipe(), struct.pack(">I", len(frame)) + frame)
        time.sleep(0.5)
    return value


# ---- processes a task leaves behind --------------------------------------------------------


def _daemon(pid_file: pathlib.Path) -> None:
    """Fork twice, detach (setsid), keep the inherited pipes open, sleep; the parent
    returns once the daemon has written its pid."""
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() == 0:
            pid_file.write_text(str(os.getpid()))
            time.sleep(600)
        os._exit(0)
    os.waitpid(first, 0)
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def leave_daemon(pid_file: str, then: str = "return") -> str:
    """Start a detached daemon, then ``return``, ``wait`` (for a cancel), ``hang``
    (ignore cancels) or ``crash`` (exit the child process)."""
    _daemon(buildcat.path(pid_file))
    if then == "crash":
        os._exit(3)
    if then == "wait":
        while True:
            time.sleep(0.02)
    if then == "hang":
        while True:
            try:
                time.sleep(0.02)
            except buildcat.TaskCancelled:
                print("ignoring the cancel", file=sys.stderr)
    return then


# ---- output ---------------------------------------------------------------------------------


def chatter(lines: int, result: object = None) -> object:
    """Print ``lines`` numbered lines, to stdout and stderr, flushing as it goes."""
    for number in range(lines):
        print(f"line {number}", flush=number % 100 == 0)
        if number % 1000 == 0:
            print(f"err {number}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    return result


def slow_cleanup(name: str) -> str:
    """Waits to be cancelled, then cleans up until gates/NAME.go: a second cancel must not
    break into the cleanup (gates/NAME.cleaned is written only if it runs to its end)."""
    gates = buildcat.path("gates")
    gates.mkdir(exist_ok=True)
    (gates / f"{name}.started").write_text(str(os.getpid()))
    try:
        while True:
            time.sleep(0.02)
    except buildcat.TaskCancelled:
        (gates / f"{name}.cleaning").write_text("")
        while not (gates / f"{name}.go").exists():
            time.sleep(0.02)
        (gates / f"{name}.cleaned").write_text("")
        raise
