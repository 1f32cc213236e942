"""Frame specs such as ``1,7,10-25,75-100:2`` or ``-5..5``: parsing, chunking and the compact
inverse; and the file name Blender gives a frame of an output pattern.

Pure logic, no I/O. Frames are integers (a scene's range may start at 0 or below); a range
is ``A-B`` or Blender's own ``A..B``, and a number's minus sign sits right before its digits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from buildcat.errors import FrameSpecError

MAX_FRAMES = 1_000_000
"""Most frames one spec may name, counted before building any list."""

_MAX_DIGITS = 18
"""Longer numbers are refused before ``int()`` so a pasted blob cannot cost time or memory."""

_PART = re.compile(
    r"(?P<start>-?[0-9]+)"
    r"(?:\s*(?:-|\.\.)\s*(?P<end>-?[0-9]+)(?:\s*:\s*(?P<step>[0-9]+))?)?",
    re.ASCII,
)
_EXPECTED = "expected N, A-B or A-B:STEP (or A..B)"


def _bad(part: str, why: str) -> FrameSpecError:
    return FrameSpecError(f"bad frame spec part {part!r}: {why}")


def _parse_part(part: str) -> tuple[int, int, int]:
    """Return ``(start, end, step)`` for one comma-separated part, already stripped."""
    match = _PART.fullmatch(part)
    if match is None:
        raise _bad(part, _EXPECTED)
    texts = [text for text in match.group("start", "end", "step") if text is not None]
    if any(len(text.lstrip("-")) > _MAX_DIGITS for text in texts):
        raise _bad(part, f"numbers have at most {_MAX_DIGITS} digits")
    start = int(texts[0])
    end = int(texts[1]) if len(texts) > 1 else start
    step = int(texts[2]) if len(texts) > 2 else 1
    if start > end:
        raise _bad(part, "range start is after its end")
    if step < 1:
        raise _bad(part, "step must be at least 1")
    return start, end, step


def parse_frames(spec: str) -> list[int]:
    """Return the sorted, de-duplicated frames named by ``spec``.

    ``spec`` is comma-separated parts, each ``N``, ``A-B`` or ``A..B`` (inclusive), either
    with ``:STEP``; whitespace is allowed around parts, separators and steps, and a number
    may be negative (``-5..-1``, ``-3-2``). Raises :class:`FrameSpecError` with one line
    naming the bad part, or when the spec names more than :data:`MAX_FRAMES` frames.
    """
    if not spec.strip():
        raise FrameSpecError("empty frame spec")
    runs: list[tuple[int, int, int]] = []
    total = 0
    for raw_part in spec.split(","):
        part = raw_part.strip()
        if not part:
            raise FrameSpecError(f"empty part in frame spec {spec.strip()!r}")
        start, end, step = _parse_part(part)
        # Counted arithmetically so '0-999999999' is refused before any list exists.
        total += (end - start) // step + 1
        if total > MAX_FRAMES:
            raise FrameSpecError(
                f"too many frames: part {part!r} brings the spec to {total:,} frames,"
                f" the limit is {MAX_FRAMES:,}"
            )
        runs.append((start, end, step))
    frames: set[int] = set()
    for start, end, step in runs:
        frames.update(range(start, end + 1, step))
    return sorted(frames)


def chunk_frames(frames: list[int], size: int) -> list[list[int]]:
    """Split ``frames`` into consecutive groups of ``size`` (the last may be shorter), in order."""
    if size < 1:
        raise FrameSpecError(f"bad chunk size {size}: must be at least 1")
    return [frames[index : index + size] for index in range(0, len(frames), size)]


def frame_ranges(frames: Iterable[int]) -> list[tuple[int, int, int]]:
    """Return ``(start, end, step)`` runs, end inclusive, covering exactly the set of ``frames``.

    Runs are found greedily over the sorted frames; a run with a step above 1 needs at
    least three frames, otherwise its first frame stands alone as ``(n, n, 1)``.
    These are the runs Blender renders with ``-s start -e end -j step -a``.
    """
    ordered = sorted(set(frames))
    runs: list[tuple[int, int, int]] = []
    index = 0
    count = len(ordered)
    while index < count:
        start = ordered[index]
        if index + 1 == count:
            runs.append((start, start, 1))
            break
        step = ordered[index + 1] - start
        last = index + 1
        while last + 1 < count and ordered[last + 1] - ordered[last] == step:
            last += 1
        if step == 1 or last - index >= 2:
            runs.append((start, ordered[last], step))
            index = last + 1
        else:
            runs.append((start, start, 1))
            index += 1
    return runs


def format_frames(frames: Iterable[int]) -> str:
    """Return a compact spec for ``frames``, such as ``1-3,5-9:2``; ``""`` for no frames.

    A range with a negative end is written with Blender's ``..`` (``-5..-1``), which reads
    more plainly than ``-5--1``.

    ``parse_frames(format_frames(frames)) == sorted(set(frames))`` for any non-empty frames
    that ``parse_frames`` can name (at most :data:`MAX_FRAMES` of them).
    """
    parts: list[str] = []
    for start, end, step in frame_ranges(frames):
        if start == end:
            parts.append(str(start))
        else:
            separator = ".." if start < 0 else "-"
            stepped = "" if step == 1 else f":{step}"
            parts.append(f"{start}{separator}{end}{stepped}")
    return ",".join(parts)


def frame_path(pattern: str, frame: int, extension: str) -> str:
    """Blender's rule: the last run of ``#`` becomes the zero-padded frame, else 4 digits
    are appended; then the format's extension."""
    runs = list(re.finditer(r"#+", pattern))
    width = len(runs[-1][0]) if runs else 4
    # Both Blenders write the sign before the padded digits: frame -2 is -0002 for ####.
    number = f"{'-' if frame < 0 else ''}{abs(frame):0{width}d}"
    if runs:
        last = runs[-1]
        name = f"{pattern[: last.start()]}{number}{pattern[last.end() :]}"
    else:
        name = f"{pattern}{number}"
    return name + extension
