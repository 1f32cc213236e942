"""Watching and steering jobs and workers: status, wait, results, logs, cancel ..."""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from buildcat import auth, discovery
from buildcat.cli.base import (
    client_options,
    main,
    print_json,
    root_option,
    wait_and_exit,
)
from buildcat.client import Client
from buildcat.display import duration, table
from buildcat.errors import FarmError
from buildcat.perf import FRAME_COLUMNS
from buildcat.server.scheduler import requirement_met

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
@click.option("--archived", "with_archived", is_flag=True, help="List archived jobs too.")
@client_options
def status(client: Client, job_id: str | None, as_json: bool, with_archived: bool) -> None:
    """Show one job, or every job (archived ones only with --archived)."""
    if job_id:
        view = client.job(job_id).status()
        if as_json:
            print_json(view)
            return
        click.echo(table(JOB_HEADERS, [_job_row(view)]))
        counts = ", ".join(f"{n} {state}" for state, n in view["tasks"].items() if n)
        click.echo(f"  tasks: {counts}")
        if view.get("blender_version"):
            click.echo(f"  blender: {view['blender_version']} (every task of the job)")
        if view.get("after"):
            how = "whatever their outcome" if view.get("after_any") else "once they are done"
            click.echo(f"  after: {', '.join(view['after'])} ({how})")
        if view.get("waiting"):
            click.echo(f"  waiting: {_waiting_line(view)}")
        if view.get("blocked"):
            click.echo(
                f"  blocked workers: {', '.join(view['blocked'])} (farm unblock {view['id']})"
            )
        if view.get("error"):
            click.echo(f"  error: {view['error']}")
        if view.get("archived"):
            click.echo(f"  archived (farm unarchive {view['id']} lists it again)")
        for entry in view.get("history") or []:
            click.echo(f"  {history_line(entry)}")
        return
    listed = client.jobs(archived=True)
    jobs = listed if with_archived else [job for job in listed if not job.get("archived")]
    hidden = len(listed) - len(jobs)
    if as_json:
        print_json(jobs)
        return
    shown_hidden = f"{hidden} archived job(s) hidden: farm status --archived lists them"
    if not jobs:
        click.echo(f"no jobs ({shown_hidden})" if hidden else "no jobs")
        return
    rows = [_job_row(job) for job in jobs]
    for row, job in zip(rows, jobs, strict=True):
        if job.get("archived"):
            row[1] += ", archived"
    click.echo(table(JOB_HEADERS, rows))
    if hidden:
        click.echo(shown_hidden)
    for job in jobs:
        if job.get("waiting"):
            click.echo(f"{job['id']} waiting: {_waiting_line(job)}")


_DONE_WORDS = {
    "cancel": "cancelled", "pause": "paused", "resume": "resumed", "retry": "retried",
    "archive": "archived", "unarchive": "unarchived", "unblock": "unblocked",
}  # fmt: skip


def history_line(entry: dict[str, Any], now: float | None = None) -> str:
    """One steering action as a person reads it: ``cancelled by ana, 14:02``."""
    action = str(entry.get("action", "?"))
    if action == "priority":
        what = f"priority set to {entry.get('priority')}"
    elif action == "requeue-task":
        what = f"task {entry.get('task', '?')} requeued"
    elif action == "unblock" and entry.get("worker"):
        what = f"unblocked {entry['worker']}"
    else:
        what = _DONE_WORDS.get(action, action)
    by = f" by {entry['by']}" if entry.get("by") else ""
    at = entry.get("at")
    if not isinstance(at, int | float):
        return f"{what}{by}"
    when = time.localtime(at)
    today = time.localtime(time.time() if now is None else now)
    shown = "%H:%M" if when[:3] == today[:3] else "%Y-%m-%d %H:%M"
    return f"{what}{by}, {time.strftime(shown, when)}"


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
    wait_and_exit(client.job(job_id), as_json, timeout)


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON list.")
@client_options
def results(client: Client, job_id: str, as_json: bool) -> None:
    """Print a job's task results, in task order (waits for the job)."""
    values = client.job(job_id).results()
    if as_json:
        print_json(values)
        return
    for value in values:
        click.echo(json.dumps(value, default=str))


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
@click.option("--csv", "as_csv", is_flag=True, help="Print each frame's record as CSV.")
@client_options
def perf(client: Client, job_id: str, as_json: bool, as_csv: bool) -> None:
    """How fast a job went: tasks per hour overall and per worker, mean task time and
    each worker's utilisation, from the tasks' recorded times; for a render, each frame's
    render time, peak memory, Blender version and worker."""
    figures = client.job(job_id).perf()
    if as_json:
        print_json(figures)
        return
    if as_csv:
        out = csv.DictWriter(sys.stdout, fieldnames=FRAME_COLUMNS, lineterminator="\n")
        out.writeheader()
        out.writerows(figures["frames"])
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
    if figures["frames"]:
        click.echo("")
        click.echo(table(FRAME_HEADERS, [_frame_row(row) for row in figures["frames"]]))


