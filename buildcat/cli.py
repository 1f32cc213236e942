"""The ``farm`` command (also ``buildcat``): parses, calls the core, prints."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

import buildcat
from buildcat import protocol
from buildcat.client import Client
from buildcat.display import ProgressDisplay, duration, table
from buildcat.errors import FarmError, JobFailed, JobTimeout
from buildcat.server.scheduler import requirement_met

F = TypeVar("F", bound=Callable[..., Any])


class FarmGroup(click.Group):
    """Turns a FarmError anywhere below into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobFailed as exc:
            if exc.traceback:
                click.echo(exc.traceback.rstrip(), err=True)
            click.echo(f"farm: {exc}", err=True)
            ctx.exit(1)
        except JobTimeout as exc:
            click.echo(f"farm: {exc}", err=True)
            ctx.exit(3)
        except FarmError as exc:
            click.echo(f"farm: error: {exc}", err=True)
            ctx.exit(2 if isinstance(exc, ValueError) else 1)
        except KeyboardInterrupt:
            click.echo("farm: interrupted", err=True)
            ctx.exit(130)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def log_level_option(function: F) -> F:
    return click.option(
        "--log-level",
        default="info",
        show_default=True,
        type=click.Choice(["debug", "info", "warning", "error"]),
    )(function)


def root_option(function: F) -> F:
    return click.option(
        "--root",
        envvar="BUILDCAT_ROOT",
        type=click.Path(file_okay=False, path_type=Path),
        default=".",
        show_default="BUILDCAT_ROOT or .",
        help="This host's path to the shared farm root.",
    )(function)


