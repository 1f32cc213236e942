"""Job functions the integration tests run; copied into each test's farm root as a module."""

from __future__ import annotations

import os
import pathlib
import time

import buildcat
import buildcat.jobs.context


def square(x: int) -> int:
    return x * x


def pid(_: object = None) -> int:
    return os.getpid()


def boom(message: str) -> None:
    raise RuntimeError(f"boom: {message}")


def crash(code: int = 3) -> None:
    os._exit(code)


def crash_once(marker: str) -> str:
    """Kills its own process the first time it runs, succeeds the second time."""
    path = buildcat.path(marker)
    if not path.exists():
        path.write_text("crashed once")
        os._exit(9)
    return "second time lucky"


def slow(seconds: float, result: object = None) -> object:
    steps = max(1, int(seconds / 0.05))
    for step in range(steps):
        time.sleep(seconds / steps)
        buildcat.progress((step + 1) / steps, f"step {step + 1} of {steps}")
    return result


def write_file(relative: str, text: str) -> str:
    path = buildcat.path(relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return relative


def chatty(x: int) -> int:
    print(f"working on {x}")
    return x + 1


def render_frames(shot: str, frames: list[int], size: int = 8) -> list[str]:
    """Pretend to render: writes one small file per frame and returns their paths."""
    written = []
    for frame in frames:
        written.append(write_file(f"renders/{shot}/frame_{frame:04d}.txt", f"{shot} {size}"))
    return written


def big_result(megabytes: int) -> bytes:
    return b"x" * (megabytes * 1024 * 1024)


def version() -> str:
    return "v1"


def fails_on(worker_name: str) -> str:
    """Fails on the named worker, succeeds elsewhere: for retry and blocklist tests."""
    here = buildcat.jobs.context.current().worker_name
    if here == worker_name:
        raise RuntimeError(f"always fails on {here}")
    return here


def chaos_task(index: int, hold_from: int | None = None) -> str:
    """A little work, then one output file written whole (temporary name, then rename).
    Tasks from ``hold_from`` on first wait for the gate ``chaos-tail`` (the test's say)."""
    if hold_from is not None and index >= hold_from:
        _wait_gate("chaos-tail")
    time.sleep(0.05 + (index % 5) * 0.01)
    relative = f"chaos/out_{index:03d}.txt"
    path = buildcat.path(relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(f"task {index}\n" * 100)
    os.replace(temporary, path)
    return relative


def touch(relative: str) -> str:
    """Create an empty file at a root-relative path (the path rules do the refusing)."""
    return write_file(relative, "")


def where_am_i(relative: str, seconds: float = 0.0) -> str:
    """Write, at a root-relative path, this worker's own path to the root; return it."""
    time.sleep(seconds)
    root = buildcat.jobs.context.current().root
    path = buildcat.path(relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(root)
    return root


def fan_out(items: list[int]) -> list[int]:
    """A task that submits a job of its own to the farm it runs on, and waits for it."""
    with buildcat.connect() as farm:
        return list(farm.map("farm_jobs:square", items).results())


def print_frames(seconds: float, frames: list[int]) -> list[int]:
    """A stand-in for a renderer: prints a line per frame and reports progress."""
    for number, frame in enumerate(frames, 1):
        print(f"rendering frame {frame}", flush=True)
        time.sleep(seconds)
        buildcat.progress(number / len(frames), f"frame {frame}")
        print(f"saved frame {frame}", flush=True)
    return frames


# ---- gates: tasks that wait for the test, so no test depends on the machine's speed ----


def _gate(name: str, suffix: str) -> pathlib.Path:
    return buildcat.path(f"gates/{name}.{suffix}")


def _mark(name: str, suffix: str, text: str = "") -> None:
    marker = _gate(name, suffix)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(text)


def _wait_gate(name: str) -> None:
    while not _gate(name, "go").exists():
        time.sleep(0.02)


def gated(name: str, result: object = None) -> object:
    """Marks gates/NAME.started, waits until the test opens gates/NAME.go, returns
    ``result``. A cancel raised inside it is noted in gates/NAME.cancelled."""
    _mark(name, "started", str(os.getpid()))
    try:
        _wait_gate(name)
    except buildcat.TaskCancelled:
        _mark(name, "cancelled")
        raise
    return result


def hold(name: str, result: object = None) -> object:
    """``gated`` under a name of its own: the worker sizes its work apart from gated's."""
    return gated(name, result)


def stubborn(name: str) -> None:
    """A task that ignores cancels: it notes each one and goes on waiting for its gate."""
    _mark(name, "started", str(os.getpid()))
    while True:
        try:
            _wait_gate(name)
            return
        except buildcat.TaskCancelled:
            _mark(name, "cancelled")


def gated_frames(name: str, frames: list[int]) -> list[int]:
    """A renderer the test paces: prints "rendering frame N", marks gates/NAME-N.started,
    waits for gates/NAME-N.go, reports progress and prints "saved frame N"."""
    for number, frame in enumerate(frames, 1):
        print(f"rendering frame {frame}", flush=True)
        gated(f"{name}-{frame}")
        buildcat.progress(number / len(frames), f"frame {frame}")
        print(f"saved frame {frame}", flush=True)
    return frames


def fails_first_time(marker: str) -> str:
    """Prints and fails the first time it runs (leaving ``marker``), succeeds after that:
    for retry tests, with output for log views."""
    path = buildcat.path(marker)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("failed once")
        print(f"first attempt at {marker}: failing on purpose", flush=True)
        raise RuntimeError(f"failing the first time on purpose ({marker})")
    print(f"next attempt at {marker}: fine", flush=True)
    return "fine the second time"


def frame_image(relative: str, size: int = 16) -> dict[str, object]:
    """Writes a small PNG at a root-relative path and reports it as the task's output, as a
    render task does: the dashboard can then show it as the job's thumbnail."""
    from PIL import Image

    path = buildcat.path(relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (200, 40, 40)).save(path, format="PNG")
    return {"outputs": [relative]}


def fails_times(counter: str, times: int) -> int:
    """Counts its runs in the root-relative file ``counter``; the first ``times`` runs fail,
    later ones return the run's number (for retry, attempt and blocklist tests)."""
    path = buildcat.path(counter)
    path.parent.mkdir(parents=True, exist_ok=True)
    run = int(path.read_text() or 0) + 1 if path.exists() else 1
    path.write_text(str(run))
    if run <= times:
        raise RuntimeError(f"run {run} of {counter} fails")
    return run


def where_am_i_gated(relative: str, gate: str) -> str:
    """``where_am_i`` held at a gate: marks gates/GATE-<name of relative>.started with this
    worker's path to the root (written whole), waits for gates/GATE.go, then writes."""
    root = buildcat.jobs.context.current().root
    marker = _gate(f"{gate}-{pathlib.PurePosixPath(relative).stem}", "started")
    marker.parent.mkdir(parents=True, exist_ok=True)
    temporary = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    temporary.write_text(root)
    os.replace(temporary, marker)
    _wait_gate(gate)
    return where_am_i(relative)


def unencodable() -> object:
    """A result msgpack cannot carry (a set)."""
    return {1, 2, 3}


def nested(depth: int) -> object:
    """A result nested ``depth`` lists deep."""
    value: object = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def echo(value: object) -> object:
    """Returns its argument."""
    return value


def talk_until(name: str, lines: int) -> int:
    """Prints ``said 1`` … ``said LINES``, each once the test writes gates/NAME.say-N, then
    finishes: a log that grows while the test watches it."""
    _mark(name, "started", str(os.getpid()))
    for number in range(1, lines + 1):
        while not _gate(name, f"say-{number}").exists():
            time.sleep(0.02)
        print(f"said {number}", flush=True)
    return lines


def long_log(kilobytes: int) -> int:
    """Prints about ``kilobytes`` KiB of numbered lines, then ``the last line``."""
    line = 0
    for line in range(kilobytes * 1024 // 32):
        print(f"line {line:08d} of a long log...", flush=False)
    print("the last line", flush=True)
    return line
