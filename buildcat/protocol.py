"""What travels on the wire: the API version, the msgpack/JSON codec and size limits."""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import urlsplit

import msgpack

from buildcat.errors import AddressError, LimitError, ProtocolError

__all__ = ["ProtocolError"]  # re-exported for modules that speak the protocol

API_VERSION = 1
API_PREFIX = f"/api/v{API_VERSION}"
DEFAULT_PORT = 8765

MSGPACK = "application/msgpack"
JSON = "application/json"

#: Largest request body the server reads (a map of many items fits; a flood does not).
MAX_BODY_BYTES = 32 * 1024 * 1024
#: Deepest nesting accepted in a decoded body; deeper is refused as malformed.
MAX_DEPTH = 64
#: Most tasks one job may have.
MAX_TASKS_PER_JOB = 1_000_000
#: The integers msgpack carries (a JSON body may hold any): larger is refused as malformed.
MIN_INT, MAX_INT = -(2**63), 2**64 - 1


def pack(value: Any) -> bytes:
    """Encode as msgpack; raises ProtocolError for values msgpack cannot carry."""
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {type(value).__name__} as msgpack: {exc}") from exc


def unpack(data: bytes, trusted: bool = False) -> Any:
    """Decode msgpack; raises ProtocolError for anything malformed. ``trusted`` (a reply
    from our own server) skips the nesting walk."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"malformed msgpack body: {exc}") from exc
    if not trusted:
        check_depth(value)
    return value


def encode(value: Any, content_type: str, *, exact: bool = True) -> bytes:
    """Encode for the given content type (msgpack unless JSON was asked for).

    ``exact=False`` is for views a person or a browser reads: JSON that is always valid
    (NaN and infinities become ``null``, map keys that are not strings become text)
    instead of a refusal. Anything handed to a program to act on is encoded exactly."""
    if content_type == JSON:
        try:
            return json.dumps(value, default=_json_default, allow_nan=exact).encode()
        except (TypeError, ValueError) as exc:
            if exact:
                raise ProtocolError(f"cannot encode as JSON: {exc}") from exc
        try:
            return json.dumps(_displayable(value), default=_json_default).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            raise ProtocolError(f"cannot encode as JSON: {exc}") from exc
    return pack(value)


def _displayable(value: Any) -> Any:
    """``value`` with what JSON cannot show made showable (see :func:`encode`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_key_text(k): _displayable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_displayable(v) for v in value]
    return value


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    return json.dumps(_displayable(key), default=_json_default)


