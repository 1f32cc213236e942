"""Submitting work: `farm submit ...` and `farm check`."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from buildcat.cli.base import (
    SUBMIT_DEFAULTS,
    FallbackGroup,
    client_options,
    main,
    print_json,
    root_option,
    submitted,
)
from buildcat.client import Client
from buildcat.display import table
from buildcat.errors import FarmError

F = TypeVar("F", bound=Callable[..., Any])


# ---- submitting -------------------------------------------------------------------------------


@main.group(cls=FallbackGroup)
def submit() -> None:
    """Submit a job."""


def _parse_argument(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def after_options(function: F) -> F:
    """--after JOB[,JOB...] and --after-any, taken off the command's arguments and given to
    its client (``Client.submit_defaults``), so every submit command honours them without
    naming them."""

    @functools.wraps(function)
    def wrapper(*args: Any, after: tuple[str, ...], after_any: bool, **kwargs: Any) -> Any:
        ids = [part.strip() for text in after for part in text.split(",")]
        if any(not part for part in ids):
            raise FarmError("--after takes job ids separated by commas (--after a1b2c3d4,e5f6)")
        if after_any and not ids:
            raise FarmError("--after-any needs --after JOB: the jobs to run after")
        defaults = {"after": ids, "after_any": after_any} if ids else {}
        context = click.get_current_context()
        context.meta.setdefault(SUBMIT_DEFAULTS, {}).update(defaults)  # read as the client is made
        client = kwargs.get("client")
        if isinstance(client, Client):  # job_options applied below client_options
            client.submit_defaults.update(defaults)
        return function(*args, **kwargs)

    for decorator in reversed(
        [
            click.option(
                "--after",
                multiple=True,
                metavar="JOB[,JOB...]",
                help="Start only when these jobs are done; fail if one fails or is cancelled.",
            ),
            click.option(
                "--after-any",
                is_flag=True,
                help="With --after: run once those jobs have ended, whatever their state.",
            ),
        ]
    ):
        wrapper = decorator(wrapper)
    return wrapper  # type: ignore[return-value]


def _with_notify(function: F) -> F:
    """Takes ``--notify`` off a submit command's arguments and hands it to the Client that
    client_options makes (every submit goes through Client.submit_tasks, which sends it)."""

    @functools.wraps(function)
    def wrapper(*args: Any, notify: tuple[str, ...] = (), **kwargs: Any) -> Any:
        click.get_current_context().meta.setdefault(SUBMIT_DEFAULTS, {})["notify"] = list(notify)
        client = kwargs.get("client")
        if isinstance(client, Client):  # job_options applied below client_options
            client.notify.extend(notify)
        return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def job_options(function: F) -> F:
    """What every submit takes: priority, name, attempts, timeout, --after, --notify,
    --wait and --json."""
    function = _with_notify(after_options(function))
    for decorator in reversed(
        [
            click.option(
                "--priority", type=int, default=0, show_default=True, help="Higher runs first."
            ),
            click.option("--name", default="", help="A name for the job."),
            click.option(
                "--max-attempts",
                type=click.IntRange(min=1),
                default=None,
                help="Tries per task before the job fails (default 3).",
            ),
            click.option(
                "--timeout",
                "task_timeout",
                type=click.FloatRange(min=0.001),
                default=None,
                help="Seconds a task may run; past it, it is stopped "
                "and counts as a failed attempt.",
            ),
            click.option(
                "--notify",
                "notify",
                multiple=True,
                metavar="URL",
                help="POST a signed notice to URL when the job ends (repeatable).",
            ),
            click.option(
                "--wait", "wait", is_flag=True, help="Wait for the job, showing progress."
            ),
            click.option("--json", "as_json", is_flag=True, help="Print JSON."),
        ]
    ):
        function = decorator(function)
    return function


@submit.command("python")
@click.argument("function")
@click.argument("args", nargs=-1)
@click.option(
    "--kwarg",
    "-k",
    "kwargs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A keyword argument (VALUE is JSON, or a plain string).",
)
@click.option(
    "--map",
    "map_items",
    is_flag=True,
    help="One task per ARG: FUNCTION(ARG) for each, results in order.",
)
@click.option(
    "--frames",
    default=None,
    metavar="SPEC",
    help="One task per chunk of frames (e.g. 1-240 or 1,7,10-25:2); the function "
    "gets frames=[...] as a keyword argument.",
)
@click.option(
    "--chunk",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Frames per task with --frames.",
)
@click.option("--requires", default="", help="Comma-separated capabilities workers must have.")
@job_options
@client_options
def submit_python(
    client: Client,
    function: str,
    args: tuple[str, ...],
    kwargs: tuple[str, ...],
    map_items: bool,
    frames: str | None,
    chunk: int,
    priority: int,
    name: str,
    max_attempts: int | None,
    requires: str,
    task_timeout: float | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Run FUNCTION (module:function or path/in/root.py:function) on the farm.

    Each ARG is read as JSON when it parses (3, 2.5, "text", [1, 2]) and as a plain
    string otherwise.
    """
    values = [_parse_argument(arg) for arg in args]
    keywords: dict[str, Any] = {}
    for item in kwargs:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise FarmError(f"--kwarg {item!r} must look like NAME=VALUE")
        keywords[key] = _parse_argument(value)
    needs = [r.strip() for r in requires.split(",") if r.strip()]
    if frames is not None and map_items:
        raise FarmError("use either --map or --frames, not both")
    if frames is not None:
        job = client.map_frames(
            function,
            frames,
            *values,
            chunk=chunk,
            kwargs=keywords,
            priority=priority,
            name=name,
            requires=needs,
            max_attempts=max_attempts,
            timeout=task_timeout,
        )
    elif map_items:
        tasks = [{"payload": {"args": [value], "kwargs": keywords}} for value in values]
        job = client.submit_tasks(
            tasks,
            name=name or function,
            priority=priority,
            requires=needs,
            max_attempts=max_attempts,
            timeout=task_timeout,
            common={"function": function},
        )
    else:
        task = {"payload": {"function": function, "args": values, "kwargs": keywords}}
        job = client.submit_tasks(
            [task],
            name=name or function,
            priority=priority,
            requires=needs,
            max_attempts=max_attempts,
            timeout=task_timeout,
        )
    submitted(job, as_json, wait)


