"""Shell-command tasks (Brenda's work queue): a template run once per chunk of frames,
its ``$VARIABLES`` filled in by the worker that runs it.

The template is one string run by ``/bin/sh -c``, or (``argv``) a list of arguments run
with no shell. Frame variables are integers written in as digits; ``$ROOT``,
``$OUTDIR``, ``$TASK`` and ``$JOB`` reach the shell as references to environment
variables, quoted for where they stand, so their text never becomes shell syntax (see
docs/commands.md). ``${PATH:NAME}`` is location NAME of the farm's path map (buildcat/paths.py)
as this worker's system names it, so one template runs on Linux, Windows and macOS workers;
words of a template that look like paths are never rewritten (the template is the user's
text: only they know which words are paths). Parsing, checking and planning here are
pure; :func:`run_task` runs in the worker's child process.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import re
import shlex
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from buildcat import paths
from buildcat import root as farm_root
from buildcat.errors import FarmError, JobFault
from buildcat.frames import chunk_frames, format_frames, parse_frames
from buildcat.jobs import context, process

#: Every variable a template may use, and what it stands for.
VARIABLES = {
    "START": "the chunk's first frame",
    "END": "the chunk's last frame",
    "STEP": "the step between the chunk's frames (when they are evenly spaced)",
    "FRAME": "the chunk's first frame (one frame per task: that frame)",
    "FRAMES": "the chunk's frames, comma-separated",
    "OUTDIR": "the job's output folder on this worker",
    "ROOT": "this worker's path to the farm root",
    "TASK": "the task's id",
    "JOB": "the job's id",
}
FRAME_VARIABLES = frozenset({"START", "END", "STEP", "FRAME", "FRAMES"})
#: ``${PATH:textures}``: a location of the path map on this worker (its variable's name).
LOCATION_PREFIX = "PATH:"
#: How the shell form reaches the text variables: environment variables the worker sets.
ENVIRONMENT = {
    "ROOT": "BUILDCAT_ROOT",
    "OUTDIR": "BUILDCAT_OUTDIR",
    "TASK": "BUILDCAT_TASK_ID",
    "JOB": "BUILDCAT_JOB_ID",
}
SHELL = "/bin/sh"
#: Longest ``--progress-regex`` (it is compiled by the server too).
MAX_REGEX_CHARS = 1000
#: ``$OUTDIR`` when the job names none: ``commands/<job id>`` under the root.
DEFAULT_OUTDIR = "commands"

_NAME = re.compile(r"\$(?:(?P<dollar>\$)|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|\{(?P<braced>[^}]*)\})")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HASHES = re.compile(r"#+")

#: A parsed template: literal text and variable names, in order.
Piece = tuple[str, str]  # ("text", "...") or ("var", "NAME")


def _known() -> str:
    return " ".join(f"${name}" for name in VARIABLES) + " ${PATH:NAME}"


def location_name(variable: str) -> str | None:
    """``textures`` for the variable ``PATH:textures``; None for the other variables."""
    return variable[len(LOCATION_PREFIX) :] if variable.startswith(LOCATION_PREFIX) else None


def environment_name(variable: str) -> str:
    """The environment variable the shell reads a text variable from."""
    name = location_name(variable)
    return ENVIRONMENT[variable] if name is None else f"BUILDCAT_PATH_{name.upper()}"


def parse_template(template: str, what: str = "the template") -> list[Piece]:
    """Split ``template`` into text and variables; one clear line for a bad ``$``.

    ``$NAME`` and ``${NAME}`` are variables, ``$$`` is a literal ``$``; any other ``$``
    (an unknown name, ``$1``, ``$(...)``) is refused."""
    pieces: list[Piece] = []
    text: list[str] = []
    position = 0
    while True:
        found = template.find("$", position)
        if found < 0:
            text.append(template[position:])
            break
        text.append(template[position:found])
        match = _NAME.match(template, found)
        if match is None:
            raise FarmError(
                f"a $ in {what} at character {found + 1} is not a variable "
                f"(known: {_known()}); write $$ for a literal $"
            )
        if match["dollar"]:
            text.append("$")
        elif (match["braced"] or "").startswith(LOCATION_PREFIX):
            name = match["braced"]
            try:
                paths.check_name(name[len(LOCATION_PREFIX) :])
            except paths.PathMapError as exc:
                raise FarmError(f"${{{name}}} in {what}: {exc}") from None
            pieces.append(("text", "".join(text)))
            text = []
            pieces.append(("var", name))
        else:
            name = match["bare"] or match["braced"] or ""
            if not _IDENTIFIER.fullmatch(name) or name not in VARIABLES:
                shown = f"${{{name}}}" if match["braced"] is not None else f"${name}"
                raise FarmError(
                    f"unknown variable {shown} in {what} (known: {_known()}); "
                    "write $$ for a literal $"
                )
            pieces.append(("text", "".join(text)))
            text = []
            pieces.append(("var", name))
        position = match.end()
    pieces.append(("text", "".join(text)))
    return [piece for piece in pieces if piece != ("text", "")]


def used(pieces: Sequence[Piece]) -> set[str]:
    return {value for kind, value in pieces if kind == "var"}


def _shell_quoting(pieces: Sequence[Piece]) -> Iterator[str]:
    """The quoting each variable stands in: ``""`` (none), ``"'"`` or ``'"'``."""
    state = ""
    escaped = False
    for kind, value in pieces:
        if kind == "var":
            if escaped:
                raise FarmError(
                    f"a backslash right before ${value} in the template: write $$ for a literal $"
                )
            yield state
            continue
        for character in value:
            if escaped:
                escaped = False
            elif state == "'":
                if character == "'":
                    state = ""
            elif character == "\\":
                escaped = True
            elif state == '"':
                if character == '"':
                    state = ""
            elif character in "'\"":
                state = character


def shell_command(pieces: Sequence[Piece], frames: dict[str, str]) -> str:
    """The text ``/bin/sh -c`` runs: frame variables as digits, the others as
    ``${BUILDCAT_...}`` references the shell expands as one word wherever they stand."""
    quoting = iter(list(_shell_quoting(pieces)))
    out: list[str] = []
    for kind, value in pieces:
        if kind == "text":
            out.append(value)
            continue
        state = next(quoting)
        if value in FRAME_VARIABLES:
            out.append(frames[value])  # digits, '-' and ',' only: nothing the shell reads
        elif state == '"':
            out.append(f"${{{environment_name(value)}}}")
        elif state == "'":
            out.append(f"'\"${{{environment_name(value)}}}\"'")
        else:
            out.append(f'"${{{environment_name(value)}}}"')
    return "".join(out)


def substitute(pieces: Sequence[Piece], values: dict[str, str]) -> str:
    """The text with each variable's value put in as it is (argv form, output paths)."""
    return "".join(values[value] if kind == "var" else value for kind, value in pieces)


