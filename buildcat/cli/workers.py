"""Workers and steering them by name: workers, worker-drain, worker-disable, worker-enable,
worker-requeue, worker-forget, worker-schedule."""

from __future__ import annotations

import datetime
import sys
import time
from typing import Any
from zoneinfo import ZoneInfo

import click

from buildcat import schedule
from buildcat.cli.base import client_options, main, print_json
from buildcat.client import Client
from buildcat.display import duration, table
from buildcat.errors import FarmError

NAME = click.argument("name", metavar="NAME")
HEADERS = ["WORKER", "STATUS", "SLOTS", "TAGS", "GPU", "SCHEDULE", "CURRENT", "DONE", "FAILED",
           "LAST SEEN"]  # fmt: skip


def _local(moment: float | None, zone: str) -> str:
    """An epoch time on the worker's own clock: ``Mon 19:00``."""
    if moment is None:
        return "-"
    try:
        when = datetime.datetime.fromtimestamp(moment, ZoneInfo(zone))
    except (ValueError, KeyError, OSError):
        when = datetime.datetime.fromtimestamp(moment)
    return f"{when:%a %H:%M}"


def _current(item: dict[str, Any]) -> str:
    current = item.get("current") or []
    if not current:
        return "-"
    first = current[0]
    more = int(item.get("holding", len(current))) - 1
    shown = f"{first['id']} {float(first.get('progress') or 0):.0%}"
    return shown + (f" +{more}" if more > 0 else "")


def _gpu(item: dict[str, Any]) -> str:
    """``CUDA 2x 48G``: a ``farm worker --gpu``'s backend, GPUs and the smallest's memory."""
    slots = (item.get("info") or {}).get("gpus") or []
    capabilities = item.get("capabilities") or {}
    if not slots or "gpu" not in capabilities:
        return "-"
    count = len({str(d.get("id")) for slot in slots for d in slot.get("devices", [])})
    memory = capabilities.get("gpu.memory")
    return f"{capabilities['gpu']} {count}x" + (f" {memory}G" if memory else "")


def _row(item: dict[str, Any], now: float) -> list[str]:
    plan = item.get("schedule")
    last_seen = item.get("last_seen")
    return [
        str(item["name"]),
        str(item.get("status") or item.get("state")),
        str(item.get("slots") or "-"),
        ",".join(item.get("tags") or []) or "-",
        _gpu(item),
        f"{plan['spec']} ({plan['timezone']})" if plan else "-",
        _current(item),
        str(item.get("tasks_done", 0)),
        str(item.get("tasks_failed", 0)),
        f"{duration(max(0.0, now - last_seen))} ago" if last_seen is not None else "-",
    ]


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@client_options
def workers(client: Client, as_json: bool) -> None:
    """List the workers the server knows: status (idle, running, draining, disabled,
    asleep, offline), tags, schedule, current task and when each was last heard from."""
    listing = client.workers()
    if as_json:
        print_json(listing)
        return
    if not listing:
        click.echo("no workers")
        return
    now = time.time()
    click.echo(table(HEADERS, [_row(item, now) for item in listing]))
    for item in listing:
        plan = item.get("schedule")
        if plan and item.get("asleep") and item.get("status") != "offline":
            wakes = _local(item.get("wakes_at"), plan["timezone"])
            click.echo(f"{item['name']} asleep until {wakes} ({plan['timezone']})")


def _said(view: dict[str, Any]) -> str:
    requeued = int(view.get("requeued") or 0)
    back = f"; {requeued} task(s) back in the queue" if requeued else ""
    return f"{view['name']} {view['status']}{back}"


@main.command("worker-drain")
@NAME
@client_options
def worker_drain(client: Client, name: str) -> None:
    """Let a worker finish its current task(s) and take no more (farm worker-enable undoes
    it)."""
    view = client.drain_worker(name)
    click.echo(_said(view) + ("" if view.get("drained") else ": finishing its current task(s)"))


@main.command("worker-disable")
@NAME
@client_options
def worker_disable(client: Client, name: str) -> None:
    """Take a worker out of the farm now: its running tasks are stopped and go back to the
    queue (no attempt lost), and it takes no more until farm worker-enable."""
    click.echo(_said(client.disable_worker(name)))


@main.command("worker-enable")
@NAME
@client_options
def worker_enable(client: Client, name: str) -> None:
    """Let a drained or disabled worker take work again."""
    click.echo(_said(client.enable_worker(name)))


@main.command("worker-requeue")
@NAME
@client_options
def worker_requeue(client: Client, name: str) -> None:
    """Put a worker's current tasks back in the queue (stopped there, no attempt lost); the
    worker stays in the farm and may take other work."""
    click.echo(_said(client.requeue_worker(name)))


@main.command("worker-forget")
@NAME
@click.option("--yes", "-y", is_flag=True, help="Do not ask first.")
@client_options
def worker_forget(client: Client, name: str, yes: bool) -> None:
    """Drop a departed (offline) worker from the lists, with its settings (schedule,
    disabled). An online worker is refused: stop it first, or disable it."""
    if not yes:
        if not sys.stdin.isatty():
            raise FarmError("worker-forget asks first; there is no terminal to ask on: add --yes")
        click.confirm(f"Forget worker {name} and its settings?", abort=True)
    click.echo(f"{client.forget_worker(name)} forgotten")


@main.command("worker-schedule")
@NAME
@click.argument("spec", metavar='"SPEC"', required=False)
@click.option("--timezone", default=None, metavar="TZ", help="Default: the worker's own.")
@click.option(
    "--give-back",
    is_flag=True,
    help="When the schedule ends, give running tasks back (otherwise they finish).",
)
@click.option("--clear", is_flag=True, help="Drop the schedule: take work around the clock.")
@client_options
def worker_schedule(
    client: Client, name: str, spec: str | None, timezone: str | None, give_back: bool,
    clear: bool,
) -> None:  # fmt: skip
    """Set when a worker takes work, on its own clock: "mon-fri 19:00-08:00; sat,sun
    00:00-24:00" (days mon..sun, ranges, lists or daily; a window past midnight runs into
    the next day). Outside it the worker finishes (or, with --give-back, gives back) its
    task and sleeps. This wins over the worker's own --schedule."""
    if clear == bool(spec):
        raise FarmError('give a schedule ("mon-fri 19:00-08:00") or --clear, not both or neither')
    if spec:
        schedule.parse(spec, schedule.check_timezone(timezone) if timezone else "UTC")
    view = client.set_worker_schedule(name, spec or "", timezone=timezone, give_back=give_back)
    plan = view.get("schedule")
    if plan is None:
        click.echo(f"{view['name']} has no schedule: it takes work around the clock")
        return
    if view.get("asleep"):
        when = f"asleep until {_local(view.get('wakes_at'), plan['timezone'])}"
    else:
        when = f"awake until {_local(view.get('sleeps_at'), plan['timezone'])}"
    click.echo(f"{view['name']}: {plan['spec']} ({plan['timezone']}); {when}")
