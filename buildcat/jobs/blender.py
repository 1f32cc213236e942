"""Blender render jobs: planning tasks (chunks, tiles, sample splits) and running them.

A render task asks a Blender (the binary, or the ``bpy`` module in a separate Python) kept
running by the worker's child process to render into a temporary folder beside the
output, checks every frame it owns was written, then renames the frames into place. The
same Blender renders the child's next tasks, so Blender starts once per worker slot,
not once per task (``BUILDCAT_BLENDER_WARM=0`` starts one per task instead).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from buildcat import launch, paths, platform
from buildcat import root as farm_root
from buildcat.blender import BPY, SCRIPTS, BlenderInstall, blend_file_version, output_settings
from buildcat.blender import devices as gpu
from buildcat.errors import FarmError, JobFault, LimitError
from buildcat.frames import chunk_frames, format_frames, frame_path
from buildcat.jobs import context, video
from buildcat.protocol import MAX_TASKS_PER_JOB

#: The formats an option may ask for, with their extensions; with none, the scene's own.
FORMATS = output_settings.EXTENSIONS
ENGINES = ("cycles", "eevee", "workbench")
STEPS = ("render", "stitch", "merge")
#: Blender's own range for each side of a render (``render.resolution_x``/``_y``).
RESOLUTION_RANGE = (4, 65_536)
#: Cycles' own most samples.
MAX_SAMPLES = 16_777_216
#: Most tiles along each side of a frame (``--tiles 64x64``: 4,096 tiles a frame).
MAX_TILES_PER_SIDE = 64
#: Most parts one frame may be split into by samples.
MAX_SAMPLE_SPLIT = 64
#: Blender needed about 8 s to stop after SIGINT here; then it is killed.
CANCEL_GRACE_SECONDS = 10.0
#: A warm Blender with no task for this long exits, giving its memory back
#: (``BUILDCAT_BLENDER_IDLE_SECONDS`` changes it).
WARM_IDLE_SECONDS = 20.0
PARTS_FOLDER = ".buildcat-parts"
#: A render task's staging folder beside its outputs: ``.buildcat-tmp-<task id>-<pid>``.
TEMPORARY_PREFIX = ".buildcat-tmp-"
#: What a render task's result says of each frame (``result["frames_info"]``).
FRAME_INFO_KEYS = ("frame", "seconds", "peak_memory_mb", "blender", "worker", "device")

_FRAME = re.compile(r"Fra:\s*(\d+)")
_CYCLES_SAMPLE = re.compile(r"Sample (\d+)/(\d+)")
_EEVEE_SAMPLE = re.compile(r"Rendering (\d+) / (\d+) samples")
_SAVED = re.compile(r"Saved: '(.+)'")
#: Blender's own error lines (``Error: Cannot read file ...``), but the memory report some
#: builds print at every exit.
_BLENDER_ERROR = re.compile(r"^(?:Error|ERROR)\b[: ]\s*(?!Not freed memory)(.+)")
#: How the scripts inside Blender say why they stopped (script_support.py).
SCRIPT_ERROR = "buildcat: error: "
SCRIPT_JOB_ERROR = "buildcat: job error: "
_COMPOSED = re.compile(r"buildcat: (?:stitch|merge) of \d+ images written to (.+)$")
#: bpy_render.py's line once a frame is written and checked.
FRAME_DONE = "BUILDCAT-FRAME "
_TIME = re.compile(r"\| Time:(\d+(?::\d+)+(?:\.\d+)?)")
_REMAINING = re.compile(r"Remaining:(\d+(?::\d+)+(?:\.\d+)?)")
#: Blender's memory in a progress line: ``Fra:1 Mem:17.62M (Peak 17.83M) | ...``.
_PEAK_MEMORY = re.compile(r"\(Peak ([\d.]+)([KMG])\)", re.IGNORECASE)
_MEMORY_UNITS = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}


class RenderFailed(FarmError):
    """Blender failed, or did not write every frame it was asked for."""

    #: The message is the whole reason (Blender's own words): the task reports it without
    #: a traceback through buildcat's code.
    complete_reason = True


class SceneFault(RenderFailed, JobFault):
    """The job is wrong for its file (no such scene or camera, files it uses missing, not a
    .blend): every worker would fail it, so the job fails at its first attempt and no
    worker is blamed."""


# ---- planning (client side, pure) ----------------------------------------------------------


def default_output(scene: str, scene_name: str | None = None) -> str:
    """``renders/<file stem>/<scene name>/frame_####``: two scenes of one file never share."""
    stem = PurePosixPath(scene).stem
    if scene_name is None:
        return f"renders/{stem}/frame_####"
    # A '#' would become frame digits and a '/' a folder; such characters become '_'.
    safe = re.sub(r"[^\w.\- ]", "_", scene_name).strip() or "_"
    if safe in (".", ".."):
        safe = "_"
    return f"renders/{stem}/{safe}/frame_####"


def tile_rects(columns: int, rows: int) -> list[list[float]]:
    """Fractional rects [x0, y0, x1, y1] (y = 0 at the bottom) of a C x R grid, row by row."""
    return [
        [column / columns, row / rows, (column + 1) / columns, (row + 1) / rows]
        for row in range(rows)
        for column in range(columns)
    ]