def frame_values(frames: Sequence[int]) -> dict[str, str]:
    """$START ... $FRAMES of a chunk (``STEP`` only when its frames are evenly spaced)."""
    if not frames:
        return {}
    values = {
        "START": str(min(frames)),
        "END": str(max(frames)),
        "FRAME": str(frames[0]),
        "FRAMES": ",".join(str(frame) for frame in frames),
    }
    step = _step(frames)
    if step is not None:
        values["STEP"] = str(step)
    return values


def _step(frames: Sequence[int]) -> int | None:
    ordered = sorted(frames)
    if len(ordered) < 2:
        return 1
    steps = {b - a for a, b in itertools.pairwise(ordered)}
    return steps.pop() if len(steps) == 1 else None


def per_frame(pattern: str, frames: Sequence[int]) -> list[str]:
    """``out/f_####.png`` -> one path per frame (the last run of ``#`` becomes the
    zero-padded frame, as in Blender); a pattern without ``#`` stays one path."""
    runs = list(_HASHES.finditer(pattern))
    if not runs:
        return [pattern]
    last = runs[-1]
    width = len(last[0])
    return [
        f"{pattern[: last.start()]}{'-' if frame < 0 else ''}{abs(frame):0{width}d}"
        f"{pattern[last.end() :]}"
        for frame in frames
    ]


