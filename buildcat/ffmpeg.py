"""Which ffmpeg this machine uses, and the frames of a render found on disk for it.

``BUILDCAT_FFMPEG`` names one; else Debian's (or any) ``ffmpeg`` on PATH; else the static
build inside the ``imageio-ffmpeg`` wheel, a dependency of buildcat.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

from buildcat.errors import FarmError
from buildcat.frames import frame_path

#: Image files ffmpeg and Pillow both read, as a render writes them.
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".exr", ".tif", ".tiff", ".webp", ".bmp")
ENVIRONMENT = "BUILDCAT_FFMPEG"


class NoFFmpeg(FarmError):
    """This machine has no ffmpeg to run."""

    #: The message is the whole reason: a task reports it without the class name.
    complete_reason = True


def find_ffmpeg() -> str:
    """The ffmpeg program to run; a FarmError with one line when there is none."""
    chosen = os.environ.get(ENVIRONMENT)
    if chosen:
        found = shutil.which(chosen)
        if found is None:
            raise NoFFmpeg(f"{ENVIRONMENT}={chosen} is not an ffmpeg program on this machine")
        return found
    on_path = shutil.which("ffmpeg")
    if on_path is not None:
        return on_path
    try:
        import imageio_ffmpeg

        bundled = str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError, OSError):
        bundled = ""
    if bundled and os.path.isfile(bundled) and os.access(bundled, os.X_OK):
        return bundled
    raise NoFFmpeg(
        "no ffmpeg on this machine: install one (apt install ffmpeg, or "
        "pip install imageio-ffmpeg), or name it with BUILDCAT_FFMPEG"
    )


def frame_rate(fps: float | int | str) -> Fraction:
    """A frame rate as the exact fraction ffmpeg takes: ``24``, ``"30000/1001"``, or 23.976
    (Blender's 24 / 1.001) become 24/1, 30000/1001 and 24000/1001. Refuses what is not a
    rate from 1/1000 to 1000 frames a second."""
    try:
        rate = Fraction(str(fps)) if isinstance(fps, str) else Fraction(fps)
    except (ValueError, ZeroDivisionError, TypeError):
        raise FarmError(
            f"frame rate {fps!r}: give frames per second, e.g. 24 or 30000/1001"
        ) from None
    rate = rate.limit_denominator(1001)
    if not Fraction(1, 1000) <= rate <= 1000:
        raise FarmError(f"frame rate {fps!r}: give 0.001 to 1000 frames per second")
    return rate


def frame_files(pattern: Path, frames: list[int]) -> list[tuple[int, Path]]:
    """The frames of ``frames`` that exist for a render's output pattern (an absolute path
    with the pattern's ``#``), each once, in the order given (duplicates dropped). A frame
    written in two formats counts once: its newest file."""

    found: list[tuple[int, Path]] = []
    seen: set[int] = set()
    names: dict[str, list[str]] = {}
    folder = pattern.parent
    try:
        listing = os.listdir(folder)
    except OSError:
        return []
    for name in listing:
        stem, extension = os.path.splitext(name)
        if extension.lower() in FRAME_EXTENSIONS:
            names.setdefault(stem, []).append(name)
    for frame in frames:
        if frame in seen:
            continue
        seen.add(frame)
        stem = Path(frame_path(str(pattern), frame, "")).name
        candidates = [folder / name for name in names.get(stem, [])]
        candidates = [path for path in candidates if _nonempty_file(path)]
        if candidates:
            found.append((frame, max(candidates, key=lambda path: path.stat().st_mtime_ns)))
    return found


def _nonempty_file(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def exr_to_srgb(ffmpeg: str) -> tuple[list[str], str]:
    """How this ffmpeg turns EXR's linear light into sRGB: the EXR decoder's ``apply_trc``
    (ffmpeg up to 7.0, Debian 12's 5.1), else the ``zscale`` filter (libzimg: newer
    builds, imageio-ffmpeg's), as (input options, filters before the rest)."""
    decoder = subprocess.run(
        [ffmpeg, "-hide_banner", "-h", "decoder=exr"], capture_output=True, text=True,
        errors="replace", stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    if "apply_trc" in decoder.stdout:
        return ["-apply_trc", "iec61966_2_1"], ""
    zscale = subprocess.run(
        [ffmpeg, "-hide_banner", "-h", "filter=zscale"], capture_output=True, text=True,
        errors="replace", stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    if "zscale AVOptions" in zscale.stdout:
        return [], "zscale=transferin=linear:transfer=iec61966-2-1,"
    raise NoFFmpeg(
        f"{ffmpeg} cannot turn EXR's linear light into sRGB (its EXR decoder has no "
        "apply_trc and it has no zscale filter): use Debian's ffmpeg or imageio-ffmpeg's"
    )
