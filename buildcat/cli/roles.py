"""Running the farm: `farm server`, `farm worker` and `farm demo`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from buildcat import protocol
from buildcat.cli.base import (
    log_level_option,
    main,
    root_option,
    server_address_options,
    setup_logging,
)
from buildcat.errors import FarmError

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
    help="Journal events between snapshots of the whole queue (at least; a snapshot also "
    "waits for as many events as the last one held tasks).",
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
@click.option(
    "--notify",
    "notify",
    multiple=True,
    metavar="URL",
    help="POST a signed notice here when any job ends (repeatable; docs/http-api.md).",
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
    notify: tuple[str, ...],
    log_level: str,
) -> None:
    """Run the farm server (the task queue)."""
    import asyncio

    from buildcat.protocol import check_urls
    from buildcat.server.app import ServerConfig, serve

    setup_logging(log_level)
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
        notify=check_urls(list(notify), "--notify"),
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


def parse_device_indices(text: str) -> list[int]:
    """``"0,2"`` -> [0, 2]; one line naming the problem otherwise."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise FarmError(f"--gpu-devices {text}: give device numbers, like 0,2")
    return [int(part) for part in parts]


@main.command()
@server_address_options
@root_option
@click.option("--name", default=None, help="Worker name (default: HOST-PID).")
@click.option(
    "--slots",
    type=click.IntRange(1, 256),
    default=None,
    help="Tasks run at once (one child process each) [default: 1; with --gpu, one per GPU].",
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
@click.option(
    "--schedule",
    "schedule_spec",
    default="",
    metavar="SPEC",
    help='When to take work, in local time: "mon-fri 19:00-08:00; sat,sun 00:00-24:00" '
    "(a schedule set later with farm worker-schedule wins).",
)
@click.option(
    "--timezone",
    default=None,
    metavar="TZ",
    help="This worker's time zone, for its schedule (default: this machine's).",
)
@click.option(
    "--give-back",
    is_flag=True,
    help="When the schedule ends, give running tasks back instead of finishing them.",
)
@click.option(
    "--nimby",
    is_flag=True,
    help="Stay away while the machine is in use: someone logged in at its console, or its "
    "CPU busy with other programs.",
)
@click.option(
    "--gpu",
    is_flag=True,
    help="Render Cycles on this machine's GPUs, each slot on its own (the devices this "
    "worker's Blender finds; OptiX over CUDA). Refuses to start where it finds none.",
)
@click.option(
    "--gpu-devices",
    default=None,
    metavar="0,2",
    help="With --gpu: only these devices (0-based, in Blender's order).",
)
@click.option(
    "--gpu-backend",
    default=None,
    metavar="NAME",
    help="With --gpu: OPTIX, CUDA, HIP, ONEAPI or METAL (default: the first that has GPUs).",
)
@click.option("--gpu-and-cpu", is_flag=True, help="With --gpu: each slot renders on the CPU too.")
@click.option(
    "--python",
    "python",
    default=None,
    metavar="PATH",
    help="Run tasks in this Python (a program, or a virtual environment's folder) instead "
    "of the worker's own: for job functions that import the studio's packages. buildcat of "
    "this version must import there.",
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
    schedule_spec: str,
    timezone: str | None,
    give_back: bool,
    nimby: bool,
    gpu: bool,
    gpu_devices: str | None,
    gpu_backend: str | None,
    gpu_and_cpu: bool,
    python: str | None,
    log_level: str,
) -> None:
    """Run a worker: pull tasks from the server and run them."""
    from buildcat import schedule
    from buildcat.blender import devices
    from buildcat.worker.agent import WorkerConfig, run_worker
    from buildcat.worker.execute import check_python

    zone = schedule.check_timezone(timezone) if timezone else schedule.local_timezone()
    if schedule_spec.strip():
        schedule.parse(schedule_spec, zone)  # a bad spec is one line, before anything runs
    elif give_back:
        raise FarmError("--give-back goes with --schedule (when the schedule ends)")
    interpreter = check_python(python) if python else None
    blender_found, gpu_slots = None, None
    if gpu:
        if no_blender:
            raise FarmError("--gpu renders with Blender: it does not go with --no-blender")
        indices = parse_device_indices(gpu_devices) if gpu_devices is not None else None
        blender_found, gpu_slots = devices.for_worker(
            blender, backend=gpu_backend, indices=indices, slots=slots, with_cpu=gpu_and_cpu
        )
        slots = len(gpu_slots)
    elif gpu_devices is not None or gpu_backend or gpu_and_cpu:
        raise FarmError("--gpu-devices, --gpu-backend and --gpu-and-cpu go with --gpu")
    setup_logging(log_level)
    config = WorkerConfig(
        host=host,
        port=port,
        farm=farm,
        token=token,
        tls_ca=tls_ca,
        root=root.resolve(),
        slots=slots or 1,
        tags=[tag.strip() for tag in tags.split(",") if tag.strip()],
        exit_when_idle=exit_when_idle,
        max_tasks=max_tasks,
        blender_choice=None if no_blender else (blender or ""),
        cancel_grace=cancel_grace,
        schedule=schedule_spec.strip(),
        timezone=zone,
        give_back=give_back,
        nimby=nimby,
        python=interpreter,
        gpu_slots=gpu_slots,
    )
    if blender_found is not None:
        config.blender = blender_found
    if name:
        config.name = name
    sys.exit(run_worker(config))


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
