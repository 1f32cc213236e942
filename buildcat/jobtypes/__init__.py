"""Job types: a studio's own kinds of job, written in Python (Flamenco's job compilers).

A job type is a Python file in ``<root>/jobtypes/`` (or a built-in in
``buildcat/jobtypes/builtin/``) that declares its settings and turns them into tasks::

    from buildcat.jobtypes import Setting

    SETTINGS = [
        Setting("scene", "path", required=True, help="The .blend to render"),
        Setting("frames", "frames", default="1-10"),
    ]

    def compile(settings, job):
        frames = job.render(settings.scene, settings.frames)
        job.python("tools/report.py:summary", settings.scene, depends=frames)

``compile`` runs on the submitting client (user files in a child process with a time
limit, see :mod:`buildcat.jobtypes.child`), never in the server. docs/job-types.md has
the whole story.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildcat.errors import FarmError
from buildcat.frames import format_frames, parse_frames
from buildcat.root import relative_in_root

__all__ = [
    "SETTING_TYPES",
    "JobPlan",
    "JobTypeBroken",
    "Setting",
    "SettingError",
    "Values",
    "validate_settings",
]

#: What a setting may be: the value a job type's ``compile`` gets is a str, int, float or
#: bool; ``frames`` is a checked frame spec (a str, ``parse_frames`` reads it), ``path`` a
#: path relative to the farm root (an absolute one inside the root is made relative),
#: ``choice`` one of ``choices``.
SETTING_TYPES = ("str", "int", "float", "bool", "frames", "path", "choice")
_PYTHON_TYPES = {str: "str", int: "int", float: "float", bool: "bool"}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingError(FarmError, ValueError):
    """A setting given to a job type is unknown, missing or of the wrong kind."""


class JobTypeBroken(FarmError):
    """A job type's file does not load, or its ``compile`` raised or ran too long. The
    message is one line; ``traceback`` has the details (``farm job-types --check``)."""

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.traceback = traceback


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting of a job type: what a form shows and what ``--set NAME=VALUE`` sets."""

    name: str
    type: Any = "str"
    default: Any = None
    choices: Sequence[Any] | None = None
    help: str = ""
    required: bool = False
    #: Bounds for ``int`` and ``float`` settings (inclusive).
    minimum: float | None = None
    maximum: float | None = None
    #: A short title for forms (default: the name).
    label: str = ""

    def __post_init__(self) -> None:
        kind = _PYTHON_TYPES.get(self.type, self.type)
        object.__setattr__(self, "type", kind)
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise FarmError(f"a setting's name must be an identifier, not {self.name!r}")
        if kind not in SETTING_TYPES:
            raise FarmError(
                f"setting {self.name!r}: type must be one of {', '.join(SETTING_TYPES)}, "
                f"not {self.type!r}"
            )
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if kind == "choice" and not self.choices:
            raise FarmError(f"setting {self.name!r}: a choice needs choices")
        if self.default is not None and kind != "path":
            object.__setattr__(self, "default", self.coerce(self.default, None))

    def coerce(self, value: Any, root: str | os.PathLike[str] | None) -> Any:
        """The value checked and converted to this setting's type (text from the command
        line is parsed); raises SettingError with one line."""
        kind = self.type
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        textual = kind in ("str", "choice", "path") or (kind == "frames" and isinstance(value, int))
        if numeric and textual:
            value = str(value)
        if kind in ("str", "choice"):
            result: Any = self._text(value)
        elif kind == "int":
            result = self._int(value)
        elif kind == "float":
            result = self._float(value)
        elif kind == "bool":
            result = self._bool(value)
        elif kind == "frames":
            if isinstance(value, list | tuple) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                value = format_frames(value)
            text = self._text(value).strip()
            try:
                parse_frames(text)
            except FarmError as exc:
                raise SettingError(f"setting {self.name!r}: {exc}") from None
            result = text
        else:  # path
            text = self._text(value).strip()
            try:
                result = relative_in_root(root, text) if root is not None else text
            except FarmError as exc:
                raise SettingError(f"setting {self.name!r}: {exc}") from None
        if kind in ("int", "float"):
            if self.minimum is not None and result < self.minimum:
                raise SettingError(f"setting {self.name!r} must be at least {self.minimum:g}")
            if self.maximum is not None and result > self.maximum:
                raise SettingError(f"setting {self.name!r} must be at most {self.maximum:g}")
        if self.choices:
            result = self._choose(result)
        return result

    def _choose(self, value: Any) -> Any:
        if value in self.choices:  # type: ignore[operator]
            return value
        if isinstance(value, str):  # PNG for png, when only one choice matches
            folded = [c for c in self.choices or () if str(c).lower() == value.lower()]
            if len(folded) == 1:
                return folded[0]
        known = ", ".join(str(c) for c in self.choices or ())
        raise SettingError(f"setting {self.name!r} must be one of {known}, not {value!r}")

    def _text(self, value: Any) -> str:
        if not isinstance(value, str):
            raise SettingError(f"setting {self.name!r} must be text, not {value!r}")
        return value

    def _int(self, value: Any) -> int:
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SettingError(f"setting {self.name!r} must be a whole number, not {value!r}")

    def _float(self, value: Any) -> float:
        number: float | None = None
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        elif isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        if number is None or not math.isfinite(number):
            raise SettingError(f"setting {self.name!r} must be a number, not {value!r}")
        return number

    def _bool(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise SettingError(f"setting {self.name!r} must be true or false, not {value!r}")

    def to_json(self) -> dict[str, Any]:
        """The declaration as data: what ``farm job-types --json`` and the HTTP API show."""
        return {
            "name": self.name,
            "type": self.type,
            "default": self.default,
            "choices": list(self.choices) if self.choices is not None else None,
            "help": self.help,
            "required": self.required,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "label": self.label or self.name.replace("_", " "),
        }


class Values(dict[str, Any]):
    """The settings a ``compile`` gets: every declared one, by key or as an attribute."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def validate_settings(
    type_name: str,
    declared: Sequence[Setting],
    given: dict[str, Any],
    root: str | os.PathLike[str],
) -> Values:
    """Check ``given`` against the declaration: unknown keys, missing required ones and
    values of the wrong type are refused (SettingError, one line); the rest get defaults."""
    by_name = {s.name: s for s in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        known = ", ".join(by_name) or "none"
        raise SettingError(
            f"job type {type_name!r} has no setting {unknown[0]!r} (settings: {known})"
        )
    values = Values()
    for setting in declared:
        value = given.get(setting.name)
        if value is None:
            if setting.required:
                raise SettingError(
                    f"job type {type_name!r} needs setting {setting.name!r}"
                    + (f" ({setting.help})" if setting.help else "")
                )
            value = setting.default
            values[setting.name] = None if value is None else setting.coerce(value, root)
        else:
            values[setting.name] = setting.coerce(value, root)
    return values


@dataclass(slots=True)
class _PlannedTask:
    kind: str
    payload: dict[str, Any]
    depends: list[int]


@dataclass
class JobPlan:
    """What a job type's ``compile`` fills in: the job's tasks (each of any task kind),
    their dependencies, and the job's name, requirements and record (``meta``).

    Every ``add``-style method returns the new task's index (``render`` a list of them);
    ``depends`` names tasks added before, so a plan can never hold a cycle."""

    type_name: str
    #: This client's path to the farm root: read files from it to decide what to plan.
    root: Path
    name: str = ""
    requires: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    _tasks: list[_PlannedTask] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, kind: str, payload: dict[str, Any], *, depends: Iterable[int] = ()) -> int:
        """A task of ``kind`` (python, blender, command, script, ...) with ``payload``."""
        if not isinstance(kind, str) or not kind:
            raise FarmError("a task's kind must be the name of a task kind")
        if not isinstance(payload, dict):
            raise FarmError("a task payload must be a map")
        after = self._depends(depends)
        self._tasks.append(_PlannedTask(kind, dict(payload), after))
        return len(self._tasks) - 1

    def python(
        self,
        function: str,
        *args: Any,
        depends: Iterable[int] = (),
        label: str | None = None,
        **kwargs: Any,
    ) -> int:
        """A task that runs ``function(*args, **kwargs)`` (``module:function`` or
        ``path/in/root.py:function``) on a worker."""
        payload: dict[str, Any] = {"function": function, "args": list(args), "kwargs": kwargs}
        if label:
            payload["label"] = label
        return self.add("python", payload, depends=depends)

    def command(
        self,
        template: str | list[str],
        *,
        frames: Iterable[int] | None = None,
        depends: Iterable[int] = (),
        **options: Any,
    ) -> int:
        """A shell-command task (see ``farm submit command``): ``template`` is one string
        for the worker's shell, or an argv list run with no shell; ``$START``, ``$FRAME``...
        come from ``frames``; ``options`` are the rest of the payload (``outputs``,
        ``outdir``, ``progress_regex``)."""
        payload: dict[str, Any] = dict(options)
        if isinstance(template, str):
            payload["template"] = template
        else:
            payload["argv"] = [str(word) for word in template]
        if frames is not None:
            payload["frames"] = list(frames)
        return self.add("command", payload, depends=depends)

    def script(
        self,
        path: str,
        args: Iterable[str] = (),
        *,
        depends: Iterable[int] = (),
        **options: Any,
    ) -> int:
        """A Python-script task (see ``farm submit script``): the file ``path`` under the
        root, run with ``args`` as its ``sys.argv``; ``options`` are the rest of the payload
        (``python``: the interpreter on the worker)."""
        payload = {"script": path, "args": [str(arg) for arg in args], **options}
        return self.add("script", payload, depends=depends)

    def render(
        self,
        scene: str,
        frames: str | Iterable[int],
        *,
        chunk: int = 1,
        output: str | None = None,
        file_format: str | None = None,
        settings: dict[str, Any] | None = None,
        tiles: tuple[int, int] | None = None,
        sample_split: int | None = None,
        depends: Iterable[int] = (),
        **planner: Any,
    ) -> list[int]:
        """The Blender tasks that render ``frames`` of ``scene`` (``plan_render``: chunks,
        tiles with their stitch, sample splits with their merge); every one of them waits
        for ``depends``. Returns their indices, in order."""
        from buildcat.jobs import blender as blender_jobs

        numbers = parse_frames(frames) if isinstance(frames, str) else list(frames)
        planned = blender_jobs.plan_render(
            scene,
            numbers,
            chunk=chunk,
            output=output,
            file_format=file_format,
            settings=settings,
            tiles=tiles,
            sample_split=sample_split,
            **planner,
        )
        return self.extend("blender", planned, depends=depends)

    def extend(
        self, kind: str, tasks: Sequence[dict[str, Any]], *, depends: Iterable[int] = ()
    ) -> list[int]:
        """Add tasks made elsewhere (``{"payload": ..., "depends": [i, ...]}`` with ``i``
        counted within ``tasks``, as ``Client.submit_tasks`` takes them); each also waits
        for ``depends``. Returns their indices."""
        first = len(self._tasks)
        extra = self._depends(depends)
        for task in tasks:
            own = [first + int(i) for i in task.get("depends", ())]
            payload = dict(task["payload"])
            self.add(str(payload.pop("kind", kind)), payload, depends=[*extra, *own])
        return list(range(first, len(self._tasks)))

    def _depends(self, depends: Iterable[int] | int) -> list[int]:
        if isinstance(depends, int):
            depends = [depends]
        after: list[int] = []
        for index in depends:
            if not isinstance(index, int) or isinstance(index, bool):
                raise FarmError(f"depends takes task indices, not {index!r}")
            if not 0 <= index < len(self._tasks):
                raise FarmError(
                    f"a task may depend only on tasks added before it (no task {index})"
                )
            if index not in after:
                after.append(index)
        return after

    def job_kind(self) -> str:
        """The job's kind: ``blender`` when it renders (so every frame is rendered by one
        Blender version), else the first task's."""
        kinds = [t.kind for t in self._tasks]
        return "blender" if "blender" in kinds else (kinds[0] if kinds else "python")

    def to_json(self) -> dict[str, Any]:
        """The plan as ``Client.submit_tasks`` takes it: a task of another kind than the
        job's names its own in its payload."""
        kind = self.job_kind()
        tasks: list[dict[str, Any]] = []
        for task in self._tasks:
            payload = task.payload if task.kind == kind else {**task.payload, "kind": task.kind}
            entry: dict[str, Any] = {"payload": payload}
            if task.depends:
                entry["depends"] = list(task.depends)
            tasks.append(entry)
        return {
            "kind": kind,
            "name": self.name,
            "requires": list(self.requires),
            "meta": dict(self.meta),
            "tasks": tasks,
        }
