"""Farm-root paths: every path a job names is relative to the root and must stay inside it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath

from buildcat import platform
from buildcat.errors import FarmError, PathError

STATE_DIR_NAME = ".buildcat"


def check_relative(path: str) -> str:
    """Return ``path`` normalised to forward slashes if it is relative and stays in the root.

    Refuses absolute paths (POSIX or Windows style) and ``..`` escapes, so the same job
    means the same files on every host, whatever path each host mounts the root at.
    """
    if not isinstance(path, str) or not path.strip():
        raise PathError("empty path: paths are relative to the farm root")
    if "\x00" in path:
        raise PathError(f"path {path!r} contains a NUL byte")
    if (
        PurePosixPath(path).is_absolute()
        or PureWindowsPath(path).is_absolute()
        or (PureWindowsPath(path).drive)
    ):
        raise PathError(f"path {path!r} is absolute: paths are relative to the farm root")
    parts: list[str] = []
    for part in path.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise PathError(f"path {path!r} escapes the farm root")
            parts.pop()
            continue
        parts.append(part)
    if not parts:
        raise PathError(f"path {path!r} names the farm root itself, not a file in it")
    return "/".join(parts)


def relative_in_root(root: str | os.PathLike[str], path: str) -> str:
    """Like :func:`check_relative`, but an absolute path on this host inside ``root`` (as
    given, or once symlinks are resolved) is made relative to it instead of refused."""
    if isinstance(path, str) and path and "\x00" not in path and os.path.isabs(path):
        base = Path(root).absolute()
        for inside, top in ((Path(path), base), (Path(path).resolve(), base.resolve())):
            with contextlib.suppress(ValueError):
                relative = inside.relative_to(top).as_posix()
                if relative != ".":
                    return check_relative(relative)
        raise PathError(
            f"path {path!r} is outside the farm root {base}: paths are relative to the farm root"
        )
    return check_relative(path)


def resolve(root: str | os.PathLike[str], path: str) -> Path:
    """Resolve a root-relative ``path`` on this host, refusing escapes through symlinks too."""
    relative = check_relative(path)
    base = Path(root).resolve()
    full = (base / relative).resolve()
    if full != base and base not in full.parents:
        raise PathError(f"path {path!r} escapes the farm root through a symlink")
    return full


def state_dir(root: str | os.PathLike[str]) -> Path:
    """The folder under the root where the farm keeps its own state."""
    return Path(root) / STATE_DIR_NAME


def open_private_log(path: str) -> io.TextIOWrapper:
    """Open a task log (``<root>/.buildcat/logs/JOB/TASK.log``) to append to, private to the
    farm's user like the secret: the folders it creates 0700, the file 0600. Line-buffered,
    so ``farm logs --follow`` sees each line as it is printed. What writes to it keeps the
    farm secret out (:class:`buildcat.auth.Redactor`)."""
    folder = os.path.dirname(path)
    os.makedirs(os.path.dirname(folder), mode=0o700, exist_ok=True)  # .../logs
    os.makedirs(folder, mode=0o700, exist_ok=True)  # the job's own
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | platform.OPEN_FLAGS
    descriptor = os.open(path, flags, 0o600)
    return os.fdopen(descriptor, "a", buffering=1, encoding="utf-8", errors="replace")


def write_json_whole(path: Path, value: object, mode: int, *, indent: int | None = None) -> None:
    """Write ``value`` as JSON whole: a temporary name, fsync, then a rename over the old
    file, so a reader sees the old file or the new, never half of one; the file gets
    ``mode`` whatever the umask (where the share keeps modes). FarmError when it cannot."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            if sys.platform != "win32":
                with contextlib.suppress(OSError):  # a share that keeps its own modes
                    os.fchmod(handle.fileno(), mode)
            json.dump(value, handle, indent=indent, sort_keys=indent is not None)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise FarmError(f"cannot write {path}: {exc.strerror}") from None
