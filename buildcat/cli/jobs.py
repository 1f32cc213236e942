"""Tidying the job list and running one task again: archive, unarchive, delete, requeue.

Every job named is checked before any is changed: one unknown or unfinished job and
nothing happens to the others."""

from __future__ import annotations

import sys
from typing import Any

import click

from buildcat.cli.base import client_options, main
from buildcat.client import FINAL_STATES, Client
from buildcat.errors import FarmError

JOB_IDS = click.argument("job_ids", metavar="JOB...", nargs=-1, required=True)


def _ended(client: Client, job_ids: tuple[str, ...], verb: str) -> list[dict[str, Any]]:
    """The views of the jobs named (each once), all of which must have ended."""
    views = [client.job(job_id).status() for job_id in dict.fromkeys(job_ids)]
    for view in views:
        if view["state"] not in FINAL_STATES:
            raise FarmError(
                f"job {view['id']} is {view['state']}: only a job that has ended is {verb} "
                f"(wait for it, or farm cancel {view['id']} first); nothing was changed"
            )
    return views


@main.command()
@JOB_IDS
@client_options
def archive(client: Client, job_ids: tuple[str, ...]) -> None:
    """Hide ended jobs from the job list (farm status, the dashboard); they are kept.

    `farm status --archived` lists them, `farm unarchive` brings them back."""
    for view in _ended(client, job_ids, "archived"):
        client.archive(view["id"])
        click.echo(f"{view['id']} archived")


@main.command()
@JOB_IDS
@client_options
def unarchive(client: Client, job_ids: tuple[str, ...]) -> None:
    """List archived jobs in the job list again."""
    for view in _ended(client, job_ids, "unarchived"):
        client.unarchive(view["id"])
        click.echo(f"{view['id']} listed again")


@main.command()
@JOB_IDS
@click.option("--yes", "-y", is_flag=True, help="Do not ask first.")
@client_options
def delete(client: Client, job_ids: tuple[str, ...], yes: bool) -> None:
    """Forget ended jobs for good, with their logs; what they rendered or wrote stays.

    On a terminal it asks first; elsewhere (a script) it needs --yes."""
    views = _ended(client, job_ids, "deleted")
    named = {view["id"] for view in views}
    for other in client.jobs(archived=True):  # as the server refuses each: none goes
        waited = [job_id for job_id in other.get("after", []) if job_id in named]
        if waited and other["state"] not in FINAL_STATES:
            raise FarmError(
                f"job {other['id']} ({other['state']}) runs after job {waited[0]}: delete "
                f"{waited[0]} once {other['id']} has ended (or cancel {other['id']}); nothing "
                "was deleted"
            )
    if not yes:
        if not sys.stdin.isatty():
            raise FarmError("delete asks first and there is no terminal to ask on: add --yes")
        listed = ", ".join(f"{v['id']} ({v['name'] or v['kind']}, {v['state']})" for v in views)
        click.confirm(
            f"Delete {len(views)} job(s) and their logs: {listed}? Their outputs stay.",
            abort=True,
        )
    for view in views:
        client.delete(view["id"])
        click.echo(f"{view['id']} deleted")


@main.command()
@click.argument("task_id", metavar="TASK")
@client_options
def requeue(client: Client, task_id: str) -> None:
    """Run one task (JOB.N: a frame, a tile) again, with the tasks that used its result
    (a stitch, a preview video); a running one is stopped and started afresh. Its job is
    unfinished again until they are done."""
    if "." not in task_id:
        raise FarmError(f"{task_id!r} is not a task id: give JOB.N (farm status JOB lists tasks)")
    task = client.requeue_task(task_id)
    job = client.job(task_id.rpartition(".")[0]).status()
    others = [t for t in task.get("requeued", []) if t != task["id"]]
    shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
    also = f" with {len(others)} task(s) that use it ({shown})" if others else ""
    click.echo(f"{task['id']} queued again{also}; job {job['id']} {job['state']}")
