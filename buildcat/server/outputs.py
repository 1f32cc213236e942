"""The frames each unfinished render job writes, so a second job never writes over them.

A job claims every frame it finishes under its output pattern: the pattern is split where
Blender puts the frame number (the last run of ``#``, else 4 digits at the end) and its
image extension is dropped, so ``shot/f_####`` in PNG and in EXR, or ``shot/f_####.png``,
claim the same frames. Tiles and sample-split parts are not claimed (they live in the
job's own parts folder); their stitch or merge claims the frame. Tasks of other kinds in
the job (a preview video) claim nothing.
"""

from __future__ import annotations

import posixpath
import re
from array import array
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from buildcat.jobs import task_kind

#: Kinds of job whose tasks write frames named by an ``output`` pattern.
CLAIMING_KINDS = frozenset({"blender"})
_EXTENSIONS = (".png", ".jpg", ".jpeg", ".exr", ".tif", ".tiff", ".bmp", ".tga", ".webp")
_HASHES = re.compile(r"#+")

#: A pattern as (text before the frame number, its digits, text after without extension).
Pattern = tuple[str, int, str]


def pattern_key(pattern: str) -> Pattern:
    """``"shot/./f_####.png"`` -> ("shot/f_", 4, "")."""
    pattern = posixpath.normpath(pattern)
    runs = list(_HASHES.finditer(pattern))
    if not runs:
        return pattern, 4, ""
    last = runs[-1]
    suffix = pattern[last.end() :]
    lowered = suffix.lower()
    for extension in _EXTENSIONS:
        if lowered.endswith(extension):
            suffix = suffix[: -len(extension)]
            break
    return pattern[: last.start()], len(last[0]), suffix


def frame_name(key: Pattern, frame: int) -> str:
    """The file a frame is written to, without its extension: ``shot/f_0003``."""
    prefix, digits, suffix = key
    return f"{prefix}{frame:0{digits}d}{suffix}"


def claims(kind: str, common: dict[str, Any]) -> bool:
    """A job of ``kind`` whose tasks share ``common`` claims frames (unless a task names
    another kind of its own)."""
    return task_kind(kind, common) in CLAIMING_KINDS


def claimed_frames(
    kind: str, tasks: Iterable[tuple[dict[str, Any], Sequence[int]]], common: dict[str, Any]
) -> dict[Pattern, list[int]]:
    """The frames a job's tasks finish, by output pattern, given each task's payload and
    the tasks it depends on; none for a kind that writes no frames."""
    listed = list(tasks)
    # A task's own kind, else the common payload's, else the job's.
    common_kind = task_kind(kind, common)
    if not claims(kind, common) and not any("kind" in p for p, _ in listed):
        return {}  # a million Python tasks: nothing to look at
    # A task a frame-writing task waits for is a part of a frame (a tile, a sample split);
    # one only a Python task waits for (the preview video) still finishes its frames.
    awaited = {
        dep
        for payload, depends in listed
        if task_kind(common_kind, payload) in CLAIMING_KINDS
        for dep in depends
    }
    keys: dict[str, Pattern] = {}
    found: dict[Pattern, list[int]] = {}
    for index, (payload, _) in enumerate(listed):
        if index in awaited:
            continue  # a part of a frame: its stitch or merge claims the frame
        if task_kind(common_kind, payload) not in CLAIMING_KINDS:
            continue
        merged = {**common, **payload} if common else payload
        pattern = merged.get("output")
        frames = merged.get("frames")
        if frames is None and "frame" in merged:
            frames = [merged["frame"]]
        if not isinstance(pattern, str) or not isinstance(frames, list):
            continue
        key = keys.get(pattern)
        if key is None:
            key = keys[pattern] = pattern_key(pattern)
        found.setdefault(key, []).extend(
            f for f in frames if isinstance(f, int) and not isinstance(f, bool)
        )
    return found


def _first_common(ours: array[int], theirs: array[int]) -> int | None:
    """A frame in both sorted arrays, or None."""
    if not ours or not theirs or ours[-1] < theirs[0] or theirs[-1] < ours[0]:
        return None
    small, large = (ours, theirs) if len(ours) <= len(theirs) else (theirs, ours)
    wanted = set(small)
    for frame in large:
        if frame in wanted:
            return frame
    return None


class OutputClaims:
    """Which unfinished jobs write which frames of each output pattern."""

    def __init__(self) -> None:
        self.by_pattern: dict[Pattern, dict[str, array[int]]] = {}
        self.by_job: dict[str, list[Pattern]] = {}

    def conflict(
        self,
        claims: dict[Pattern, list[int]],
        alive: Callable[[str], bool],
        job_id: str = "",
        runs_after: Collection[str] = (),
    ) -> tuple[str, str] | None:
        """(other job, frame file) for a frame an unfinished other job also writes, else
        None. The claims of a job that has finished (``alive`` says no) go on the way.
        Jobs in ``runs_after`` do not clash: the job runs only once they have ended."""
        for key, frames in claims.items():
            holders = self.by_pattern.get(key)
            if not holders:
                continue
            ours = array("q", sorted(set(frames)))
            for owner, theirs in list(holders.items()):
                if owner == job_id or owner in runs_after:
                    continue
                if not alive(owner):
                    self.release(owner)
                    continue
                common = _first_common(ours, theirs)
                if common is not None:
                    return owner, frame_name(key, common)
        return None

    def claim(self, job_id: str, claims: dict[Pattern, list[int]]) -> None:
        self.release(job_id)
        if not claims:
            return
        for key, frames in claims.items():
            self.by_pattern.setdefault(key, {})[job_id] = array("q", sorted(set(frames)))
        self.by_job[job_id] = list(claims)

    def release(self, job_id: str) -> None:
        for key in self.by_job.pop(job_id, ()):
            holders = self.by_pattern.get(key)
            if holders is not None:
                holders.pop(job_id, None)
                if not holders:
                    del self.by_pattern[key]