def decode(data: bytes, content_type: str) -> Any:
    """Decode a body sent as msgpack or JSON."""
    if content_type == JSON:
        try:
            value = json.loads(data, parse_constant=_no_constant, parse_float=_finite_float)
        except RecursionError:
            raise ProtocolError(f"body nested deeper than {MAX_DEPTH} levels") from None
        except ValueError as exc:
            raise ProtocolError(f"malformed JSON body: {exc}") from exc
        check_depth(value)
        return value
    return unpack(data)


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Refuse structures nested deeper than ``limit`` and integers msgpack cannot carry, so
    a decoded body always encodes again. Recursion stops at ``limit``: it cannot blow the
    stack; scalars are skipped by type (a million-task submit is walked in well under a
    second)."""
    _check_items(value.items() if isinstance(value, dict) else (), 1, limit, None, True)
    if isinstance(value, list | tuple):
        _check_items(enumerate(value), 1, limit, None, False)
    elif isinstance(value, int) and not isinstance(value, bool):
        _check_int(value, None)


_SCALARS = frozenset({str, float, bool, bytes, type(None)})


def _check_items(items: Any, depth: int, limit: int, where: Any, top: bool) -> None:
    for key, item in items:
        kind = type(item)
        if kind in _SCALARS:
            continue
        field = key if top else where
        if kind is int:
            if not MIN_INT <= item <= MAX_INT:
                _check_int(item, field)
            continue
        if depth >= limit and item:  # its items would lie deeper than the limit
            raise ProtocolError(f"body nested deeper than {limit} levels")
        if isinstance(item, dict):
            _check_items(item.items(), depth + 1, limit, field, False)
        elif isinstance(item, list | tuple):
            _check_items(enumerate(item), depth + 1, limit, field, False)
        elif isinstance(item, int) and not isinstance(item, bool):
            _check_int(item, field)


def _check_int(item: int, where: Any) -> None:
    if not MIN_INT <= item <= MAX_INT:
        field = f" (in {where!r})" if isinstance(where, str) else ""
        raise ProtocolError(f"an integer in the body does not fit in 64 bits{field}")


def check_finite(value: Any, name: str) -> None:
    """Refuse NaN and infinities anywhere in ``value``, and map keys that are not strings
    (what JSON views of it could not show), naming the field ``name``."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ProtocolError(f"{name!r} holds {item!r}: only finite numbers are accepted")
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    raise ProtocolError(f"{name!r} has a key that is not a string: {key!r}")
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _no_constant(text: str) -> Any:
    raise ProtocolError(f"{text} is not a number: only finite numbers are accepted")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"{text} does not fit in a float: only finite numbers are accepted")
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def split_address(text: str, port: int | None = None) -> tuple[str, int, bool]:
    """``host``, ``host:port``, ``http://host:port`` or ``https://host`` → (host, port, tls).

    A port in the text wins over ``port``; the default is :data:`DEFAULT_PORT`.
    """
    address = text.strip()
    tls = False
    scheme, separator, rest = address.partition("://")
    if separator:
        if scheme.lower() not in ("http", "https"):
            raise AddressError(f"farm address {text!r}: only http:// and https:// are spoken")
        tls = scheme.lower() == "https"
        address = rest.rstrip("/")
    host, found_port = address, None
    if address.startswith("["):
        raise AddressError(f"farm address {text!r}: IPv6 is not supported; use IPv4")
    if address.count(":") == 1:
        host, _, port_text = address.partition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise AddressError(f"farm address {text!r}: {port_text!r} is not a port")
        found_port = int(port_text)
    if not host or "/" in host or ":" in host:
        raise AddressError(f"farm address {text!r} is not a host name or IPv4 address")
    return host, found_port or port or DEFAULT_PORT, tls


def check_request_size(size: int, count: int, advice: str) -> None:
    """Refuse, before sending, a job the server would answer 413."""
    if size > MAX_BODY_BYTES:
        raise LimitError(
            f"this job would be {count:,} tasks, about {size / 2**20:,.0f} MiB to send; a "
            f"request may be at most {MAX_BODY_BYTES // 2**20} MiB: {advice}"
        )


#: Web hooks one job may notify (``--notify``), and the longest URL taken.
MAX_URLS = 16
MAX_URL_LENGTH = 2048


def check_urls(value: Any, what: str = "notify") -> list[str]:
    """The notify URLs of a request (a string or a list of them), or ProtocolError (a 400)
    saying why not: only http:// and https:// with a host, at most MAX_URL_LENGTH each."""
    if value is None or value == "":
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(url, str) for url in items):
        raise ProtocolError(f"'{what}' must be a URL or a list of URLs")
    if len(items) > MAX_URLS:
        raise ProtocolError(f"'{what}' may name at most {MAX_URLS} URLs")
    urls: list[str] = []
    for url in items:
        problem = url_problem(url)
        if problem:
            raise ProtocolError(f"{what} URL {url[:80]!r}: {problem}")
        if url not in urls:
            urls.append(url)
    return urls


def url_problem(url: str) -> str:
    """Why ``url`` cannot be notified ("" when it can)."""
    if len(url) > MAX_URL_LENGTH:
        return f"longer than {MAX_URL_LENGTH} characters"
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        return "contains spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "only http:// and https:// URLs can be notified"
    if not parts.hostname:
        return "the URL has no host"
    return ""