def output_paths(
    patterns: Sequence[str], frames: Sequence[int], values: dict[str, str]
) -> list[str]:
    """The root-relative files a task must leave (``values["OUTDIR"]`` root-relative)."""
    paths: list[str] = []
    for pattern in patterns:
        for one in per_frame(pattern, frames):
            path = substitute(parse_template(one, f"output {pattern!r}"), values)
            paths.append(farm_root.check_relative(path))
    return paths


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:77]) + "..."


class ProgressRegex:
    """Turns matching output lines into progress.

    Named groups say what they hold: ``(?P<percent>...)`` (0-100), ``(?P<fraction>...)``
    (0-1), or ``(?P<done>...)`` with ``(?P<total>...)``. Without names, one group is a
    percentage and two are done and total."""

    def __init__(self, pattern: str) -> None:
        if len(pattern) > MAX_REGEX_CHARS:
            raise FarmError(f"the progress regex is longer than {MAX_REGEX_CHARS} characters")
        try:
            self.regex = re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            raise FarmError(
                f"the progress regex {_shown(pattern)} is not a regular expression: {exc}"
            ) from None
        names = self.regex.groupindex
        self.groups: tuple[int | str, ...]
        if "done" in names and "total" in names:
            self.mode, self.groups = "ratio", ("done", "total")
        elif "percent" in names:
            self.mode, self.groups = "percent", ("percent",)
        elif "fraction" in names:
            self.mode, self.groups = "fraction", ("fraction",)
        elif self.regex.groups == 1:
            self.mode, self.groups = "percent", (1,)
        elif self.regex.groups == 2:
            self.mode, self.groups = "ratio", (1, 2)
        else:
            raise FarmError(
                f"the progress regex {_shown(pattern)} needs one group (a percentage), two (done "
                "and total), or named groups: (?P<percent>...), (?P<fraction>...), or "
                "(?P<done>...) with (?P<total>...)"
            )

    def read(self, line: str) -> float | None:
        """The fraction (0..1) a line says, or None."""
        match = self.regex.search(line)
        if match is None:
            return None
        try:
            numbers = [float(match[group]) for group in self.groups]
        except (TypeError, ValueError, IndexError):
            return None
        if self.mode == "ratio":
            done, total = numbers
            value = done / total if total > 0 else math.nan
        elif self.mode == "percent":
            value = numbers[0] / 100
        else:
            value = numbers[0]
        return min(1.0, max(0.0, value)) if math.isfinite(value) else None


# ---- checking (client, server and worker) ---------------------------------------------------


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FarmError(f"{what} must be a list of strings")
    return value


def _frames(payload: dict[str, Any]) -> list[int]:
    frames = payload.get("frames", [])
    if not isinstance(frames, list) or not all(
        isinstance(frame, int) and not isinstance(frame, bool) for frame in frames
    ):
        raise FarmError("'frames' must be a list of integers")
    if len(set(frames)) != len(frames):
        raise FarmError("'frames' names a frame twice")
    return frames


