"""The frames each unfinished render job writes, so a second job never writes over them.

A job claims the file of every frame it finishes: its output pattern with the frame put in
(Blender's ``#`` rule), without the image extension, so ``shot/f_####`` in PNG and in EXR,
or ``shot/f_####.png``, are the same frames. Tiles and sample-split parts are not claimed
(they live in the job's own parts folder beside the frames); their stitch or merge is.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from typing import Any

from buildcat.jobs.blender import frame_path

#: Kinds of job whose tasks write frames named by an ``output`` pattern.
CLAIMING_KINDS = frozenset({"blender"})
_EXTENSIONS = (".png", ".jpg", ".jpeg", ".exr", ".tif", ".tiff", ".bmp", ".tga", ".webp")


def claimed_paths(
    kind: str, tasks: Iterable[tuple[dict[str, Any], list[int]]], common: dict[str, Any]
) -> list[str]:
    """The frame files (root-relative, no extension) a job's tasks finish, given each task's
    payload and the tasks it depends on; none for a kind that writes no frames."""
    if kind not in CLAIMING_KINDS:
        return []
    listed = list(tasks)
    awaited = {dep for _, depends in listed for dep in depends}
    paths: list[str] = []
    for index, (payload, _) in enumerate(listed):
        if index in awaited:
            continue  # a part of a frame: its stitch or merge claims the frame
        merged = {**common, **payload}
        pattern = merged.get("output")
        frames = merged.get("frames")
        if frames is None and "frame" in merged:
            frames = [merged["frame"]]
        if not isinstance(pattern, str) or not isinstance(frames, list):
            continue
        pattern = posixpath.normpath(pattern)
        for frame in frames:
            if isinstance(frame, int) and not isinstance(frame, bool):
                paths.append(_stem(frame_path(pattern, frame, "")))
    return paths


def _stem(path: str) -> str:
    lowered = path.lower()
    for extension in _EXTENSIONS:
        if lowered.endswith(extension):
            return path[: -len(extension)]
    return path


class OutputClaims:
    """Which unfinished job writes each frame file."""

    def __init__(self) -> None:
        self.by_path: dict[str, str] = {}
        self.by_job: dict[str, list[str]] = {}

    def conflict(
        self, paths: Iterable[str], alive: Callable[[str], bool], job_id: str = ""
    ) -> tuple[str, str] | None:
        """(other job, path) for the first path an unfinished other job claims, else None.
        A claim of a job that has finished (``alive`` says no) is dropped on the way."""
        for path in paths:
            owner = self.by_path.get(path)
            if owner is None or owner == job_id:
                continue
            if alive(owner):
                return owner, path
            self.release(owner)
        return None

    def claim(self, job_id: str, paths: list[str]) -> None:
        if not paths:
            return
        self.release(job_id)
        self.by_job[job_id] = paths
        for path in paths:
            self.by_path[path] = job_id

    def release(self, job_id: str) -> None:
        for path in self.by_job.pop(job_id, ()):
            if self.by_path.get(path) == job_id:
                del self.by_path[path]
