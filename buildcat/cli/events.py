"""Following the farm from scripts: `farm events` and `farm notices`."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from buildcat.cli.base import client_options, main, print_json
from buildcat.client import Client
from buildcat.display import table


def describe(event: dict[str, Any]) -> str:
    """One line for a person: time, event, and who it is about."""
    moment = time.strftime("%H:%M:%S", time.localtime(float(event.get("time") or 0)))
    name = str(event.get("event", "?"))
    job, worker = event.get("job"), event.get("worker")
    if isinstance(job, dict):
        tasks = job.get("tasks") or {}
        done = tasks.get("done", 0) if isinstance(tasks, dict) else 0
        label = job.get("name") or job.get("kind")
        about = f"{job.get('id')} {label} ({done}/{job.get('total')} done)"
        if job.get("error") and name in ("job.failed", "job.cancelled"):
            about += f": {job['error']}"
    elif isinstance(worker, dict):
        about = f"{worker.get('id')} {worker.get('name', '')}".rstrip()
    elif name == "hello":
        about = f"farm {event.get('farm')!r} (buildcat {event.get('version')}): listening"
    else:
        about = ""
    return f"{moment} {name} {about}".rstrip()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--until-job",
    default=None,
    metavar="JOB",
    help="Stop when JOB ends (at once if it has ended); exit like `farm wait`.",
)
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N events.")
@client_options
def events(client: Client, as_json: bool, until_job: str | None, count: int | None) -> None:
    """Print job and worker events as they happen, until Ctrl-C.

    The first line says the stream is open (event "hello"); then job.submitted,
    job.started, job.paused, job.resumed, job.retried, job.done, job.failed,
    job.cancelled, worker.joined and worker.left, one per line.
    """
    try:
        for event in client.events(until_job=until_job, count=count):
            line = json.dumps(event, separators=(",", ":")) if as_json else describe(event)
            click.echo(line)
            sys.stdout.flush()
        if until_job is not None:
            state = client.job(until_job).status()["state"]
            sys.exit(0 if state == "done" else 1)
    except KeyboardInterrupt:
        sys.exit(130)  # Ctrl-C is how one stops it: no message
    except BrokenPipeError:  # `farm events | head`
        sys.exit(0)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@client_options
def notices(client: Client, as_json: bool) -> None:
    """List the job-end notices not yet delivered, with their last error."""
    owed = client.notices()
    if as_json:
        print_json(owed)
        return
    rows = [
        [n["job"], n["event"], n["url"], str(n["attempts"]), n["last_error"] or "-"] for n in owed
    ]
    if rows:
        click.echo(table(["JOB", "EVENT", "URL", "TRIES", "LAST ERROR"], rows))
    else:
        click.echo("no notices owed")
