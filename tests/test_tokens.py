"""Named tokens: made by an admin and shown once, kept hashed (0600), listed without their
text, revoked at once (with every dashboard cookie bought with them), kept across a
restart; `farm token add|list|revoke`, `farm whoami` and `farm dashboard` with them."""

from __future__ import annotations

import http.client
import json
import stat
from pathlib import Path

import pytest

from buildcat.errors import FarmError
from buildcat.server.tokens import TokenTable
from tests.conftest import Farm
from tests.people_support import add_token, admin, bearer, call, login
from tests.test_archive import kill_and_restart


def test_a_token_is_shown_once_kept_hashed_and_outlives_a_restart(farm: Farm) -> None:
    status, made = call(farm, "POST", "/tokens", admin(farm), {"name": "ana", "role": "artist"})
    assert status == 201 and set(made) == {"name", "role", "token"}
    text = made["token"]
    assert text.startswith("bc_") and len(text) >= 40
    assert call(farm, "GET", "/whoami", bearer(text))[1] == {
        "name": "ana", "role": "artist", "via": "token",
    }  # fmt: skip
    listed = call(farm, "GET", "/tokens", admin(farm))[1]["tokens"]
    assert [set(entry) for entry in listed] == [{"name", "role", "created_at", "created_by"}]
    assert listed[0]["created_by"] == "admin" and text not in json.dumps(listed)

    path = farm.root / ".buildcat" / "tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = path.read_text()
    assert text not in stored and text[3:] not in stored and "ana" in stored

    kill_and_restart(farm)
    assert call(farm, "GET", "/whoami", bearer(text))[1]["name"] == "ana"
    assert [entry["name"] for entry in call(farm, "GET", "/tokens", admin(farm))[1]["tokens"]] == [
        "ana"
    ]


def test_refusals_say_why_and_change_nothing(farm: Farm) -> None:
    add_token(farm, "ana", "artist")
    before = (farm.root / ".buildcat" / "tokens.json").read_text()
    for body, status, words in [
        ({"name": "ana", "role": "viewer"}, 409, "'ana' is taken"),
        ({"name": "admin", "role": "viewer"}, 409, "farm secret's name"),
        ({"name": "a b", "role": "viewer"}, 400, "cannot name a token"),
        ({"name": "x" * 65, "role": "viewer"}, 400, "cannot name a token"),
        ({"name": "bo", "role": "boss"}, 400, "'role' must be one of viewer, artist, admin"),
        ({"name": "bo"}, 400, "'role' must be one of"),
        ({"role": "viewer"}, 400, "cannot name a token"),
    ]:
        answer = call(farm, "POST", "/tokens", admin(farm), body)
        assert answer[0] == status and words in answer[1]["error"], (body, answer)
    assert call(farm, "DELETE", "/tokens/nobody", admin(farm)) == (
        404, {"error": "no token named 'nobody' (farm token list)"},
    )  # fmt: skip
    assert (farm.root / ".buildcat" / "tokens.json").read_text() == before


def test_revocation_takes_effect_at_once_for_the_token_and_its_cookies(farm: Farm) -> None:
    text = add_token(farm, "vi", "viewer")
    cookie = login(farm, f"token={text}")
    assert call(farm, "GET", "/jobs", cookie)[0] == 200
    assert call(farm, "GET", "/whoami", cookie)[1] == {
        "name": "vi", "role": "viewer", "via": "dashboard",
    }  # fmt: skip
    key_cookie = login(farm, "key=" + farm.cli("dashboard").stdout.strip().split("key=")[1])
    # A dashboard open meanwhile: its live stream ends with the token.
    stream = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    stream.request("GET", "/api/v1/events", headers=cookie)
    live = stream.getresponse()
    assert live.status == 200 and live.readline() == b"event: update\n"

    assert call(farm, "DELETE", "/tokens/vi", admin(farm)) == (
        200,
        {"revoked": "vi", "role": "viewer"},
    )
    assert call(farm, "GET", "/jobs", bearer(text))[0] == 401
    assert call(farm, "GET", "/jobs", cookie)[0] == 401
    live.read()  # the server ends the stream (the read would time out otherwise)
    stream.close()
    assert call(farm, "GET", "/jobs", key_cookie)[0] == 200  # others' cookies live on
    # The name made again is a new token: the old text and cookie stay dead.
    again = add_token(farm, "vi", "viewer")
    assert call(farm, "GET", "/jobs", bearer(text))[0] == 401
    assert call(farm, "GET", "/jobs", cookie)[0] == 401
    assert call(farm, "GET", "/jobs", bearer(again))[0] == 200
    # A revoked token buys no cookie; neither does the farm secret in a link.
    for query in (f"token={text}", "token=" + (farm.root / ".buildcat" / "secret").read_text()):
        assert _login_status(farm, query) == 401, query


def _login_status(farm: Farm, query: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    try:
        connection.request("GET", f"/login?{query.strip()}")
        response = connection.getresponse()
        response.read()
        assert response.getheader("Set-Cookie") is None
        return response.status
    finally:
        connection.close()


def test_farm_token_add_list_revoke_from_the_command_line(farm: Farm) -> None:
    added = farm.cli("token", "add", "ana", "--role", "artist")
    assert added.returncode == 0, added.stderr
    text = added.stdout.strip()
    assert text.startswith("bc_") and f"FARM_TOKEN={text}" in added.stderr

    for args, words in [
        (("token", "add", "ana", "--role", "viewer"), "the token name 'ana' is taken"),
        (("token", "add", "bo", "--role", "boss"), "--role must be one of viewer, artist, admin"),
        (("token", "add", "b o", "--role", "viewer"), "cannot name a token"),
        (("token", "revoke", "nobody"), "no token named 'nobody'"),
    ]:
        refused = farm.cli(*args)
        assert refused.returncode == 1 and refused.stdout == "", args
        assert refused.stderr.count("\n") == 1 and words in refused.stderr, refused.stderr

    # The artist: who it is, its dashboard link (its own), and no admin's rights.
    me = farm.cli("whoami", FARM_TOKEN=text)
    assert me.returncode == 0 and me.stdout.strip() == "ana (artist, with a named token)"
    link = farm.cli("dashboard", FARM_TOKEN=text).stdout.strip()
    assert link.endswith(f"/login?token={text}")
    assert call(farm, "GET", "/whoami", login(farm, link.split("?", 1)[1]))[1]["name"] == "ana"
    assert "/login?key=" in farm.cli("dashboard").stdout
    denied = farm.cli("token", "list", FARM_TOKEN=text)
    assert denied.returncode == 1 and "ana is an artist" in denied.stderr
    assert denied.stderr.count("\n") == 1

    farm.cli("token", "add", "root", "--role", "admin")
    listed = farm.cli("token", "list")
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "CREATED", "BY"]
    assert [line.split()[:2] for line in lines[1:]] == [["ana", "artist"], ["root", "admin"]]
    assert text not in listed.stdout
    as_json = json.loads(farm.cli("token", "list", "--json").stdout)
    assert [entry["name"] for entry in as_json] == ["ana", "root"]

    revoked = farm.cli("token", "revoke", "ana")
    assert revoked.returncode == 0 and revoked.stdout.strip() == "token ana revoked"
    gone = farm.cli("status", FARM_TOKEN=text)
    assert gone.returncode == 1 and "unknown or was revoked" in gone.stderr
    assert gone.stderr.count("\n") == 1


def test_a_damaged_token_table_says_so(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    with pytest.raises(FarmError, match="damaged"):
        TokenTable.load(path)
    assert TokenTable.load(tmp_path / "none.json").tokens == {}
