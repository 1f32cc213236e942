"""People and their rights: `farm token add|list|revoke` (admins) and `farm whoami`."""

from __future__ import annotations

import time

import click

from buildcat.cli.base import FarmGroup, client_options, main, print_json
from buildcat.client import Client
from buildcat.display import table
from buildcat.errors import FarmError

ROLES = ("viewer", "artist", "admin")


@main.group(cls=FarmGroup)
def token() -> None:
    """Named tokens, one per person: a viewer reads the farm, an artist submits and
    steers their own jobs, an admin does everything. Admins only (the farm secret or an
    admin's token)."""


@token.command("add")
@click.argument("name")
@click.option(
    "--role",
    required=True,
    help="viewer (reads), artist (submits, steers their own jobs) or admin (everything).",
)
@client_options
def add(client: Client, name: str, role: str) -> None:
    """Make a token for NAME; it is printed this once (the server keeps only its hash)."""
    if role not in ROLES:  # one line, as the server would say it, before any request
        raise FarmError(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
    made = client.add_token(name, role)
    click.echo(made["token"])
    click.echo(
        f"token {made['name']} ({made['role']}): shown this once, keep it secret. Use it with\n"
        f"  FARM_TOKEN={made['token']} farm ...   (or --token)\n"
        "and `farm dashboard` with it prints this person's dashboard link.",
        err=True,
    )


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@client_options
def list_tokens(client: Client, as_json: bool) -> None:
    """The named tokens: name, role, when and by whom each was made (never the tokens)."""
    tokens = client.tokens()
    if as_json:
        print_json(tokens)
        return
    if not tokens:
        click.echo("no named tokens (farm token add NAME --role viewer|artist|admin)")
        return
    rows = [
        [
            entry["name"],
            entry["role"],
            time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["created_at"])),
            entry.get("created_by") or "",
        ]
        for entry in sorted(tokens, key=lambda entry: entry["name"])
    ]
    click.echo(table(["NAME", "ROLE", "CREATED", "BY"], rows))


@token.command("revoke")
@click.argument("name")
@client_options
def revoke(client: Client, name: str) -> None:
    """Revoke NAME's token at once: its requests, and its browsers' dashboard, are refused."""
    client.revoke_token(name)
    click.echo(f"token {name} revoked")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@client_options
def whoami(client: Client, as_json: bool) -> None:
    """Who the farm takes you for, and your role."""
    me = client.whoami()
    if as_json:
        print_json(me)
        return
    how = "the farm secret" if me.get("via") == "secret" else "a named token"
    click.echo(f"{me['name']} ({me['role']}, with {how})")