def _pair(text: str | None, what: str) -> tuple[int, int] | None:
    if text is None:
        return None
    left, sep, right = text.lower().partition("x")
    if not sep or not left.isdigit() or not right.isdigit() or int(left) < 1 or int(right) < 1:
        raise FarmError(f"{what} {text!r} must look like WxH, e.g. 1920x1080")
    return int(left), int(right)


@submit.command("blender")
@click.argument("scene")
@click.option(
    "--frames",
    default=None,
    metavar="SPEC",
    help="Frames to render (e.g. 1-240 or 1,7,10-25:2); default: the scene's range.",
)
@click.option(
    "--chunk", type=click.IntRange(min=1), default=1, show_default=True, help="Frames per task."
)
@click.option(
    "--output",
    default=None,
    metavar="PATTERN",
    help="Output path relative to the root, # for frame digits; Blender adds the format's "
    "extension [default: renders/<file name>/<scene name>/frame_####].",
)
@click.option(
    "--format",
    "file_format",
    default=None,
    type=click.Choice(["PNG", "JPEG", "OPEN_EXR", "OPEN_EXR_MULTILAYER"], case_sensitive=False),
    help="File format [default: the scene's own output settings; a movie format is refused].",
)
@click.option(
    "--color-mode",
    default=None,
    type=click.Choice(["BW", "RGB", "RGBA"], case_sensitive=False),
    help="Colour mode [default: the scene's].",
)
@click.option(
    "--color-depth",
    default=None,
    type=click.Choice(["8", "16", "32"]),
    help="Bits per channel: 8 or 16 (PNG), 16 (half) or 32 (float) for EXR [default: the scene's].",
)
@click.option("--engine", type=click.Choice(["cycles", "eevee", "workbench"]), default=None)
@click.option("--samples", type=click.IntRange(min=1), default=None)
@click.option("--resolution", default=None, metavar="WxH")
@click.option("--camera", default=None, help="Camera object to render from.")
@click.option("--scene", "scene_name", default=None, help="Scene inside the .blend.")
@click.option(
    "--tiles",
    default=None,
    metavar="CxR",
    help="Render each frame as C x R tiles, stitched into the frame.",
)
@click.option(
    "--sample-split",
    type=click.IntRange(min=2, max=64),
    default=None,
    help="Render each Cycles frame as N seeds with 1/N of the samples, averaged.",
)
@click.option(
    "--requires",
    default="",
    metavar="TAG,...",
    help="Comma-separated capabilities workers must have (gpu, blender==4.5).",
)
@click.option(
    "--blender-version",
    default=None,
    metavar="X.Y[.Z]",
    help="Render every task on this Blender (4.5 means any 4.5.x) "
    "[default: the first worker's to take a task].",
)
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Render even if files the scene uses are missing or outside the root (see farm check).",
)
@click.option(
    "--enable-autoexec",
    is_flag=True,
    default=False,
    help="Let the .blend's Python run (drivers, scripts), like blender -y: only for files "
    "you trust.",
)
@click.option(
    "--preview-video",
    is_flag=True,
    help="End with a task that makes preview.mp4 of the frames, beside them (H.264).",
)
@click.option(
    "--fps",
    default=None,
    metavar="RATE",
    help="The preview video's frame rate (24, 30000/1001) [default: the scene's].",
)
@job_options
@client_options
def submit_blender(
    client: Client,
    scene: str,
    frames: str | None,
    chunk: int,
    output: str | None,
    file_format: str | None,
    color_mode: str | None,
    color_depth: str | None,
    engine: str | None,
    samples: int | None,
    resolution: str | None,
    camera: str | None,
    scene_name: str | None,
    tiles: str | None,
    sample_split: int | None,
    requires: str,
    blender_version: str | None,
    allow_missing: bool,
    enable_autoexec: bool,
    preview_video: bool,
    fps: str | None,
    priority: int,
    name: str,
    max_attempts: int | None,
    task_timeout: float | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Render SCENE (a .blend, relative to the farm root) on the farm."""
    job = client.render(
        scene,
        frames,
        chunk=chunk,
        output=output,
        format=file_format.upper() if file_format else None,
        color_mode=color_mode.upper() if color_mode else None,
        color_depth=color_depth,
        engine=engine,
        samples=samples,
        resolution=_pair(resolution, "--resolution"),
        camera=camera,
        scene_name=scene_name,
        tiles=_pair(tiles, "--tiles"),
        sample_split=sample_split,
        allow_missing=allow_missing,
        enable_autoexec=enable_autoexec,
        priority=priority,
        name=name,
        max_attempts=max_attempts,
        timeout=task_timeout,
        requires=[r.strip() for r in requires.split(",") if r.strip()],
        blender_version=blender_version,
        preview_video=preview_video,
        fps=fps,
    )
    submitted(job, as_json, wait)


@main.command()
@click.argument("scene")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@root_option
def check(scene: str, as_json: bool, root: Path) -> None:
    """List every file SCENE (a .blend) depends on, through linked libraries too.

    Each is relative, absolute, mapped (another system's path under a location of the
    path map: `farm paths`), outside the root, under no location (another system's path
    that no worker can find) or missing; exits 1 when any file is missing, outside the
    root or under no location (what `farm submit blender` refuses).
    """
    from buildcat.blender import blendfile

    report = blendfile.check_assets(blendfile.locate_blend(scene, root), root)
    if as_json:
        print_json(report.to_json())
    else:
        rows = [[a.status, a.kind, a.path, a.used_by, a.resolved] for a in report.assets]
        if rows:
            click.echo(table(["STATUS", "KIND", "PATH", "USED BY", "ON THIS MACHINE"], rows))
        click.echo(f"{report.blend}: {blendfile.summary(report)}")
    if report.problems:
        unmapped = any(a.status == blendfile.NOT_MAPPED for a in report.problems)
        kinds = (
            "missing, outside the root or under no location"
            if unmapped
            else ("missing or outside the root")
        )
        click.echo(f"farm: error: {len(report.problems)} file(s) {kinds}", err=True)
        sys.exit(1)
