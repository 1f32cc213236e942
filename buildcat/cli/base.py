"""The ``farm`` command group, its error handling and the options every command shares."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

import buildcat
from buildcat import protocol
from buildcat.client import Client
from buildcat.display import ProgressDisplay
from buildcat.errors import FarmError, JobFailed, JobTimeout

F = TypeVar("F", bound=Callable[..., Any])
#: Where a submit command's shared options (``--after``, ``--notify``) leave what its
#: client's submits take (``Client.submit_defaults``; ``notify``: ``Client(notify=)``), in
#: click's context, for client_options to hand over.
SUBMIT_DEFAULTS = "buildcat.submit_defaults"


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


class FallbackGroup(FarmGroup):
    """A group whose unknown command names go to ``fallback`` (name, known names) ->
    command: `farm submit TYPE` for job types (cli/jobtypes.py sets it)."""

    fallback: Callable[[str, list[str]], click.Command] | None = None
    #: (term, help) shown under "Other names" in the group's help.
    fallback_help: tuple[str, str] | None = None

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or self.fallback is None or cmd_name.startswith("-"):
            return command
        return self.fallback(cmd_name, sorted(self.commands))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_commands(ctx, formatter)
        if self.fallback_help is not None:
            with formatter.section("Other names"):
                formatter.write_dl([self.fallback_help])


def setup_logging(level: str) -> None:
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
        defaults = dict(ctx.meta.get(SUBMIT_DEFAULTS, {}))
        client = Client(
            host=host, port=port, root=root, token=token, tls_ca=tls_ca, farm=farm,
            notify=defaults.pop("notify", ()),
        )  # fmt: skip
        client.submit_defaults.update(defaults)
        ctx.call_on_close(client.close)
        return ctx.invoke(function, client=client, **kwargs)

    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper  # type: ignore[return-value]


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def wait_and_exit(job: buildcat.Job, as_json: bool, timeout: float | None) -> None:
    display = ProgressDisplay(stream=sys.stderr if as_json else sys.stdout)
    try:
        status = job.wait(timeout=timeout, on_update=display.update, interval=0.5)
    except JobFailed:
        if as_json:
            print_json(job.status())
        raise
    finally:
        display.close()
    if as_json:
        print_json(status)


def submitted(job: buildcat.Job, as_json: bool, wait: bool) -> None:
    """Print the new job's id (or {"id": ...}); with --wait, follow it like farm wait."""
    if as_json and not wait:
        print_json({"id": job.id})
    elif not as_json:
        click.echo(job.id)
    if wait:
        wait_and_exit(job, as_json, None)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from buildcat import bundle

        click.echo(bundle.version_text())
        ctx.exit()


@click.group(cls=FarmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version, which build this is (pip or the single executable) and "
    "whether the compiled speed-ups are in use, and exit.",
)
def main() -> None:
    """buildcat: a render farm in one command.

    Run `farm server` on one machine, `farm worker` on every machine that renders, and
    submit work with `farm submit`. All of them share one folder, the farm root.
    Try `farm demo` for a farm on this machine in one command.
    """
