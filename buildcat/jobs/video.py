"""Preview videos: the frames a render wrote, in frame order, made into one H.264 MP4.

A render job with ``preview_video`` ends with a Python task (``"kind": "python"`` in its
payload) that waits for every task that finishes a frame and runs :func:`make_video` on a
worker; ``farm video JOB`` submits the same task as a job of its own, after the fact.
The frames that exist are linked, in order, as a numbered sequence in a temporary folder
(gaps and steps in the frame spec leave no hole in the video), and ffmpeg encodes them:
H.264 (libx264), yuv420p, padded with black to even dimensions, at the scene's frame
rate. EXR frames are linear light: ffmpeg's EXR decoder applies the sRGB curve
(``-apply_trc iec61966_2_1``), clipping above 1 as Blender's Standard view does. Frames
with alpha are composited over black. The video is written under a temporary name in the
output folder and renamed into place whole.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from buildcat import launch, platform
from buildcat import root as farm_root
from buildcat.errors import FarmError
from buildcat.ffmpeg import exr_to_srgb, find_ffmpeg, frame_files, frame_rate
from buildcat.jobs import context

VIDEO_NAME = "preview.mp4"
FUNCTION = "buildcat.jobs.video:make_video"
LABEL = "preview video"
#: ffmpeg stops this long after SIGINT at the most, then it is killed.
CANCEL_GRACE_SECONDS = 5.0
#: The H.264 quality: visually lossless for a preview, small files.
CRF = "18"


class VideoFailed(FarmError):
    """ffmpeg failed, or there were no frames to make a video of."""

    complete_reason = True


def video_path(output: str) -> str:
    """Where a render's preview video goes: ``preview.mp4`` beside its frames."""
    folder = posixpath.dirname(output)
    return posixpath.join(folder, VIDEO_NAME) if folder else VIDEO_NAME


def media_paths(meta: Any) -> dict[str, str]:
    """The root-relative preview video and contact sheet a job may have, from its record
    alone (never from a request): a render's beside its frames, a video job's its own."""
    from buildcat.imaging import SHEET_NAME

    found: dict[str, str] = {}
    if not isinstance(meta, dict):
        return found
    output = meta.get("output")
    candidates = {"video": meta.get("preview_video")}
    if isinstance(output, str) and isinstance(meta.get("frames"), str):
        folder = posixpath.dirname(output)
        candidates["video"] = candidates["video"] or video_path(output)
        candidates["contact_sheet"] = posixpath.join(folder, SHEET_NAME) if folder else SHEET_NAME
    names = {"video": VIDEO_NAME, "contact_sheet": SHEET_NAME}
    for name, path in candidates.items():
        # Only files of those names, never in the farm's state folder: a job's record
        # cannot make the dashboard serve another file (the secret) as its video.
        if isinstance(path, str) and posixpath.basename(path) == names[name]:
            with contextlib.suppress(FarmError):
                relative = farm_root.check_relative(path)
                if relative.split("/")[0] != farm_root.STATE_DIR_NAME:
                    found[name] = relative
    return found


def video_task(
    output: str, frames: list[int], fps: float | str, depends: list[int]
) -> dict[str, Any]:
    """The task that makes the preview video of a render's ``frames`` (output pattern
    ``output``), once the tasks ``depends`` (those that finish frames) are done."""
    rate = frame_rate(fps)
    return {
        "payload": {
            "kind": "python",
            "function": FUNCTION,
            "kwargs": {
                "output": output,
                # Not "frames": a task's "frames" are what it renders (the frame counts).
                "frame_numbers": list(frames),
                "fps": f"{rate.numerator}/{rate.denominator}",
                "video": video_path(output),
            },
            "label": LABEL,
        },
        "depends": list(depends),
    }


def add_preview_video(
    tasks: list[dict[str, Any]], output: str, frames: list[int], fps: float | str
) -> list[dict[str, Any]]:
    """``tasks`` (a planned render) with a last task making its preview video, waiting for
    every task that finishes frames: not the tiles and sample splits, whose stitch or merge
    finishes them."""
    parts = {index for task in tasks for index in task.get("depends", ())}
    finishing = [index for index in range(len(tasks)) if index not in parts]
    return [*tasks, video_task(output, frames, fps, finishing)]