def validate_payload(payload: dict[str, Any]) -> None:
    """One clear line for anything a command task cannot run with.

    What depends only on the texts (parsing, quoting, regex, output paths) is checked once
    per text and remembered: a job of many tasks shares them."""
    template, argv = payload.get("template"), payload.get("argv")
    if (template is None) == (argv is None):
        raise FarmError("a command task needs either 'template' (a shell command) or 'argv'")
    frames = _frames(payload)
    if template is not None:
        if not isinstance(template, str) or not template.strip():
            raise FarmError("'template' must be a non-empty shell command")
        names = set(_checked_template(template))
    else:
        arguments = _strings(argv, "'argv'")
        if not arguments or not arguments[0]:
            raise FarmError("'argv' needs at least the program to run")
        names = set(_checked_argv(tuple(arguments)))
    outdir = payload.get("outdir")
    if outdir is not None and not isinstance(outdir, str):
        raise FarmError("'outdir' must be a path relative to the farm root")
    if outdir is not None:
        farm_root.check_relative(outdir)
    for pattern in _strings(payload.get("outputs", []), "'outputs'"):
        output_names, per_frame_pattern = _checked_output(pattern, outdir or DEFAULT_OUTDIR)
        if per_frame_pattern and not frames:
            raise FarmError(f"output {pattern!r}: a # stands for a frame, and there are no frames")
        names |= output_names
    _check_frame_variables(names, frames)
    regex = payload.get("progress_regex")
    if regex is not None:
        if not isinstance(regex, str) or not regex:
            raise FarmError("'progress_regex' must be a regular expression")
        _checked_regex(regex)


@functools.lru_cache(maxsize=256)
def _checked_template(template: str) -> frozenset[str]:
    pieces = parse_template(template)
    list(_shell_quoting(pieces))
    return frozenset(used(pieces))


@functools.lru_cache(maxsize=256)
def _checked_argv(arguments: tuple[str, ...]) -> frozenset[str]:
    names: set[str] = set()
    for index, argument in enumerate(arguments):
        names |= used(parse_template(argument, f"argument {index + 1}"))
    return frozenset(names)


@functools.lru_cache(maxsize=256)
def _checked_output(pattern: str, outdir: str) -> tuple[frozenset[str], bool]:
    """The variables an output pattern uses and whether it has a ``#``; refuses one that
    would name a file outside the root (frame values are digits: one sample tells)."""
    names = frozenset(used(parse_template(pattern, f"output {pattern!r}")))
    if "ROOT" in names:
        raise FarmError(f"output {pattern!r}: outputs are relative to the root; drop $ROOT")
    if any(location_name(name) is not None for name in names):
        raise FarmError(f"output {pattern!r}: outputs are relative to the root; drop ${{PATH:...}}")
    sample = {name: "1" for name in VARIABLES} | {"OUTDIR": outdir, "TASK": "t.1", "JOB": "t"}
    output_paths([pattern], [1], sample)
    return names, bool(_HASHES.search(pattern))


@functools.lru_cache(maxsize=64)
def _checked_regex(regex: str) -> None:
    ProgressRegex(regex)


def _check_frame_variables(names: set[str], frames: list[int]) -> None:
    frame_names = sorted(names & FRAME_VARIABLES)
    if frame_names and not frames:
        shown = ", ".join(f"${name}" for name in frame_names)
        verb = "needs" if len(frame_names) == 1 else "need"
        raise FarmError(f"{shown} {verb} frames: give --frames")
    if "STEP" in names and _step(frames) is None:
        raise FarmError(
            f"the frames {format_frames(frames)} of one task are not evenly spaced, so $STEP "
            "means nothing: use $FRAMES, or --chunk 1"
        )


# ---- planning (the client) ------------------------------------------------------------------


