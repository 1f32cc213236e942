"""People's routes: ``GET /api/v1/whoami``, and the named tokens an admin makes, lists and
revokes (``/api/v1/tokens``). Who may call what is server/rights.py's."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from buildcat import protocol
from buildcat.errors import FarmError
from buildcat.server import web as web_ui
from buildcat.server.farm import caller_of, farm_of
from buildcat.server.replies import read_body, respond, respond_error

log = logging.getLogger(__name__)


async def whoami(request: web.Request) -> web.Response:
    """Who the credential sent is: ``{"name", "role", "via"}`` (``via``: ``secret``,
    ``token`` or ``dashboard``)."""
    caller = caller_of(request)
    return respond(request, {"name": caller.name, "role": caller.role, "via": caller.via})


async def add_token(request: web.Request) -> web.Response:
    """``{"name", "role"}`` -> 201 ``{"name", "role", "token"}``: the token's text, this
    once (the server keeps only its hash)."""
    farm = farm_of(request)
    body = await read_body(request)
    name, role = body.get("name"), body.get("role")
    farm.tokens.check_new(name, role)
    assert isinstance(name, str) and isinstance(role, str)
    try:
        token, text = await farm.tokens.add(name, role, caller_of(request).name, time.time())
    except KeyError:
        why = "the farm secret's name" if name == "admin" else "taken"
        return respond_error(request, 409, f"the token name {name!r} is {why}: choose another")
    except FarmError as exc:  # tokens.json could not be written: nothing changed
        return respond_error(request, 503, f"the server cannot record the token: {exc}")
    return respond(request, {"name": token.name, "role": token.role, "token": text}, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    tokens = farm_of(request).tokens.tokens.values()
    return respond(request, {"tokens": [token.to_dict() for token in tokens]})


async def revoke_token(request: web.Request) -> web.Response:
    """The token is gone at once: its next request, and its cookies', answer 401."""
    farm = farm_of(request)
    name = request.match_info["name"]
    await read_body(request)  # none is needed; one that is sent must decode
    try:
        token = await farm.tokens.revoke(name, caller_of(request).name)
    except KeyError:
        raise web.HTTPNotFound(reason=f"no token named {name!r} (farm token list)") from None
    except FarmError as exc:
        return respond_error(request, 503, f"the server cannot record the revocation: {exc}")
    request.app[web_ui.OVERVIEW_KEY].wake()  # its open dashboards' streams end now
    return respond(request, {"revoked": token.name, "role": token.role})


def add_routes(app: web.Application) -> None:
    api = protocol.API_PREFIX
    app.router.add_get(f"{api}/whoami", whoami)
    app.router.add_post(f"{api}/tokens", add_token)
    app.router.add_get(f"{api}/tokens", list_tokens)
    app.router.add_delete(f"{api}/tokens/{{name}}", revoke_token)