FRAME_HEADERS = ["FRAME", "TASK", "WORKER", "BLENDER", "TIME", "PEAK MEMORY"]


def _frame_row(row: dict[str, Any]) -> list[str]:
    seconds, peak = row.get("seconds"), row.get("peak_memory_mb")
    return [
        str(row["frame"]),
        str(row["task"]),
        str(row.get("worker") or "-"),
        str(row.get("blender") or "-"),
        duration(seconds) if isinstance(seconds, (int, float)) else "-",
        f"{peak:,.1f} MB" if isinstance(peak, (int, float)) else "-",
    ]


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
    """Print the link that logs a browser into the farm's live dashboard.

    With a named token (--token/FARM_TOKEN) the link logs in as you, with your role's
    rights; with the farm secret it is the dashboard key's link (an admin's)."""
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
        print_json(info)
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
@root_option
def discover(timeout: float, as_json: bool, root: Path) -> None:
    """List the farms that answer on the LAN (zeroconf), and what the root's record
    (ROOT/.buildcat/server.json) says: which server, fresh or stale, whether it answers."""
    token: str | None = None
    with contextlib.suppress(FarmError):  # without the secret the record is only read
        token = auth.load_token(root)
    ca = os.environ.get("FARM_TLS_CA")
    checked = discovery.check_root_record(root, token, tls_ca=Path(ca) if ca else None)
    farms = discovery.browse(timeout)
    if as_json:
        listed = [farm.as_dict() for farm in farms]
        print_json([*listed, checked.as_dict()] if checked is not None else listed)
        return
    for farm in farms:
        version = f"  buildcat {farm.version}" if farm.version else ""
        click.echo(f"{farm.name}  {farm.url}{version}")
    usable = bool(farms)
    if checked is not None:
        click.echo(_record_line(checked, token is not None))
        usable = usable or checked.farm is not None or (token is None and checked.fresh)
    if not usable:
        click.echo(
            f"farm: error: no farm answered within {timeout:g}s"
            + ("" if checked is None else " and the root's record leads to none"),
            err=True,
        )
        sys.exit(1)


def _record_line(checked: discovery.RootRecord, tried: bool) -> str:
    record = checked.record
    where = f"the root's record {checked.path}"
    if record is None:
        return f"({where} {checked.problem})"
    found = checked.farm
    url = (
        found.url
        if found is not None
        else (f"{record.scheme}://{record.addresses[0] if record.addresses else '?'}:{record.port}")
    )
    version = f"  buildcat {record.buildcat}" if record.buildcat else ""
    if not checked.fresh:
        state = f"stale: {record.problem(time.time()).removeprefix('is stale: ')}"
    else:
        beat = max(0.0, time.time() - record.beat_at)
        state = f"fresh (beat {beat:.0f} s ago)"
        if found is not None:
            state += f", answers at {found.host}:{found.port}"
        elif not tried:
            state += ", not tried (no farm secret here)"
        else:
            state += f", but it {checked.problem}"
    return f"{record.farm}  {url}{version}  ({where}: {state})"