def server_address_options(function: F) -> F:
    """Where the farm server is and how to prove we belong: --host/--port or discovery,
    --farm, --token, --tls-ca (each with its FARM_* variable)."""
    options = [
        click.option(
            "--host",
            envvar="FARM_HOST",
            default=None,
            help="Farm server address: HOST, HOST:PORT or https://HOST:PORT "
            "(env FARM_HOST) [default: find the farm on the LAN].",
        ),
        click.option(
            "--port",
            envvar="FARM_PORT",
            type=click.IntRange(1, 65535),
            default=None,
            help=f"Farm server port (env FARM_PORT) [default: {protocol.DEFAULT_PORT}].",
        ),
        click.option(
            "--farm",
            envvar="FARM_NAME",
            default=None,
            help="With no --host: the farm to join when several answer (env FARM_NAME).",
        ),
        click.option(
            "--token",
            envvar="FARM_TOKEN",
            default=None,
            help="The farm secret (env FARM_TOKEN) [default: read ROOT/.buildcat/secret].",
        ),
        click.option(
            "--tls-ca",
            envvar="FARM_TLS_CA",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="Use TLS and trust this CA (PEM) for the server (env FARM_TLS_CA).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def client_options(function: F) -> F:
    """--host/--port/--root for every client command; passes a Client as ``client``."""

    @server_address_options
    @root_option
    @click.pass_context
    def wrapper(
        ctx: click.Context,
        host: str | None,
        port: int | None,
        farm: str | None,
        token: str | None,
        tls_ca: Path | None,
        root: Path,
        **kwargs: Any,
    ) -> Any:
        client = Client(host=host, port=port, root=root, token=token, tls_ca=tls_ca, farm=farm)
        ctx.call_on_close(client.close)
        return ctx.invoke(function, client=client, **kwargs)

    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper  # type: ignore[return-value]


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


@click.group(cls=FarmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(buildcat.__version__, prog_name="farm")
def main() -> None:
    """buildcat: a render farm in one command.

    Run `farm server` on one machine, `farm worker` on every machine that renders, and
    submit work with `farm submit`. All of them share one folder, the farm root.
    Try `farm demo` for a farm on this machine in one command.
    """


# ---- server and worker ------------------------------------------------------------------------


@main.command()
@click.option(
    "--bind",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0 for every interface).",
)
@click.option(
    "--port",
    type=int,
    default=protocol.DEFAULT_PORT,
    show_default=True,
    help="Port to listen on (0 picks a free one).",
)
@root_option
@click.option(
    "--name", default=None, help="Farm name, advertised on the LAN [default: this host's name]."
)
@click.option("--no-discovery", is_flag=True, help="Do not advertise the farm with zeroconf.")
@click.option(
    "--token",
    envvar="FARM_TOKEN",
    default=None,
    help="Use this farm secret (env FARM_TOKEN) [default: ROOT/.buildcat/secret, "
    "created on first start].",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Serve HTTPS with this certificate chain (PEM); needs --tls-key.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The private key (PEM) for --tls-cert.",
)
@click.option(
    "--lease-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds a silent worker keeps its tasks.",
)
@click.option(
    "--no-journal",
    is_flag=True,
    help="Keep the queue in memory only: a server restart forgets every job.",
)
@click.option(
    "--snapshot-every",
    type=click.IntRange(min=10),
    default=50_000,
    show_default=True,
    help="Journal events between snapshots of the whole queue.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the journal lives [default: ROOT/.buildcat].",
)
@click.option(
    "--salvage",
    is_flag=True,
    help="Start despite damage inside the journal: set the damaged bytes aside in a file "
    "of their own and replay every intact record.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0.05),
    default=10.0,
    show_default=True,
    help="Seconds a new connection has to send a whole request header.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0.05),
    default=60.0,
    show_default=True,
    help="Seconds a connection may sit with no request before it is closed.",
)
@click.option(
    "--max-unauthenticated",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Connections one address may hold before showing the farm secret.",
)
@log_level_option
def server(
    bind: str,
    port: int,
    root: Path,
    name: str | None,
    no_discovery: bool,
    token: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    lease_timeout: float,
    no_journal: bool,
    snapshot_every: int,
    state_dir: Path | None,
    salvage: bool,
    header_timeout: float,
    idle_timeout: float,
    max_unauthenticated: int,
    log_level: str,
) -> None:
    """Run the farm server (the task queue)."""
    import asyncio

    from buildcat.server.app import ServerConfig, serve

    _setup_logging(log_level)
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    config = ServerConfig(
        root=root.resolve(),
        bind=bind,
        port=port,
        lease_timeout=lease_timeout,
        state_dir=state_dir.resolve() if state_dir else None,
        journal=not no_journal,
        snapshot_every=snapshot_every,
        discovery=not no_discovery,
        token=token,
        tls_cert=tls_cert,
        tls_key=tls_key,
        salvage=salvage,
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
        max_unauthenticated=max_unauthenticated,
    )
    if name:
        config.name = name

    def ready(host: str, bound_port: int, dashboard: str) -> None:
        scheme = "https" if tls_cert else "http"
        click.echo(
            f"farm server {config.name!r} listening on {scheme}://{host}:{bound_port} "
            f"(root {config.root})"
        )
        click.echo(f"dashboard: {dashboard}")
        sys.stdout.flush()

    asyncio.run(serve(config, ready))


@main.command()
@server_address_options
@root_option
@click.option("--name", default=None, help="Worker name (default: HOST-PID).")
@click.option(
    "--slots",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Tasks run at once (one child process each).",
)
@click.option(
    "--tags", default="", help="Comma-separated capabilities, matched by jobs' requirements."
)
@click.option("--exit-when-idle", is_flag=True, help="Leave once the queue has nothing for us.")
@click.option(
    "--max-tasks", type=click.IntRange(min=1), default=None, help="Leave after this many tasks."
)
@click.option(
    "--blender",
    "blender",
    default=None,
    metavar="PATH",
    help="Blender to render with: a binary, or 'bpy' for the bpy module of this Python "
    "(default: $BLENDER, then blender on PATH, then bpy if it imports).",
)
@click.option("--no-blender", is_flag=True, help="Take no Blender tasks.")
@click.option(
    "--cancel-grace",
    type=click.FloatRange(min=0.1),
    default=20.0,
    show_default=True,
    help="Seconds a cancelled task has to stop before its process is killed and replaced.",
)
@log_level_option
def worker(
    host: str | None,
    port: int | None,
    farm: str | None,
    token: str | None,
    tls_ca: Path | None,
    root: Path,
    name: str | None,
    slots: int,
    tags: str,
    exit_when_idle: bool,
    max_tasks: int | None,
    blender: str | None,
    no_blender: bool,
    cancel_grace: float,
    log_level: str,
) -> None:
    """Run a worker: pull tasks from the server and run them."""
    from buildcat.worker.agent import WorkerConfig, run_worker

    _setup_logging(log_level)
    config = WorkerConfig(
        host=host,
        port=port,
        farm=farm,
        token=token,
        tls_ca=tls_ca,
        root=root.resolve(),
        slots=slots,
        tags=[tag.strip() for tag in tags.split(",") if tag.strip()],
        exit_when_idle=exit_when_idle,
        max_tasks=max_tasks,
        blender_choice=None if no_blender else (blender or ""),
        cancel_grace=cancel_grace,
    )
    if name:
        config.name = name
    sys.exit(run_worker(config))


# ---- submitting -------------------------------------------------------------------------------


@main.group(cls=FarmGroup)
def submit() -> None:
    """Submit a job."""


def _parse_argument(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _wait_and_exit(job: buildcat.Job, as_json: bool, timeout: float | None) -> None:
    display = ProgressDisplay(stream=sys.stderr if as_json else sys.stdout)
    try:
        status = job.wait(timeout=timeout, on_update=display.update, interval=0.5)
    except JobFailed:
        if as_json:
            _print_json(job.status())
        raise
    finally:
        display.close()
    if as_json:
        _print_json(status)


def job_options(function: F) -> F:
    """What every submit takes: priority, name, attempts, timeout, --wait and --json."""
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
                "--wait", "wait", is_flag=True, help="Wait for the job, showing progress."
            ),
            click.option("--json", "as_json", is_flag=True, help="Print JSON."),
        ]
    ):
        function = decorator(function)
    return function


