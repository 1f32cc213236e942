"""Job types on the command line: `farm job-types` and `farm submit TYPE --set ...` (any
name `farm submit` has no command of its own for is a job type)."""

from __future__ import annotations

import os
from typing import Any

import click

from buildcat.cli.base import FallbackGroup, client_options, main, print_json, submitted
from buildcat.cli.submitting import job_options, submit
from buildcat.client import Client
from buildcat.errors import FarmError
from buildcat.jobtypes import JobTypeBroken


def parse_assignments(assignments: tuple[str, ...]) -> dict[str, str]:
    """``--set NAME=VALUE`` pairs as a map (each VALUE is text; the job type's declaration
    says what it must be)."""
    values: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise FarmError(f"--set {item!r} must look like NAME=VALUE")
        if key in values:
            raise FarmError(f"--set {key} given twice")
        values[key] = value
    return values


class TypeCommand(click.Command):
    """`farm submit TYPE`: its help lists the type's settings, read from the root."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        root = ctx.params.get("root") or os.environ.get("BUILDCAT_ROOT") or "."
        try:
            listing = Client(root=root).job_types()
        except FarmError:
            listing = []
        for entry in listing:
            if entry["name"] == self.name and "settings" in entry:
                with formatter.section(f"Settings of {self.name} ({entry['source']})"):
                    for setting in entry["settings"]:
                        formatter.write_text(_setting_line(setting).strip())
                break
        super().format_epilog(ctx, formatter)


def type_command(type_name: str, commands: list[str]) -> click.Command:
    """The `farm submit TYPE` command for any name `farm submit` has no command for."""

    @click.command(
        type_name,
        cls=TypeCommand,
        help=f"Submit a job of the job type {type_name!r}: one --set NAME=VALUE per "
        "setting (`farm job-types` lists each type's settings).",
    )
    @click.option(
        "--set",
        "assignments",
        multiple=True,
        metavar="NAME=VALUE",
        help="A setting of the job type (repeat for each).",
    )
    @click.option(
        "--requires",
        default="",
        metavar="TAG,...",
        help="Comma-separated capabilities workers must have.",
    )
    @job_options
    @client_options
    def submit_job_type(
        client: Client,
        assignments: tuple[str, ...],
        requires: str,
        task_timeout: float | None,
        wait: bool,
        as_json: bool,
        **options: Any,
    ) -> None:
        from buildcat.jobtypes import loading

        known = loading.names(client.root)
        if type_name not in known:
            raise FarmError(
                f"no submit command or job type {type_name!r} (commands: "
                f"{', '.join(commands)}; job types: {', '.join(known)}; see farm job-types)"
            )
        settings = parse_assignments(assignments)
        given = {key: value for key, value in options.items() if value is not None}
        try:
            job = client.submit_type(
                type_name,
                settings,
                requires=[r.strip() for r in requires.split(",") if r.strip()],
                timeout=task_timeout,
                **given,
            )
        except JobTypeBroken as exc:
            hint = f"farm job-types --check {type_name} shows where"
            raise JobTypeBroken(f"{exc} ({hint})", exc.traceback) from None
        submitted(job, as_json, wait)

    return submit_job_type


def _setting_line(setting: dict[str, Any]) -> str:
    kind = setting["type"]
    if setting.get("choices"):
        kind = "|".join(str(c) for c in setting["choices"])
    notes = []
    if setting.get("required"):
        notes.append("required")
    elif setting.get("default") is not None:
        notes.append(f"default {setting['default']}")
    for bound in ("minimum", "maximum"):
        if setting.get(bound) is not None:
            notes.append(f"{bound} {setting[bound]:g}")
    extra = f" [{', '.join(notes)}]" if notes else ""
    help_text = f"  {setting['help']}" if setting.get("help") else ""
    return f"    --set {setting['name']}={kind}{extra}{help_text}"


@main.command("job-types")
@click.argument("type_name", required=False, metavar="[TYPE]")
@click.option(
    "--check",
    is_flag=True,
    help="Show each broken job type with its traceback; with TYPE, plan a job of it "
    "(nothing is submitted) and show its tasks or the traceback.",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="NAME=VALUE",
    help="With --check TYPE: a setting to plan with.",
)
@click.option(
    "--server",
    "from_server",
    is_flag=True,
    help="List what the server's root holds (GET /api/v1/job-types) instead of this root.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@client_options
def job_types(
    client: Client,
    type_name: str | None,
    check: bool,
    assignments: tuple[str, ...],
    from_server: bool,
    as_json: bool,
) -> None:
    """List the job types `farm submit TYPE` takes (built-ins and ROOT/jobtypes/*.py) with
    their settings. With --check, exit 1 when any of them is broken: one that does not
    load, or whose compile fails with its default settings (or, for TYPE, with --set's)."""
    if type_name is not None:
        _check_one(client, type_name, parse_assignments(assignments), as_json)
        return
    listing = client.job_types(from_server=from_server)
    if check and not from_server:  # a type needing no setting is planned with its defaults
        for entry in listing:
            if "error" in entry or any(s["required"] for s in entry["settings"]):
                continue
            try:
                client.plan_type(entry["name"])
            except JobTypeBroken as exc:
                entry["error"], entry["traceback"] = str(exc), exc.traceback
            except FarmError:
                pass  # a refusal of its defaults is the job type's own word
    broken = [entry for entry in listing if "error" in entry]
    if as_json:
        print_json(listing)
    elif check:
        for entry in broken:
            _show_broken(entry["name"], entry["source"], entry["error"], entry.get("traceback"))
        if not broken:
            click.echo(f"all {len(listing)} job types load")
    else:
        for entry in listing:
            if "error" in entry:
                click.echo(f"{entry['name']}  ({entry['source']})  BROKEN: {entry['error']}")
                continue
            click.echo(f"{entry['name']}  ({entry['source']})  {entry['label']}")
            for setting in entry["settings"]:
                click.echo(_setting_line(setting))
    if check and broken:
        click.echo(f"farm: error: {len(broken)} job type(s) broken", err=True)
        raise SystemExit(1)


def _show_broken(name: str, source: str, error: str, trace: str | None) -> None:
    click.echo(f"{name} ({source}):" if source else f"{name}:")
    click.echo(str(trace or "").rstrip() or "  (no traceback)")
    click.echo(error)
    click.echo("")


def _check_one(client: Client, type_name: str, settings: dict[str, str], as_json: bool) -> None:
    """Plan a job of TYPE and show it, or its traceback; nothing is submitted."""
    try:
        plan = client.plan_type(type_name, settings)
    except JobTypeBroken as exc:
        _show_broken(type_name, "", str(exc), exc.traceback)
        raise
    if as_json:
        print_json(plan)
        return
    click.echo(f"{plan['name']}: {len(plan['tasks'])} task(s), job kind {plan['kind']}")
    for index, task in enumerate(plan["tasks"]):
        payload = task["payload"]
        kind = payload.get("kind", plan["kind"])
        template = payload.get("template")
        if isinstance(template, list):
            template = " ".join(str(word) for word in template)
        what = payload.get("label") or payload.get("function") or payload.get("path") or ""
        what = what or (str(template).split(" ", 1)[0] if template else "")
        after = f"  after {', '.join(map(str, task['depends']))}" if task.get("depends") else ""
        click.echo(f"  {index}: {kind} {what}{after}")


# Every name `farm submit` has no command of its own for is a job type.
assert isinstance(submit, FallbackGroup)
submit.fallback = type_command
submit.fallback_help = (
    "TYPE",
    "A job type: farm submit TYPE --set NAME=VALUE (see farm job-types).",
)
