"""Finding and loading job types: the built-ins and ``<root>/jobtypes/*.py``, each read
again when its file changes, and running their ``compile`` under a time limit.

This runs job-type code in the calling process: the client uses it through
:mod:`buildcat.jobtypes.child` (a child process) for the root's files, and directly only
for the built-ins, which are package code.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from buildcat import platform
from buildcat.errors import FarmError
from buildcat.jobtypes import JobPlan, JobTypeBroken, Setting, validate_settings

#: Folder under the farm root that holds a studio's job types.
FOLDER = "jobtypes"
#: Job types shipped with buildcat (modules of ``buildcat.jobtypes.builtin``).
BUILTINS = ("render",)
#: Names ``farm submit`` already uses for its own commands: a job type cannot take them.
RESERVED = ("python", "blender", "command", "script")
#: Seconds a job type's file may take to load, and its ``compile`` to run, before it is
#: stopped and reported broken (``BUILDCAT_JOBTYPE_TIMEOUT`` changes the second).
LOAD_SECONDS = 5.0
COMPILE_SECONDS = 60.0
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def compile_seconds() -> float:
    text = os.environ.get("BUILDCAT_JOBTYPE_TIMEOUT", "")
    try:
        return float(text) if text else COMPILE_SECONDS
    except ValueError:
        return COMPILE_SECONDS


@dataclass(slots=True)
class JobType:
    """One loaded job type: its declaration and its compile function."""

    name: str
    source: str  # "built-in" or "jobtypes/NAME.py"
    label: str
    description: str
    settings: list[Setting]
    compile: Callable[..., Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "label": self.label,
            "description": self.description,
            "settings": [s.to_json() for s in self.settings],
        }


def folder(root: str | os.PathLike[str]) -> Path:
    return Path(root) / FOLDER


def root_files(root: str | os.PathLike[str]) -> dict[str, Path]:
    """Job type name -> file, for every ``<root>/jobtypes/NAME.py`` (``_*.py`` are helpers
    a job type may import, not job types)."""
    found: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for path in sorted(folder(root).glob("*.py")):
            if not path.name.startswith("_") and path.is_file():
                found[path.stem] = path
    return found


def names(root: str | os.PathLike[str]) -> list[str]:
    """Every job type's name: the built-ins, then the root's."""
    return [*BUILTINS, *(n for n in root_files(root) if n not in BUILTINS)]


def signature(root: str | os.PathLike[str]) -> tuple[tuple[str, int, int], ...]:
    """What changes when a job type's file does (name, mtime, size): the key a listing is
    cached by."""
    stamps = []
    for name, path in root_files(root).items():
        try:
            info = path.stat()
        except OSError:
            continue
        stamps.append((name, info.st_mtime_ns, info.st_size))
    return tuple(stamps)


#: path -> ((mtime_ns, size), loaded job type or the error it gave)
_loaded: dict[str, tuple[tuple[int, int], JobType | JobTypeBroken]] = {}


def load(root: str | os.PathLike[str], name: str) -> JobType:
    """The job type ``name``, loaded (again, if its file changed since); raises
    JobTypeBroken (one line, with the traceback) or FarmError for an unknown name."""
    if name in BUILTINS:
        module = importlib.import_module(f"buildcat.jobtypes.builtin.{name}")
        return _from_module(name, "built-in", module)
    path = root_files(root).get(name)
    if path is None:
        known = ", ".join(names(root))
        raise FarmError(f"unknown job type {name!r} (job types: {known}; see farm job-types)")
    source = f"{FOLDER}/{path.name}"
    try:
        info = path.stat()
        stamp = (info.st_mtime_ns, info.st_size)
    except OSError as exc:
        raise JobTypeBroken(f"job type {name!r} ({source}) cannot be read: {exc}") from None
    cached = _loaded.get(str(path))
    if cached is not None and cached[0] == stamp:
        if isinstance(cached[1], JobTypeBroken):
            raise cached[1]
        return cached[1]
    try:
        loaded: JobType | JobTypeBroken = _load_file(name, path, source, Path(root))
    except JobTypeBroken as exc:
        loaded = exc
    _loaded[str(path)] = (stamp, loaded)
    if isinstance(loaded, JobTypeBroken):
        raise loaded
    return loaded


def _load_file(name: str, path: Path, source: str, root: Path) -> JobType:
    if not _NAME.match(name):
        raise JobTypeBroken(
            f"job type file {source}: a name is lower-case letters, digits, - and _"
        )
    if name in RESERVED:
        raise JobTypeBroken(f"job type file {source}: {name!r} is taken by farm submit {name}")
    module_name = f"buildcat_jobtype_{name.replace('-', '_')}"
    try:
        code = compile(path.read_bytes(), str(path), "exec")
        module = ModuleType(module_name)
        module.__file__ = str(path)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up
        if str(root) not in sys.path:  # modules under the root import, as on a worker
            sys.path.append(str(root))
        with time_limit(LOAD_SECONDS, f"loading took longer than {LOAD_SECONDS:g} s"):
            exec(code, module.__dict__)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise broken(name, source, exc) from None
    try:
        return _from_module(name, source, module)
    except FarmError as exc:
        raise JobTypeBroken(f"job type {name!r} ({source}) is broken: {exc}") from None


def _from_module(name: str, source: str, module: ModuleType) -> JobType:
    compile_function = getattr(module, "compile", None)
    if not callable(compile_function):
        raise FarmError("it defines no compile(settings, job) function")
    settings = list(getattr(module, "SETTINGS", []))
    seen: set[str] = set()
    for setting in settings:
        if not isinstance(setting, Setting):
            raise FarmError(f"SETTINGS holds {setting!r}, not a Setting")
        if setting.name in seen:
            raise FarmError(f"setting {setting.name!r} is declared twice")
        if setting.name in JOB_OPTIONS:
            raise FarmError(f"setting {setting.name!r} would hide the submit option of that name")
        seen.add(setting.name)
    doc = (module.__doc__ or "").strip()
    label = str(getattr(module, "LABEL", "") or doc.split("\n", 1)[0] or name)
    description = str(getattr(module, "DESCRIPTION", "") or doc)
    return JobType(name, source, label, description, settings, compile_function)


#: Names every submit takes besides a job type's own settings (``Client.submit_tasks``'s
#: job options, and ``after``/``notify`` where the client has them).
JOB_OPTIONS = (
    "priority",
    "name",
    "requires",
    "max_attempts",
    "timeout",
    "after",
    "after_any",
    "notify",
)


def broken(name: str, source: str, exc: BaseException) -> JobTypeBroken:
    """The one line (and traceback) for a job type whose code raised ``exc``."""
    if isinstance(exc, SyntaxError):
        where = f" (line {exc.lineno})" if exc.lineno else ""
        reason = f"SyntaxError: {exc.msg}{where}"
    elif isinstance(exc, _Overtime):
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    text = "".join(traceback.format_exception(exc))
    return JobTypeBroken(f"job type {name!r} ({source}) is broken: {reason}", text)


def compile_job(root: str | os.PathLike[str], name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Load ``name``, check ``given`` against its settings and run its ``compile``: the
    plan as ``JobPlan.to_json`` gives it. Raises SettingError, JobTypeBroken or FarmError."""
    job_type = load(root, name)
    values = validate_settings(name, job_type.settings, given, root)
    plan = JobPlan(name, Path(root))
    # The built-ins run in the caller's process: no alarm of ours in someone's program.
    limit = 0.0 if job_type.source == "built-in" else compile_seconds()
    try:
        with time_limit(limit, f"compile took longer than {limit:g} s"):
            job_type.compile(values, plan)
    except FarmError:
        raise  # a job type's own refusal ("no camera named ..."): the user's mistake
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise broken(name, job_type.source, exc) from None
    if not len(plan):
        raise FarmError(f"job type {name!r} made no tasks from these settings")
    document = plan.to_json()
    document["meta"] = {**document["meta"], "job_type": name, "settings": dict(values)}
    document["name"] = document["name"] or name
    return document


def describe(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every job type as data: its declaration, or ``error`` and ``traceback`` when it
    does not load."""
    listing: list[dict[str, Any]] = []
    files = root_files(root)
    for name in names(root):
        try:
            listing.append(load(root, name).to_json())
        except JobTypeBroken as exc:
            source = "built-in" if name in BUILTINS else f"{FOLDER}/{files[name].name}"
            listing.append(
                {"name": name, "source": source, "error": str(exc), "traceback": exc.traceback}
            )
    for name in BUILTINS:
        if name in files:  # never loaded: the built-in keeps its name
            source = f"{FOLDER}/{files[name].name}"
            error = f"job type file {source}: {name!r} is the built-in job type's name; rename it"
            listing.append({"name": name, "source": source, "error": error, "traceback": ""})
    return listing


class _Overtime(BaseException):
    """Raised inside job-type code that ran past its time limit (a BaseException, so an
    ``except Exception`` in the job type cannot swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float, message: str) -> Iterator[None]:
    """Interrupt the code inside after ``seconds`` (SIGALRM: the main thread of a POSIX
    process; elsewhere there is no limit here, the parent's timeout still holds)."""
    with platform.time_limit(seconds, lambda: _Overtime(message)):
        yield
