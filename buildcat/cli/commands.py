"""Submitting programs: `farm submit command` (shell templates) and `farm submit script`."""

from __future__ import annotations

from typing import Any

import click

from buildcat.cli.base import client_options, submitted
from buildcat.cli.submitting import job_options, submit
from buildcat.client import Client


def _settings(requires: str, options: dict[str, Any]) -> dict[str, Any]:
    """The job options every submit takes, as the Python API names them."""
    settings = dict(options)
    settings["timeout"] = settings.pop("task_timeout", None)
    settings["requires"] = [r.strip() for r in requires.split(",") if r.strip()]
    return settings


@submit.command("command")
@click.argument("template")
@click.option(
    "--frames",
    default=None,
    metavar="SPEC",
    help="One task per chunk of these frames (e.g. 1-240 or 1,7,10-25:2) [default: one task].",
)
@click.option(
    "--chunk", type=click.IntRange(min=1), default=1, show_default=True, help="Frames per task."
)
@click.option(
    "--argv",
    "as_argv",
    is_flag=True,
    help="Split TEMPLATE into arguments (as a shell would) and run it with no shell.",
)
@click.option(
    "--outdir",
    default=None,
    metavar="DIR",
    help="$OUTDIR, relative to the root; made before the command runs "
    "[default: commands/<job id>].",
)
@click.option(
    "--outputs",
    multiple=True,
    metavar="PATTERN",
    help="A file each task must leave (root-relative; variables and # for the frame); "
    "a missing one fails the task. Repeat for more.",
)
@click.option(
    "--progress-regex",
    default=None,
    metavar="REGEX",
    help="Output lines matching it become progress: one group is a percentage, two are "
    "done and total (or name them percent, fraction, done/total).",
)
@click.option("--requires", default="", metavar="TAG,...", help="Capabilities workers must have.")
@job_options
@client_options
def submit_command(
    client: Client,
    template: str,
    frames: str | None,
    chunk: int,
    as_argv: bool,
    outdir: str | None,
    outputs: tuple[str, ...],
    progress_regex: str | None,
    requires: str,
    wait: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Run the shell command TEMPLATE on the farm, once per chunk of frames.

    Variables: $START $END $STEP $FRAME $FRAMES $OUTDIR $ROOT $TASK $JOB (or ${NAME});
    $$ is a $. Quote TEMPLATE with single quotes so your own shell leaves them alone.
    The worker runs it with /bin/sh -c in its root folder; its exit code decides the
    task and its output is the task log (farm logs).
    """
    job = client.command(
        template,
        frames,
        chunk=chunk,
        argv=as_argv,
        outdir=outdir,
        outputs=outputs,
        progress_regex=progress_regex,
        **_settings(requires, options),
    )
    submitted(job, as_json, wait)


@submit.command("script")
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--python",
    "python",
    default=None,
    metavar="PATH",
    help="The Python on the workers: an interpreter or a virtualenv folder (absolute, or "
    "root-relative), or a name on their PATH [default: the worker's own].",
)
@click.option(
    "--map",
    "map_args",
    multiple=True,
    metavar="ARGS",
    help="One task per --map, its ARGS (split as a shell would) after the common ones. "
    "Repeat: --map '--lr 0.1' --map '--lr 0.2'.",
)
@click.option("--requires", default="", metavar="TAG,...", help="Capabilities workers must have.")
@job_options
@client_options
def submit_script(
    client: Client,
    script: str,
    args: tuple[str, ...],
    python: str | None,
    map_args: tuple[str, ...],
    requires: str,
    wait: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Run SCRIPT (a Python file under the root) with ARGS as its sys.argv.

    Put the script's own options after --: farm submit script tools/train.py -- --lr 0.1
    """
    job = client.script(
        script,
        list(args),
        python=python,
        map=list(map_args) if map_args else None,
        **_settings(requires, options),
    )
    submitted(job, as_json, wait)
