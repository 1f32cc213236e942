"""Replies and request bodies in the format the client speaks (msgpack or JSON)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from buildcat import protocol
from buildcat.errors import ProtocolError


def respond(request: web.Request, value: Any, status: int = 200) -> web.Response:
    """A view: JSON replies are always valid JSON (NaN shows as null, see protocol.encode)."""
    try:
        return respond_exact(request, value, status, exact=False)
    except ProtocolError as exc:
        raise web.HTTPInternalServerError(reason="cannot encode reply") from exc


def respond_exact(
    request: web.Request, value: Any, status: int = 200, *, exact: bool = True
) -> web.Response:
    """The reply in the format the request accepts; raises ProtocolError if it cannot be."""
    content_type = reply_type(request)
    body = protocol.encode(value, content_type, exact=exact)
    return web.Response(body=body, status=status, content_type=content_type)


def reply_type(request: web.Request) -> str:
    accept = request.headers.get("Accept", "")
    return protocol.MSGPACK if protocol.MSGPACK in accept else protocol.JSON


def respond_error(request: web.Request, status: int, message: str) -> web.Response:
    return respond(request, {"error": message}, status=status)


async def read_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    data = await request.read()
    if not data:
        return {}
    content_type = request.content_type
    if content_type not in (protocol.MSGPACK, protocol.JSON):
        raise ProtocolError(
            f"unsupported content type {content_type!r}: send {protocol.MSGPACK} or {protocol.JSON}"
        )
    value = protocol.decode(data, content_type)
    if not isinstance(value, dict):
        raise ProtocolError("the body must be a map")
    return value