def plan_command(
    template: str | Sequence[str],
    frames: str | None = None,
    *,
    chunk: int = 1,
    argv: bool = False,
    outdir: str | None = None,
    outputs: Sequence[str] = (),
    progress_regex: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The tasks (one per chunk of frames) and their shared payload (``common``)."""
    common: dict[str, Any] = {}
    if isinstance(template, str) and not argv:
        common["template"] = template
    elif isinstance(template, str):
        try:
            common["argv"] = shlex.split(template)
        except ValueError as exc:
            raise FarmError(f"cannot split the command into arguments: {exc}") from None
    else:
        common["argv"] = list(template)
    if outdir is not None:
        common["outdir"] = farm_root.check_relative(outdir)
    if outputs:
        common["outputs"] = list(outputs)
    if progress_regex is not None:
        common["progress_regex"] = progress_regex
    if frames is None:
        if chunk != 1:
            raise FarmError("--chunk needs --frames: a command without frames is one task")
        return [{"payload": {}}], common
    groups = chunk_frames(parse_frames(frames), chunk)
    return [{"payload": {"frames": g, "label": format_frames(g)}} for g in groups], common


# ---- running (inside the worker's child process) --------------------------------------------


def location_values(names: set[str], root: str) -> dict[str, str]:
    """``{"PATH:textures": "/mnt/textures"}``: the locations the template names, on this
    worker (its system, its path to the root), from the farm's path map as it is now."""
    wanted = sorted(name for name in names if location_name(name) is not None)
    if not wanted:
        return {}
    try:
        here = paths.for_this_machine(root)
    except paths.PathMapError as exc:
        raise FarmError(str(exc)) from None
    values = {}
    for variable in wanted:
        name = location_name(variable) or ""
        path = here.location_path(name)
        if path is None and name not in here.names:
            known = ", ".join(here.names)
            raise JobFault(f"${{{variable}}}: the path map has no location {name!r} (has: {known})")
        if path is None:
            raise FarmError(
                f"${{{variable}}}: location {name!r} has no {here.system} path in the path map "
                f"(farm paths add {name} --{here.system} PATH --replace)"
            )
        values[variable] = path
    return values


def run_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one command task: exit code 0 and every output there, or it fails."""
    ctx = context.current()
    root = os.path.abspath(ctx.root)
    task_id = ctx.task_id
    job_id = task_id.rpartition(".")[0] or task_id
    frames = _frames(payload)
    relative_outdir = farm_root.check_relative(
        payload.get("outdir") or f"{DEFAULT_OUTDIR}/{job_id}"
    )
    outdir = farm_root.resolve(root, relative_outdir)
    patterns = list(payload.get("outputs", []))
    template = payload.get("template")
    if template is not None:
        pieces = parse_template(template)
        names = used(pieces)
    else:
        argument_pieces = [parse_template(argument) for argument in payload["argv"]]
        names = set().union(*(used(p) for p in argument_pieces))
    for pattern in patterns:
        names |= used(parse_template(pattern, f"output {pattern!r}"))
    if "OUTDIR" in names:
        outdir.mkdir(parents=True, exist_ok=True)
    values = {
        **frame_values(frames),
        "ROOT": root,
        "OUTDIR": str(outdir),
        "TASK": task_id,
        "JOB": job_id,
        **location_values(names, root),
    }
    env = {
        **os.environ,
        **{environment_name(name): values[name] for name in values if name not in FRAME_VARIABLES},
    }
    if template is not None:
        command = [SHELL, "-c", shell_command(pieces, frame_values(frames))]
        print(f"buildcat: running: {command[2]}")
    else:
        command = [substitute(pieces, values) for pieces in argument_pieces]
        print(f"buildcat: running: {shlex.join(command)}")
    reader = ProgressRegex(payload["progress_regex"]) if payload.get("progress_regex") else None

    def on_line(line: str) -> None:
        print(line)
        if reader is not None:
            fraction = reader.read(line)
            if fraction is not None:
                context.progress(fraction, line.strip())

    tail: deque[str] = deque(maxlen=process.TAIL_LINES)
    code = process.run(command, cwd=root, env=env, on_line=on_line, tail=tail)
    if code != 0:
        raise process.failure("the command", code, tail)
    expected = output_paths(patterns, frames, {**values, "OUTDIR": relative_outdir})
    missing = [path for path in expected if not farm_root.resolve(root, path).exists()]
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise process.ProcessFailed(
            f"the command exited with code 0 but did not write {len(missing)} of its "
            f"{len(expected)} output(s): {shown}"
        )
    return {"exit_code": code, "outputs": expected}