def check_render_size(
    frame_count: int,
    *,
    chunk: int = 1,
    tiles: tuple[int, int] | None = None,
    sample_split: int | None = None,
    resolution: tuple[int, int] | None = None,
    samples: int | None = None,
) -> int:
    """Check a render job against the documented limits before any task is built;
    returns how many tasks it will have. Raises LimitError with one line."""
    if chunk < 1:
        raise LimitError(f"chunk {chunk}: a task renders at least one frame")
    if resolution is not None:
        low, high = RESOLUTION_RANGE
        width, height = resolution
        if not (low <= width <= high and low <= height <= high):
            raise LimitError(
                f"resolution {width}x{height}: each side is {low} to {high:,} pixels "
                "(Blender's own range)"
            )
    if samples is not None and not 1 <= samples <= MAX_SAMPLES:
        raise LimitError(f"samples {samples}: Cycles takes 1 to {MAX_SAMPLES:,} samples")
    if tiles is not None:
        columns, rows = tiles
        if not (1 <= columns <= MAX_TILES_PER_SIDE and 1 <= rows <= MAX_TILES_PER_SIDE):
            raise LimitError(
                f"tiles {columns}x{rows}: at most {MAX_TILES_PER_SIDE} tiles along each side "
                f"({MAX_TILES_PER_SIDE * MAX_TILES_PER_SIDE:,} a frame)"
            )
        count = frame_count * (columns * rows + 1)
    elif sample_split is not None:
        if not 2 <= sample_split <= MAX_SAMPLE_SPLIT:
            raise LimitError(f"sample split {sample_split}: 2 to {MAX_SAMPLE_SPLIT} parts")
        count = frame_count * (sample_split + 1)
    else:
        count = -(-frame_count // chunk)
    if count > MAX_TASKS_PER_JOB:
        raise LimitError(
            f"this render would be {count:,} tasks; a job may have at most "
            f"{MAX_TASKS_PER_JOB:,}: render more frames per task (--chunk) or fewer frames"
        )
    return count


def plan_render(
    scene: str,
    frames: list[int],
    *,
    chunk: int = 1,
    output: str | None = None,
    file_format: str | None = None,
    settings: dict[str, Any] | None = None,
    tiles: tuple[int, int] | None = None,
    sample_split: int | None = None,
    preview_video: bool = False,
    fps: float | str = 24,
) -> list[dict[str, Any]]:
    """The tasks of a render job, with the stitch/merge tasks depending on their parts.

    Without ``file_format`` (or ``format``, ``color_mode``, ``color_depth`` in ``settings``)
    frames are written as the scene's own output settings say. ``preview_video`` ends the
    job with a task making ``preview.mp4`` of the frames at ``fps`` (jobs/video.py)."""
    if tiles and sample_split:
        raise FarmError("--tiles and --sample-split cannot be combined")
    settings = dict(settings or {})
    if file_format is not None:
        settings["format"] = file_format
    output = strip_output_extension(output or default_output(scene), settings.get("format"))
    output = farm_root.check_relative(output)
    if (tiles or sample_split) and settings.get("format") == "OPEN_EXR_MULTILAYER":
        raise FarmError(MULTILAYER_PARTS)
    if sample_split and settings.get("engine", "cycles") != "cycles":
        raise FarmError("--sample-split works with Cycles only")
    tasks: list[dict[str, Any]] = []

    def render(frames_: list[int], pattern: str, extra: dict[str, Any], label: str) -> int:
        tasks.append(
            {
                "payload": {
                    "step": "render",
                    "scene": scene,
                    "frames": frames_,
                    "output": pattern,
                    "settings": {**settings, **extra},
                    "label": label,
                }
            }
        )
        return len(tasks) - 1

    folder, _, base = output.rpartition("/")
    parts = f"{folder}/{PARTS_FOLDER}" if folder else PARTS_FOLDER
    if not tiles and not sample_split:
        for group in chunk_frames(frames, chunk):
            render(group, output, {}, f"frames {format_frames(group)}")
        return video.add_preview_video(tasks, output, frames, fps) if preview_video else tasks
    for frame in frames:
        if tiles:
            columns, rows = tiles
            rects = tile_rects(columns, rows)
            part_patterns = [f"{parts}/{base}_tile{i:02d}_" for i in range(len(rects))]
            ids = [
                render(
                    [frame],
                    pattern,
                    {"border": _overlap(rect), "part": True},
                    f"frame {frame} tile {i}",
                )
                for i, (pattern, rect) in enumerate(zip(part_patterns, rects, strict=True))
            ]
            mode, extra = "stitch", {"rects": rects}
        else:
            assert sample_split is not None
            part_patterns = [f"{parts}/{base}_split{i:02d}_" for i in range(sample_split)]
            ids = [
                render(
                    [frame],
                    pattern,
                    {"split_index": i, "split_count": sample_split, "part": True},
                    f"frame {frame} samples {i + 1}/{sample_split}",
                )
                for i, pattern in enumerate(part_patterns)
            ]
            mode, extra = "merge", {}
        tasks.append(
            {
                "payload": {
                    "step": mode,
                    "frame": frame,
                    "parts": part_patterns,
                    "output": output,
                    # The stitch or merge writes in the scene's output settings and colour
                    # management, with the job's options: it opens the scene too.
                    "scene": scene,
                    "settings": settings,
                    "label": f"frame {frame} {mode}",
                    **extra,
                },
                "depends": ids,
            }
        )
    return video.add_preview_video(tasks, output, frames, fps) if preview_video else tasks


#: Why a multilayer EXR job cannot be tiled or split.
MULTILAYER_PARTS = (
    "--tiles and --sample-split write one image (OPEN_EXR, PNG, JPEG), not a multilayer EXR "
    "with passes: give --format OPEN_EXR, or render whole frames"
)


def strip_output_extension(output: str, file_format: str | None) -> str:
    """An output pattern that ends in an image extension, without it (Blender adds the
    format's own); refused when the extension is not the one the format writes."""
    stem, extension = output_settings.split_extension(output)
    if not extension:
        return output
    formats = output_settings.PATTERN_EXTENSIONS[extension]
    if file_format is not None and file_format not in formats:
        raise FarmError(
            f"output {output!r} ends in {extension} but {file_format} writes "
            f"{FORMATS.get(file_format, 'another extension')}: drop the extension "
            "(Blender adds the format's own)"
        )
    return stem


def _overlap(rect: list[float], margin: float = 0.02) -> list[float]:
    """A tile's border grown a little, so rounding in Blender never leaves a gap."""
    x0, y0, x1, y1 = rect
    return [
        max(0.0, x0 - margin),
        max(0.0, y0 - margin),
        min(1.0, x1 + margin),
        min(1.0, y1 + margin),
    ]


def validate_payload(payload: dict[str, Any]) -> None:
    step = payload.get("step", "render")
    if step not in STEPS:
        raise FarmError(f"unknown Blender step {step!r}")
    farm_root.check_relative(_text(payload, "output"))
    if step == "render":
        farm_root.check_relative(_text(payload, "scene"))
        frames = payload.get("frames")
        if (
            not isinstance(frames, list)
            or not frames
            or not all(isinstance(f, int) and not isinstance(f, bool) for f in frames)
        ):
            raise FarmError("'frames' must be a non-empty list of frame numbers")
        settings = payload.get("settings", {})
        if not isinstance(settings, dict):
            raise FarmError("'settings' must be a map")
        if not isinstance(settings.get("autoexec", False), bool):
            raise FarmError("'autoexec' must be true or false")
        _check_output_settings(settings)
        if settings.get("engine") not in (None, *ENGINES):
            raise FarmError(f"engine must be one of {', '.join(ENGINES)}")
        _check_settings_limits(settings)
    else:
        parts = payload.get("parts")
        if not isinstance(parts, list) or not parts:
            raise FarmError("'parts' must be a non-empty list of paths")
        for part in parts:
            farm_root.check_relative(_text({"part": part}, "part"))
        file_format = payload.get("format", "PNG")
        if not isinstance(file_format, str) or file_format not in FORMATS:
            raise FarmError(f"format must be one of {', '.join(FORMATS)}")
        if "scene" in payload:
            farm_root.check_relative(_text(payload, "scene"))
        settings = payload.get("settings", {})
        if not isinstance(settings, dict):
            raise FarmError("'settings' must be a map")
        _check_output_settings(settings)
        if settings.get("format") == "OPEN_EXR_MULTILAYER":
            raise FarmError(MULTILAYER_PARTS)
        if not isinstance(payload.get("frame"), int):
            raise FarmError("'frame' must be a frame number")


def _check_output_settings(settings: dict[str, Any]) -> None:
    """The output options of a task's settings: only values Blender has, in combinations
    it accepts (the scene's own format is checked by Blender on the worker)."""
    file_format, mode, depth = (
        settings.get(key) for key in ("format", "color_mode", "color_depth")
    )
    if any(
        value is not None and not isinstance(value, str) for value in (file_format, mode, depth)
    ):
        raise FarmError("'format', 'color_mode' and 'color_depth' must be text")
    output_settings.check_options(file_format, mode, depth, scene=None)
    if not isinstance(settings.get("part", False), bool):
        raise FarmError("'part' must be true or false")


def _check_settings_limits(settings: dict[str, Any]) -> None:
    """The limits of check_render_size, on a task's settings as the server receives them."""
    resolution = settings.get("resolution")
    if resolution is not None:
        if (
            not isinstance(resolution, list)
            or len(resolution) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in resolution)
        ):
            raise FarmError("'resolution' must be [width, height] in pixels")
        check_render_size(1, resolution=(resolution[0], resolution[1]))
    samples = settings.get("samples")
    if samples is not None:
        if not isinstance(samples, int) or isinstance(samples, bool):
            raise FarmError("'samples' must be a whole number")
        check_render_size(1, samples=samples)


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise FarmError(f"{key!r} must be a root-relative path")
    return value