def make_video(
    output: str, frame_numbers: list[int], fps: str, video: str | None = None
) -> dict[str, Any]:
    """Encode the frames of ``frame_numbers`` that exist for the output pattern ``output``
    (root-relative) into ``video`` (default ``preview.mp4`` beside them)."""
    ctx = context.current()
    target_relative = farm_root.check_relative(video or video_path(output))
    target = farm_root.resolve(ctx.root, target_relative)
    rate = frame_rate(fps)
    ffmpeg = find_ffmpeg()
    found = frame_files(farm_root.resolve(ctx.root, output), frame_numbers)
    if not found:
        raise VideoFailed(f"no frames of {output} to make a video of (none is written yet)")
    # One video, one format: a frame rendered again in another format keeps the majority's.
    extension, _ = Counter(path.suffix.lower() for _, path in found).most_common(1)[0]
    left_out = [frame for frame, path in found if path.suffix.lower() != extension]
    used = [(frame, path) for frame, path in found if path.suffix.lower() == extension]
    missing = sorted(set(frame_numbers) - {frame for frame, _ in found})
    print(f"buildcat: {len(used)} frames of {output} ({extension}) at {rate} fps")
    if missing:
        print(f"buildcat: frames not written, so not in the video: {_few(missing)}")
    if left_out:
        print(f"buildcat: frames left out, written as another format: {_few(left_out)}")
    print(f"buildcat: ffmpeg {ffmpeg}")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with tempfile.TemporaryDirectory(prefix="buildcat-video-") as sequence:
        for number, (_, path) in enumerate(used):
            _link(path, Path(sequence) / f"{number:06d}{extension}")
        command = encode_command(ffmpeg, Path(sequence), extension, rate, temporary)
        try:
            _run(command, len(used))
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
    return {
        "video": target_relative,
        "frames": [frame for frame, _ in used],
        "fps": f"{rate.numerator}/{rate.denominator}",
    }


def encode_command(
    ffmpeg: str, sequence: Path, extension: str, rate: Any, output: Path
) -> list[str]:
    """ffmpeg's arguments for a numbered sequence ``000000.ext`` ... in ``sequence``."""
    decode: list[str] = []
    if extension == ".exr":
        # Linear light to sRGB; EXR alpha is premultiplied: over black is the colour as it is.
        decode, composite = exr_to_srgb(ffmpeg)
    else:
        # PNG/TIFF alpha is straight: multiplying by it is compositing over black.
        composite = "format=gbrap16le,premultiply=inplace=1,"
    filters = (
        f"{composite}pad=ceil(iw/2)*2:ceil(ih/2)*2:0:0:black,"
        "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p"
    )
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-nostats",
        "-progress", "pipe:1", "-y",
        *decode, "-framerate", f"{rate.numerator}/{rate.denominator}",
        "-start_number", "0", "-i", str(sequence / f"%06d{extension}"),
        "-vf", filters, "-c:v", "libx264", "-preset", "medium", "-crf", CRF,
        "-pix_fmt", "yuv420p", "-colorspace", "bt709", "-color_primaries", "bt709",
        "-color_trc", "bt709", "-movflags", "+faststart", "-an", "-f", "mp4", str(output),
    ]  # fmt: skip


def _link(source: Path, link: Path) -> None:
    try:
        os.symlink(source, link)
    except OSError:  # no symlinks here (Windows without the privilege): a copy
        shutil.copyfile(source, link)


def _run(command: list[str], total: int) -> None:
    """Run ffmpeg, turning its ``frame=N`` progress into the task's; its error lines are
    the reason when it fails. Cancelled: SIGINT, then SIGKILL after a grace period."""
    with tempfile.TemporaryFile(mode="w+", errors="replace") as errors:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL,
            text=True, errors="replace", **platform.new_group(),
        )  # fmt: skip
        assert process.stdout is not None
        try:
            for line in process.stdout:
                key, _, value = line.strip().partition("=")
                if key == "frame" and value.isdigit():
                    done = int(value)
                    context.progress(done / max(total, 1), f"encoded {done}/{total} frames")
            code = process.wait()
        except BaseException:
            launch.end(process, signal.SIGINT, CANCEL_GRACE_SECONDS)
            raise
        finally:
            process.stdout.close()
        errors.seek(0)
        said = errors.read().strip()
    if said:
        print(said)
    if code != 0:
        last = said.splitlines()[-1] if said else "see the task log"
        raise VideoFailed(f"ffmpeg exited with code {code}: {last}")


def _few(frames: list[int]) -> str:
    from buildcat.frames import format_frames

    with contextlib.suppress(Exception):
        return format_frames(frames)
    return ", ".join(str(f) for f in frames)