def _submitted(job: buildcat.Job, as_json: bool, wait: bool) -> None:
    """Print the new job's id (or {"id": ...}); with --wait, follow it like farm wait."""
    if as_json and not wait:
        _print_json({"id": job.id})
    elif not as_json:
        click.echo(job.id)
    if wait:
        _wait_and_exit(job, as_json, None)


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
    _submitted(job, as_json, wait)


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
    help="Output path relative to the root, # for frame digits "
    "[default: renders/<file name>/<scene name>/frame_####].",
)
@click.option(
    "--format",
    "file_format",
    default=None,
    type=click.Choice(["PNG", "JPEG", "OPEN_EXR"], case_sensitive=False),
    help="Output format [default: PNG; a scene set to a movie format is refused without it].",
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
@job_options
@client_options
def submit_blender(
    client: Client,
    scene: str,
    frames: str | None,
    chunk: int,
    output: str | None,
    file_format: str,
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
        engine=engine,
        samples=samples,
        resolution=_pair(resolution, "--resolution"),
        camera=camera,
        scene_name=scene_name,
        tiles=_pair(tiles, "--tiles"),
        sample_split=sample_split,
        allow_missing=allow_missing,
        priority=priority,
        name=name,
        max_attempts=max_attempts,
        timeout=task_timeout,
        requires=[r.strip() for r in requires.split(",") if r.strip()],
        blender_version=blender_version,
    )
    _submitted(job, as_json, wait)


@main.command()
@click.argument("scene")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@root_option
def check(scene: str, as_json: bool, root: Path) -> None:
    """List every file SCENE (a .blend) depends on, through linked libraries too.

    Each is relative, absolute, outside the root or missing; exits 1 when any file is
    missing or outside the root (what `farm submit blender` refuses).
    """
    from buildcat.blender import blendfile

    report = blendfile.check_assets(blendfile.locate_blend(scene, root), root)
    if as_json:
        _print_json(report.to_json())
    else:
        rows = [[a.status, a.kind, a.path, a.used_by, a.resolved] for a in report.assets]
        if rows:
            click.echo(table(["STATUS", "KIND", "PATH", "USED BY", "ON THIS MACHINE"], rows))
        click.echo(f"{report.blend}: {blendfile.summary(report)}")
    if report.problems:
        click.echo(
            f"farm: error: {len(report.problems)} file(s) missing or outside the root", err=True
        )
        sys.exit(1)


# ---- watching and steering ----------------------------------------------------------------------


def _job_times(job: dict[str, Any]) -> tuple[float | None, float | None]:
    """Elapsed seconds and an estimate of the seconds left (from the progress so far)."""
    started = job.get("started_at")
    if started is None:
        return None, None
    elapsed = max(0.0, (job.get("finished_at") or time.time()) - started)
    progress = float(job.get("progress") or 0.0)
    if job.get("finished_at") or not 0 < progress < 1:
        return elapsed, None
    return elapsed, elapsed * (1 - progress) / progress


def _job_row(job: dict[str, Any]) -> list[str]:
    elapsed, eta = _job_times(job)
    frames = job.get("frames")
    return [
        job["id"],
        job["state"],
        f"{job['tasks'].get('done', 0)}/{job['total']}",
        f"{frames['done']}/{frames['total']}" if frames else "-",
        f"{job['progress']:.0%}",
        str(job["priority"]),
        duration(elapsed),
        duration(eta),
        job.get("owner") or "-",
        job["name"],
    ]


JOB_HEADERS = ["JOB", "STATE", "TASKS", "FRAMES", "DONE", "PRIO", "ELAPSED", "ETA", "OWNER", "NAME"]


@main.command()
@click.argument("job_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@client_options
def status(client: Client, job_id: str | None, as_json: bool) -> None:
    """Show one job, or every job."""
    if job_id:
        view = client.job(job_id).status()
        if as_json:
            _print_json(view)
            return
        click.echo(table(JOB_HEADERS, [_job_row(view)]))
        counts = ", ".join(f"{n} {state}" for state, n in view["tasks"].items() if n)
        click.echo(f"  tasks: {counts}")
        if view.get("blender_version"):
            click.echo(f"  blender: {view['blender_version']} (every task of the job)")
        if view.get("waiting"):
            click.echo(f"  waiting: {_waiting_line(view)}")
        if view.get("blocked"):
            click.echo(
                f"  blocked workers: {', '.join(view['blocked'])} (farm unblock {view['id']})"
            )
        if view.get("error"):
            click.echo(f"  error: {view['error']}")
        return
    jobs = client.jobs()
    if as_json:
        _print_json(jobs)
        return
    if not jobs:
        click.echo("no jobs")
        return
    click.echo(table(JOB_HEADERS, [_job_row(job) for job in jobs]))
    for job in jobs:
        if job.get("waiting"):
            click.echo(f"{job['id']} waiting: {_waiting_line(job)}")


def _waiting_line(job: dict[str, Any]) -> str:
    """Why a job waits, with ``farm worker --blender bpy`` suggested where this machine has
    the bpy module and its Blender could render the job."""
    waiting = str(job["waiting"])
    if job.get("kind") != "blender" or "blender" not in waiting.lower():
        return waiting
    version = bpy_module_version()
    if version is None:
        return waiting
    held = str(job.get("blender_version") or "")
    needs = [r for r in job.get("requires", []) if isinstance(r, str) and r.startswith("blender")]
    if (held and held != version) or not all(
        requirement_met(r, {"blender": version}) for r in needs
    ):
        return waiting
    return (
        f"{waiting} (this machine has the bpy module, Blender {version}: farm worker --blender bpy)"
    )


def bpy_module_version() -> str | None:
    """The version of the bpy module installed for this Python (read from its package
    metadata: importing bpy takes a second), or None."""
    try:
        return importlib.metadata.version("bpy")
    except importlib.metadata.PackageNotFoundError:
        return None


@main.command()
@click.argument("job_id")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as JSON.")
@client_options
def wait(client: Client, job_id: str, timeout: float | None, as_json: bool) -> None:
    """Wait for a job to end.

    Exits 0 when it is done, 1 when it failed or was cancelled, 3 on --timeout.
    """
    _wait_and_exit(client.job(job_id), as_json, timeout)


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON list.")
@client_options
def results(client: Client, job_id: str, as_json: bool) -> None:
    """Print a job's task results, in task order (waits for the job)."""
    values = client.job(job_id).results()
    if as_json:
        _print_json(values)
        return
    for value in values:
        click.echo(json.dumps(value, default=str))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@client_options
def workers(client: Client, as_json: bool) -> None:
    """List the workers the server knows."""
    listing = client.workers()
    if as_json:
        _print_json(listing)
        return
    if not listing:
        click.echo("no workers")
        return
    now = time.time()
    rows = [
        [
            item["name"],
            item["state"],
            str(item["slots"]),
            ",".join(item["tasks"]) or "-",
            str(item["tasks_done"]),
            str(item["tasks_failed"]),
            f"{duration(max(0.0, now - item['last_seen']))} ago",
            ", ".join(f"{k} {v}".strip() for k, v in sorted(item["capabilities"].items())),
        ]
        for item in listing
    ]
    headers = ["WORKER", "STATE", "SLOTS", "RUNNING", "DONE", "FAILED", "LAST SEEN", "CAPABILITIES"]
    click.echo(table(headers, rows))


def _job_action(action: str) -> click.Command:
    @click.argument("job_id")
    @client_options
    def command(client: Client, job_id: str) -> None:
        view = getattr(client.job(job_id), action)()
        click.echo(f"{view['id']} {view['state']}")
        if view.get("unblocked"):  # a retry clears the job's blocklist
            click.echo(f"blocklist cleared: {', '.join(view['unblocked'])} may take it again")

    command.__doc__ = {
        "cancel": "Cancel a job: queued tasks are dropped, running ones stopped.",
        "pause": "Stop dispatching a job's tasks (running ones finish).",
        "resume": "Dispatch a paused job's tasks again.",
        "retry": "Run a failed or cancelled job's unfinished tasks again, with fresh attempts\n"
        "(its blocklist is cleared: every worker may take it again).",
    }[action]
    return main.command(action)(command)


for _action in ("cancel", "pause", "resume", "retry"):
    _job_action(_action)


@main.command()
@click.argument("target", metavar="TASK|JOB")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the task or job ends.")
@client_options
def logs(client: Client, target: str, follow: bool) -> None:
    """Print the output of a task (JOB.N), or of every task of a job.

    With --follow, keep printing as the tasks print, until they end (a job's lines are
    prefixed with their task)."""
    if follow:
        for task_id, text in client.follow(target):
            if "." in target:
                click.echo(text, nl=False)
            else:
                for line in text.splitlines():
                    click.echo(f"{task_id} | {line}")
        return
    if "." in target:
        click.echo(client.log(target), nl=False)
        return
    for task in client.job(target).tasks():
        text = client.log(task["id"])
        if text:
            click.echo(f"===== {task['id']} ({task['state']}) {task['label']}")
            click.echo(text, nl=not text.endswith("\n"))


@main.command()
@click.argument("job_id")
@click.option("--worker", default=None, help="Unblock only this worker (default: all).")
@client_options
def unblock(client: Client, job_id: str, worker: str | None) -> None:
    """Let workers blocked from a job (after failing it repeatedly) take its tasks again."""
    view = client.job(job_id).unblock(worker)  # a worker the job never blocked: an error
    unblocked = ", ".join(view.get("unblocked", [])) or "none"
    blocked = ", ".join(view["blocked"]) or "none"
    click.echo(f"{view['id']} {view['state']}, blocked workers: {blocked} (unblocked: {unblocked})")


# ignore_unknown_options: a negative priority (-5) is a value, not an option.
@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("job_id")
@click.argument("priority", type=click.IntRange(-1_000_000, 1_000_000))
@client_options
def priority(client: Client, job_id: str, priority: int) -> None:
    """Set a job's priority (higher runs first); its queued tasks move at once."""
    view = client.job(job_id).set_priority(priority)
    click.echo(f"{view['id']} priority {view['priority']}")


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@client_options
def perf(client: Client, job_id: str, as_json: bool) -> None:
    """How fast a job went: tasks per hour overall and per worker, mean task time and
    each worker's utilisation, from the tasks' recorded times."""
    figures = client.job(job_id).perf()
    if as_json:
        _print_json(figures)
        return
    click.echo(
        f"job {figures['id']} ({figures['state']}): {figures['tasks_done']}/{figures['tasks']} "
        f"tasks done in {duration(figures['span_seconds'])}"
    )
    if not figures["timed"]:
        click.echo("no task has finished yet")
        return
    click.echo(
        f"{figures['tasks_per_hour']:,.0f} tasks/hour, "
        f"mean task {duration(figures['mean_task_seconds'])}"
    )
    rows = [
        [
            row["worker"],
            str(row["tasks_done"]),
            str(row["tasks_failed"]),
            f"{row['tasks_per_hour']:,.0f}",
            duration(row["mean_task_seconds"]),
            duration(row["busy_seconds"]),
            str(row["slots"]),
            f"{row['utilisation']:.0%}",
        ]
        for row in figures["workers"]
    ]
    headers = ["WORKER", "DONE", "FAILED", "TASKS/H", "MEAN", "BUSY", "SLOTS", "UTILISATION"]
    click.echo(table(headers, rows))


@main.command()
@click.option("--open", "open_browser", is_flag=True, help="Open it in a browser too.")
@click.option(
    "--revoke",
    is_flag=True,
    help="Make a new key: every browser is logged out and old links stop working "
    "(the farm secret is unchanged).",
)
@client_options
def dashboard(client: Client, open_browser: bool, revoke: bool) -> None:
    """Print the link that logs a browser into the farm's live dashboard."""
    if revoke:
        url = client.revoke_dashboard()
        click.echo("every browser is logged out and old links are dead; the new link:", err=True)
    else:
        url = client.dashboard_url()
    click.echo(url)
    if open_browser:
        import webbrowser

        webbrowser.open(url)


@main.command("worker-info")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@client_options
def worker_info(client: Client, timeout: float, as_json: bool) -> None:
    """Run a built-in job that reports the worker's host, platform, Python, root and slots."""
    info = client.worker_info(timeout=timeout)
    if as_json:
        _print_json(info)
        return
    for key, value in info.items():
        click.echo(f"{key}: {value}")


@main.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=3.0,
    show_default=True,
    help="Seconds to listen.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def discover(timeout: float, as_json: bool) -> None:
    """List the farms that answer on the LAN (zeroconf), with their addresses."""
    from buildcat import discovery

    farms = discovery.browse(timeout)
    if as_json:
        _print_json([farm.as_dict() for farm in farms])
        return
    if not farms:
        click.echo(f"farm: error: no farm answered within {timeout:g}s", err=True)
        sys.exit(1)
    for farm in farms:
        version = f"  buildcat {farm.version}" if farm.version else ""
        click.echo(f"{farm.name}  {farm.url}{version}")


@main.command()
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("farm-demo"),
    show_default=True,
    help="Folder for the throwaway farm's root.",
)
@click.option("--workers", "worker_count", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option(
    "--no-blender",
    is_flag=True,
    help="Leave Blender out: render the Mandelbrot demo a machine without Blender gets.",
)
def demo(root: Path, worker_count: int, no_blender: bool) -> None:
    """Start a local farm (server + workers), run a demo job, show the result, stop."""
    from buildcat.demo import run_demo

    sys.exit(run_demo(root, workers=worker_count, echo=click.echo, use_blender=not no_blender))