# ---- running (inside the worker's child process) --------------------------------------------


def installed(encoded: str) -> BlenderInstall:
    if not encoded:
        raise FarmError("this worker has no Blender (give farm worker --blender PATH)")
    return BlenderInstall.decode(encoded)


def start_blender(command: list[str], stdin: int) -> subprocess.Popen[str]:
    """Start Blender with its output (stdout and stderr) as lines of text to read."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=stdin,
        text=True,
        errors="replace",
        bufsize=1,
        # A group of its own (the terminal's Ctrl-C is the worker's to handle), and Blender
        # must not outlive the child process that runs it (a worker killed with -9).
        **platform.tied_to_me(),
    )
    platform.after_start(process.pid)
    return process


def run_process(command: list[str], on_line: Callable[[str], None]) -> int:
    """Run Blender, passing each output line on; SIGINT, grace period, SIGKILL on cancel."""
    process = start_blender(command, subprocess.DEVNULL)
    assert process.stdout is not None
    print(f"buildcat: Blender started, pid {process.pid}")
    try:
        for line in process.stdout:
            on_line(line.rstrip("\n"))
        return process.wait()
    except BaseException:
        # Cancelled (or anything else): ask Blender to stop, then make sure it does.
        launch.end(process, signal.SIGINT, CANCEL_GRACE_SECONDS)
        print(f"buildcat: Blender stopped (exit code {process.returncode})")
        raise
    finally:
        process.stdout.close()


class _Progress:
    """Turns Blender's output into task progress and a record of each frame it saved.

    In background mode Cycles prints ``Sample 0/N``, then ``Sample 1/N`` with its
    ``Remaining:`` estimate, and nothing more until the last sample: between those lines
    the progress of the frame is estimated from that estimate and the time since
    (:meth:`tick`, called by :meth:`ticking`'s thread). ``on_saved(frame)`` is called
    once a frame's file may be moved: on Blender's ``Saved:`` line (with the frame it was
    rendering), or with ``checked_by_script`` on bpy_render.py's FRAME_DONE line, which
    comes after that script has checked the file.
    """

    def __init__(
        self,
        frames: list[int],
        already_saved: int = 0,
        on_saved: Callable[[int], None] | None = None,
        checked_by_script: bool = False,
    ) -> None:
        self.frames = frames
        self.saved = already_saved
        self.on_saved = on_saved
        #: bpy_render.py checks each file after ``Saved:``: wait for its FRAME_DONE line.
        self.checked_by_script = checked_by_script
        self.current: int | None = None
        self.last_report = 0.0
        #: Why Blender stopped, in its own (or our script's) words: the last such line.
        self.reason = ""
        self.job_fault = False
        self.lock = threading.Lock()
        #: The frame being rendered: when its first line came, its peak memory in MB.
        self.frame_started = 0.0
        self.peak_mb: float | None = None
        self.sample_fraction = 0.0
        self.sample_text = ""
        #: Blender's own clock for the frame (``Time:``) when a line gave it, with ours then,
        #: and its estimate of the frame's whole time (``Time:`` + ``Remaining:``).
        self.blender_time: tuple[float, float] | None = None
        self.estimated_total: float | None = None
        #: What was measured for each saved frame: seconds, peak_memory_mb.
        self.measured: dict[int, dict[str, Any]] = {}

    def feed(self, line: str) -> None:
        if line.startswith(FRAME_DONE):
            with self.lock:
                self._frame_done(line)
            return
        print(line)
        with self.lock:
            self._feed(line)

    def _frame_done(self, line: str) -> None:
        try:
            frame = int(json.loads(line.removeprefix(FRAME_DONE))["frame"])
        except (ValueError, KeyError, TypeError):
            print(f"buildcat: warning: unreadable line {line!r}")
            return
        if self.on_saved is not None:
            self.on_saved(frame)

    def _feed(self, line: str) -> None:
        now = time.monotonic()
        if line.startswith((SCRIPT_ERROR, SCRIPT_JOB_ERROR)):
            self.job_fault = line.startswith(SCRIPT_JOB_ERROR)
            self.reason = line.split(": ", 2)[-1]
            return
        error = _BLENDER_ERROR.match(line)
        if error and not self.reason:
            self.reason = error[1].strip()
        if _SAVED.search(line):
            frame = self.current
            self.saved += 1
            if frame is not None:
                self.measured[frame] = {
                    "seconds": round(now - self.frame_started, 3),
                    "peak_memory_mb": self.peak_mb,
                }
            self.current = None
            if frame is not None and self.on_saved is not None and not self.checked_by_script:
                self.on_saved(frame)
            self._report(f"saved {self.saved} of {len(self.frames)} frame(s)", force=True)
            return
        found = _FRAME.search(line)
        if found is None:
            return
        frame = int(found[1])
        if frame != self.current:
            self.current = frame
            self.frame_started = now
            self.peak_mb = None
            self.sample_fraction, self.sample_text = 0.0, ""
            self.blender_time = self.estimated_total = None
        peak = _PEAK_MEMORY.search(line)
        if peak:
            megabytes = float(peak[1]) * _MEMORY_UNITS[peak[2].upper()]
            self.peak_mb = max(self.peak_mb or 0.0, megabytes)
        clock = _TIME.search(line)
        if clock:
            self.blender_time = (_seconds(clock[1]), now)
            remaining = _REMAINING.search(line)
            if remaining:
                self.estimated_total = _seconds(clock[1]) + _seconds(remaining[1])
        sample = _CYCLES_SAMPLE.search(line) or _EEVEE_SAMPLE.search(line)
        if sample:
            done, total = int(sample[1]), int(sample[2])
            self.sample_fraction = done / total if total else 0.0
            self.sample_text = f"sample {done}/{total}"
            # The first lines of a frame come close together: never drop the one with the
            # estimate, or a long frame would show nothing until it ends.
            self._report(
                self._message(now), self._fraction(now), force=bool(_REMAINING.search(line))
            )

    def tick(self) -> None:
        """Report the estimated progress of the frame being rendered (between lines)."""
        with self.lock:
            if self.current is not None and self.estimated_total:
                now = time.monotonic()
                self._report(self._message(now), self._fraction(now))

    def _estimate(self, now: float) -> tuple[float, float] | None:
        """(fraction of the frame, seconds left) from Blender's own estimate."""
        if not self.estimated_total or self.blender_time is None:
            return None
        seen, at = self.blender_time
        spent = seen + (now - at)
        # Cycles guesses from the first sample; keep short of 1 until the frame is saved.
        return min(0.99, spent / self.estimated_total), max(0.0, self.estimated_total - spent)

    def _fraction(self, now: float) -> float:
        estimate = self._estimate(now)
        fraction = (
            self.sample_fraction if estimate is None else max(estimate[0], self.sample_fraction)
        )
        return min(fraction, 0.99)

    def _message(self, now: float) -> str:
        text = (
            f"frame {self.current}: {self.sample_text}"
            if self.sample_text
            else f"frame {self.current}"
        )
        estimate = self._estimate(now)
        if estimate is not None and self.sample_fraction < 1.0:
            text += f", about {estimate[1]:.0f}s left"
        return f"{text} ({self.saved} of {len(self.frames)} saved)"

    def _report(self, message: str, fraction_of_frame: float = 0.0, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_report < 0.2:
            return
        self.last_report = now
        total = len(self.frames) or 1
        context.progress(min(1.0, (self.saved + fraction_of_frame) / total), message)

    @contextlib.contextmanager
    def ticking(self, interval: float = 0.5) -> Iterator[None]:
        """Call :meth:`tick` every ``interval`` seconds while the block runs."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(interval):
                self.tick()

        thread = threading.Thread(target=run, name="blender-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _seconds(clock: str) -> float:
    """Blender's ``MM:SS.ff`` or ``HH:MM:SS.ff`` in seconds."""
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


class WarmBlender:
    """One Blender process that renders request after request (``blender/warm.py``)."""

    def __init__(self, blender: BlenderInstall) -> None:
        self.blender = blender
        if blender.kind == BPY:
            command = [blender.path, str(SCRIPTS / "warm.py")]
        else:
            command = [
                blender.path, "-b", "--python-exit-code", "1",
                "--python", str(SCRIPTS / "warm.py"),
            ]  # fmt: skip
        self.process = start_blender(command, subprocess.PIPE)
        context.keep_process(self.process.pid)  # it serves the next tasks: not a leftover
        self.last_used = time.monotonic()
        self.renders = 0
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.process.poll() is None

    def render(self, request: dict[str, Any], on_line: Callable[[str], None]) -> list[str]:
        """Send one request; pass Blender's output on; return the paths it wrote."""
        assert self.process.stdin is not None and self.process.stdout is not None
        reason = ""
        job_fault = False
        with self.lock:
            try:
                self.process.stdin.write(json.dumps(request) + "\n")
                self.process.stdin.flush()
                for line in self.process.stdout:
                    line = line.rstrip("\n")
                    if line.startswith("BUILDCAT-DONE "):
                        self.last_used = time.monotonic()
                        self.renders += 1
                        return list(json.loads(line.removeprefix("BUILDCAT-DONE ")))
                    if line.startswith(("BUILDCAT-ERROR ", "BUILDCAT-JOB-ERROR ")):
                        # warm.py caught it and is ready for the next request: keep it.
                        self.last_used = time.monotonic()
                        kind, _, reason = line.partition(" ")
                        job_fault = kind == "BUILDCAT-JOB-ERROR"
                        on_line(f"{SCRIPT_JOB_ERROR if job_fault else SCRIPT_ERROR}{reason}")
                        break
                    if line != "BUILDCAT-READY":
                        on_line(line)
            except BrokenPipeError:
                pass
            except BaseException:
                # Cancelled mid-render (or worse): this Blender is in an unknown state.
                self.stop()
                print(f"buildcat: Blender stopped (exit code {self.process.returncode})")
                raise
            if not reason:
                code = self.process.wait()
                reason = f"Blender stopped (exit code {code}) during the render; see the log"
        if job_fault:
            raise SceneFault(reason)
        raise RenderFailed(reason)

    def stop(self) -> None:
        """SIGINT, then SIGKILL after CANCEL_GRACE_SECONDS."""
        # End of input first: once SIGINT has stopped the render, warm.py would otherwise
        # wait for the next request until the SIGKILL.
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        if self.process.poll() is None:
            launch.end(self.process, signal.SIGINT, CANCEL_GRACE_SECONDS)
        with contextlib.suppress(OSError):
            if self.process.stdout is not None:
                self.process.stdout.close()
        context.release_process(self.process.pid)

    def close(self) -> None:
        """Ask it to leave (an empty line), then make sure it has."""
        stdin = self.process.stdin
        if stdin is not None and not stdin.closed:  # closed: a stop() already began
            with contextlib.suppress(OSError, ValueError):
                stdin.write("\n")
                stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
        self.stop()


_warm: WarmBlender | None = None
_warm_guard = threading.Lock()


def warm_blender(blender: BlenderInstall) -> WarmBlender:
    """The child's running Blender for ``blender``, started when there is none."""
    global _warm
    with _warm_guard:
        if _warm is not None and (not _warm.alive() or _warm.blender != blender):
            _warm.stop()
            _warm = None
        if _warm is None:
            _warm = WarmBlender(blender)
            threading.Thread(target=_reap_when_idle, args=(_warm,), daemon=True).start()
        return _warm


def _reap_when_idle(warm: WarmBlender) -> None:
    """Close a warm Blender that has had no task for WARM_IDLE_SECONDS."""
    global _warm
    while warm.alive():
        time.sleep(min(1.0, idle_seconds() / 2))
        if time.monotonic() - warm.last_used < idle_seconds():
            continue
        if not warm.lock.acquire(blocking=False):
            continue  # rendering right now
        try:
            with _warm_guard:
                if _warm is warm:
                    _warm = None
            warm.close()
        finally:
            warm.lock.release()
        return


def idle_seconds() -> float:
    try:
        return max(0.1, float(os.environ.get("BUILDCAT_BLENDER_IDLE_SECONDS", "")))
    except ValueError:
        return WARM_IDLE_SECONDS


def warm_enabled() -> bool:
    return os.environ.get("BUILDCAT_BLENDER_WARM", "1").strip().lower() not in ("0", "no", "off")


def run_task(task: dict[str, Any], blender_install: str = "") -> dict[str, Any]:
    """The entry point a worker's child calls for every Blender task."""
    validate_payload(task)
    blender = installed(blender_install)
    step = task.get("step", "render")
    if step == "render":
        return _render(task, blender)
    return _compose(task, blender)


def _temporary_folder(final_dir: Path) -> Path:
    name = f"{TEMPORARY_PREFIX}{context.current().task_id or 'task'}-{os.getpid()}"
    folder = final_dir / name
    shutil.rmtree(folder, ignore_errors=True)
    for attempt in range(3):
        final_dir.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()
            break
        except FileNotFoundError:  # an empty parts folder was just swept away: again
            if attempt == 2:
                raise
    _mark_staging(folder)
    return folder


# ---- leftovers: staging folders and empty parts folders ------------------------------------
#
# A task removes its staging folder when it ends. One killed with its worker cannot, so each
# staging folder is also noted under <root>/.buildcat/staging/<worker name>/ (one small file
# each, gone with the folder): the worker sweeps its notes when it starts again, and the
# server sweeps a job's output folders when the job ends, whoever ran it.


def _staging_notes(root: str | os.PathLike[str], worker_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", worker_name or "worker")[:120]
    return farm_root.state_dir(root) / "staging" / safe


def _mark_staging(folder: Path) -> None:
    ctx = context.current()
    with contextlib.suppress(OSError, ValueError):
        notes = _staging_notes(ctx.root, ctx.worker_name)
        notes.mkdir(parents=True, exist_ok=True)
        relative = folder.resolve().relative_to(Path(ctx.root).resolve()).as_posix()
        (notes / folder.name).write_text(relative)


def _unmark_staging(folder: Path) -> None:
    ctx = context.current()
    with contextlib.suppress(OSError):
        (_staging_notes(ctx.root, ctx.worker_name) / folder.name).unlink()


def _remove_staging(folder: Path) -> None:
    """Remove a staging folder, then its parts folder if that is left empty."""
    shutil.rmtree(folder, ignore_errors=True)
    if folder.parent.name == PARTS_FOLDER:
        with contextlib.suppress(OSError):  # not empty: parts other tasks still need
            folder.parent.rmdir()


def sweep_worker_leftovers(root: str | os.PathLike[str], worker_name: str) -> list[str]:
    """Remove the staging folders this worker's tasks noted and never removed (the worker
    was killed); returns them, root-relative. Run as the worker starts, before any task."""
    notes = _staging_notes(root, worker_name)
    swept = []
    with contextlib.suppress(OSError):
        for note in sorted(notes.iterdir()):
            with contextlib.suppress(OSError, FarmError):
                relative = farm_root.check_relative(note.read_text().strip())
                folder = farm_root.resolve(root, relative)
                if folder.name.startswith(TEMPORARY_PREFIX) and folder.is_dir():
                    _remove_staging(folder)
                    swept.append(relative)
            with contextlib.suppress(OSError):
                note.unlink()
    return swept


def sweep_job_leftovers(
    root: str | os.PathLike[str], job_id: str, payloads: list[dict[str, Any]]
) -> list[str]:
    """Once a render job has ended (done, failed or cancelled): remove its tasks' staging
    folders still beside its outputs and the parts folders left empty; returns what went."""
    folders: set[str] = set()
    for payload in payloads:
        paths = [payload.get("output"), *(payload.get("parts") or [])]
        for path in paths:
            if isinstance(path, str) and "/" in path:
                folders.add(path.rpartition("/")[0])
            elif isinstance(path, str):
                folders.add(".")
    swept = []
    for relative in sorted(folders):
        with contextlib.suppress(OSError, FarmError):
            folder = Path(root) if relative == "." else farm_root.resolve(root, relative)
            for staging in folder.glob(f"{TEMPORARY_PREFIX}{job_id}.*"):
                if staging.is_dir():
                    shutil.rmtree(staging, ignore_errors=True)
                    swept.append(staging.name)
            if folder.name == PARTS_FOLDER:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
                    swept.append(relative)
    return swept


def _render(task: dict[str, Any], blender: BlenderInstall) -> dict[str, Any]:
    ctx = context.current()
    scene = farm_root.resolve(ctx.root, task["scene"])
    if not scene.is_file():
        raise RenderFailed(f"scene {task['scene']} does not exist under the farm root {ctx.root}")
    try:
        saved_with = blend_file_version(scene)
    except OSError as exc:
        raise RenderFailed(f"cannot read {task['scene']}: {exc.strerror or exc}") from None
    if saved_with is None:  # changed since it was submitted: no worker could render it
        raise SceneFault(f"{task['scene']} is not a .blend file")
    settings = with_slot_devices(with_path_map(task.get("settings", {}), ctx.root))
    final_pattern = farm_root.resolve(ctx.root, task["output"])
    frames: list[int] = task["frames"]
    delivered = _Delivered.load(ctx)
    todo = [frame for frame in frames if frame not in delivered.frames]
    if len(todo) < len(frames):
        print(
            f"buildcat: frames {format_frames(sorted(set(frames) - set(todo)))} were delivered "
            "by an earlier attempt of this task and are still in place"
        )
    if not todo:
        return delivered.result(frames)
    try:
        staging = _temporary_folder(final_pattern.parent)
    except OSError as exc:
        raise RenderFailed(f"cannot write to {task['output']}: {exc.strerror or exc}") from None
    pattern = str(staging / final_pattern.name)

    def deliver(frame: int) -> None:
        """Move a frame Blender has saved into place at once (a cancel keeps it)."""
        if frame not in todo or frame in delivered.frames:
            return
        written = written_frame(pattern, frame)
        if written is None:
            return  # the check after the render names it
        final = Path(frame_path(str(final_pattern), frame, written.suffix))
        try:
            os.replace(written, final)
        except OSError as exc:
            print(f"buildcat: could not move frame {frame} into place: {exc}")
            return
        measured = progress.measured.get(frame, {})
        info = {"blender": blender.version, "worker": ctx.worker_name,
                "device": settings.get("gpu", {}).get("label", "CPU")}  # fmt: skip
        delivered.add(frame, final, {**measured, **info})

    # Only ``blender -b ... -f`` (the binary, once per task) writes frames without
    # bpy_render.py, which says when each is checked.
    by_script = warm_enabled() or blender.kind == BPY
    progress = _Progress(frames, len(frames) - len(todo), deliver, checked_by_script=by_script)
    try:
        with progress.ticking():
            if warm_enabled():
                warm = warm_blender(blender)
                how = f"reusing (render {warm.renders + 1})" if warm.renders else "starting"
                print(f"buildcat: {how} {blender.describe()}, pid {warm.process.pid}, for "
                      f"{scene.name} frames {format_frames(todo)}")  # fmt: skip
                request = {"blend": str(scene), "frames": todo, "output": pattern,
                           "settings": settings}  # fmt: skip
                warm.render(request, progress.feed)
            else:
                _render_once(blender, scene, settings, pattern, todo, progress)
        for frame in todo:  # any Blender did not announce with a Saved: line
            with progress.lock:
                deliver(frame)
            if frame not in delivered.frames:
                expected = Path(frame_path(pattern, frame, "")).name
                missing = f"Blender did not write frame {frame} ({expected}.*)"
                if progress.reason:  # Blender said why
                    missing += f"; Blender said: {progress.reason}"
                raise RenderFailed(missing)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _unmark_staging(staging)
    return delivered.result(frames)


def with_slot_devices(settings: dict[str, Any]) -> dict[str, Any]:
    """A task's settings with the devices of this worker slot as ``gpu`` (``farm worker
    --gpu``: blender/devices.py), for override.py to render on; none on other workers. Whatever
    a submitter put there is dropped: the devices are the worker's to choose."""
    settings = {key: value for key, value in settings.items() if key != "gpu"}
    devices = gpu.slot_devices()
    if devices is not None:
        settings["gpu"] = devices
    return settings


def with_path_map(settings: dict[str, Any], root: str | os.PathLike[str]) -> dict[str, Any]:
    """A task's settings with the farm's path map resolved for this worker (its system, its
    path to the root) as ``path_map``, for the scripts inside Blender to remap the scene's
    absolute paths with (blender/dependencies.py). Read at every task, so an edit of the map
    (`farm paths`) holds from the next task on; none when the root has no map. Whatever a
    submitter put there is replaced: the map is the worker's to read."""
    settings = {key: value for key, value in settings.items() if key != "path_map"}
    try:
        path_map = paths.load(root)
        if path_map.locations:
            system = paths.this_system()
            own = path_map.with_own_root(system, os.path.abspath(root))
            settings["path_map"] = own.resolve(system).to_json()
    except paths.PathMapError as exc:
        raise RenderFailed(str(exc)) from None
    return settings


class _Delivered:
    """The frames a render task has moved into place, with the record of each, kept in
    ``<root>/.buildcat/logs/JOB/TASK.frames.json`` beside the task's log, so a later
    attempt of the same task (a killed worker, a retry) renders only the frames still
    missing. A frame counts only while its file is the one recorded (same size and
    modification time): a file an earlier job left at the same path never does."""

    def __init__(self, path: Path | None, entries: dict[int, dict[str, Any]]) -> None:
        self.path = path
        self.entries = entries

    @property
    def frames(self) -> set[int]:
        return set(self.entries)

    @classmethod
    def load(cls, ctx: context.TaskContext) -> _Delivered:
        if not ctx.task_id:
            return cls(None, {})
        job_id = ctx.task_id.rpartition(".")[0]
        path = farm_root.state_dir(ctx.root) / "logs" / job_id / f"{ctx.task_id}.frames.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls(path, {})
        root = Path(ctx.root)
        entries: dict[int, dict[str, Any]] = {}
        for entry in saved if isinstance(saved, list) else []:
            try:
                stat = farm_root.resolve(root, entry["output"]).stat()
                if (stat.st_size, stat.st_mtime_ns) == (entry["size"], entry["mtime_ns"]):
                    entries[int(entry["frame"])] = entry
            except (OSError, KeyError, TypeError, ValueError, FarmError):
                continue  # gone or replaced since: render it again
        return cls(path, entries)

    def add(self, frame: int, final: Path, info: dict[str, Any]) -> None:
        stat = final.stat()
        root = Path(context.current().root).resolve()
        output = final.relative_to(root).as_posix()
        self.entries[frame] = {
            "frame": frame, "output": output, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            **info,
        }  # fmt: skip
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            staged = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            staged.write_text(json.dumps(sorted(self.entries.values(), key=lambda e: e["frame"])))
            os.replace(staged, self.path)
        except OSError as exc:  # the frame is in place: only a later retry loses the record
            print(f"buildcat: warning: could not record frame {frame} as delivered: {exc}")

    def result(self, frames: list[int]) -> dict[str, Any]:
        entries = [self.entries[frame] for frame in frames]
        return {
            "frames": frames,
            "outputs": [entry["output"] for entry in entries],
            "frames_info": [{key: entry.get(key) for key in FRAME_INFO_KEYS} for entry in entries],
        }


def _render_once(
    blender: BlenderInstall,
    scene: Path,
    settings: dict[str, Any],
    pattern: str,
    frames: list[int],
    progress: _Progress,
) -> None:
    """Start a Blender for this task alone (``BUILDCAT_BLENDER_WARM=0``)."""
    request = json.dumps(
        {"blend": str(scene), "frames": frames, "output": pattern, "settings": settings}
    )
    if blender.kind == BPY:
        command = [blender.path, str(SCRIPTS / "bpy_render.py"), request]
    elif any(frame < 0 for frame in frames):
        # -f reads '-2' as two before the end: bpy_render.py opens the file and renders
        # the frames from Python (as a warm Blender does).
        command = [
            blender.path, "-b", "--python-exit-code", "1",
            "--python", str(SCRIPTS / "bpy_render.py"), "--", request,
        ]  # fmt: skip
    else:
        # The scene to render must be chosen before --python: -f renders the one loaded.
        choose = ["-S", settings["scene"]] if settings.get("scene") else []
        # -y/-Y before the file: its Python (drivers) runs only when the job trusts it.
        trust = "-y" if settings.get("autoexec") is True else "-Y"
        command = [
            blender.path, "-b", trust, str(scene), *choose,
            "--python-exit-code", "1", "--python", str(SCRIPTS / "override.py"),
            "-o", pattern, "-x", "1",
            "-f", ",".join(str(f) for f in frames),
            "--", json.dumps(settings),
        ]  # fmt: skip
    print(f"buildcat: {' '.join(command[:3])} ... frames {format_frames(frames)}")
    code = run_process(command, progress.feed)
    if code != 0:
        if progress.job_fault:
            raise SceneFault(progress.reason)
        if progress.reason:
            raise RenderFailed(f"Blender exited with code {code}: {progress.reason}")
        raise RenderFailed(f"Blender exited with code {code}; see the task log")


def written_frame(pattern: str | Path, frame: int) -> Path | None:
    """The file Blender wrote for ``frame`` of an output pattern in a folder of the task's
    own: the frame's name plus whatever extension the scene's format gave it."""
    stem = Path(frame_path(str(pattern), frame, ""))
    try:
        names = os.listdir(stem.parent)
    except OSError:
        return None
    for name in sorted(names):
        rest = name[len(stem.name) :] if name.startswith(stem.name) else None
        if rest is not None and re.fullmatch(r"(\.[A-Za-z0-9]+)?", rest):
            path = stem.parent / name
            if path.is_file() and path.stat().st_size > 0:
                return path
    return None


def _compose(task: dict[str, Any], blender: BlenderInstall) -> dict[str, Any]:
    ctx = context.current()
    frame = task["frame"]
    old_style = "scene" not in task  # planned before the parts were float EXR
    extension = FORMATS[task.get("format", "PNG")] if old_style else ""
    inputs: list[Path] = []
    missing = []
    for part in task["parts"]:
        pattern = farm_root.resolve(ctx.root, part)
        found = (
            Path(frame_path(str(pattern), frame, extension))
            if old_style
            else written_frame(pattern, frame)
        )
        if found is None or not found.is_file():
            missing.append(frame_path(part, frame, extension or ".exr"))
        else:
            inputs.append(found)
    if missing:
        raise RenderFailed(f"missing parts of frame {frame}: {', '.join(missing)}")
    final = farm_root.resolve(ctx.root, frame_path(task["output"], frame, extension))
    final.parent.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "mode": task["step"],
        "inputs": [str(path) for path in inputs],
        "output": str(final),
    }
    if old_style:
        settings["format"] = task.get("format", "PNG")
    else:
        scene = farm_root.resolve(ctx.root, task["scene"])
        if not scene.is_file():
            raise RenderFailed(f"scene {task['scene']} does not exist under the farm root")
        settings["blend"] = str(scene)
        settings["settings"] = dict(task.get("settings", {}))
    if task["step"] == "stitch":
        settings["fractions"] = task["rects"]
    if blender.kind == BPY:
        command = [blender.path, str(SCRIPTS / "compose.py"), json.dumps(settings)]
    else:
        command = [
            blender.path, "-b", "--factory-startup", "--python-exit-code", "1",
            "--python", str(SCRIPTS / "compose.py"), "--", json.dumps(settings),
        ]  # fmt: skip
    composed: list[str] = []  # the path compose.py says it wrote

    def keep(line: str) -> None:
        print(line)
        written = _COMPOSED.search(line)
        if written:
            composed.append(written[1])

    code = run_process(command, keep)
    result = Path(composed[-1]) if composed else final
    if code != 0 or not result.is_file():
        raise RenderFailed(f"{task['step']} of frame {frame} failed (exit code {code})")
    for path in inputs:
        path.unlink(missing_ok=True)
    for folder in {path.parent for path in inputs if path.parent.name == PARTS_FOLDER}:
        with contextlib.suppress(OSError):  # not empty: another frame's parts are in it
            folder.rmdir()
    output = result.relative_to(Path(ctx.root).resolve()).as_posix()
    context.progress(1.0, f"frame {frame} {task['step']}ed")
    return {"frames": [frame], "outputs": [output]}
