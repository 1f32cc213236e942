"""The farm secret and TLS: whoever can read the root can join the farm, nobody else.

The server keeps a random secret in ``<root>/.buildcat/secret`` (mode 0600); clients and
workers read it from their own path to the root and send it with every request as
``Authorization: Bearer``. ``--token`` / ``FARM_TOKEN`` give it directly instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import ssl
import stat
from pathlib import Path

from buildcat.errors import FarmError
from buildcat.root import state_dir

log = logging.getLogger(__name__)

SECRET_FILE = "secret"
#: 32 random bytes, URL-safe: fits a header, a cookie and a link.
SECRET_BYTES = 32
MIN_TOKEN_LENGTH = 16


def secret_path(root: str | os.PathLike[str]) -> Path:
    return state_dir(root) / SECRET_FILE


def check_token(token: str, where: str) -> str:
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token:
        raise FarmError(
            f"the farm secret from {where} is not usable: it needs at least "
            f"{MIN_TOKEN_LENGTH} printable characters and no spaces"
        )
    return token


def ensure_secret(root: str | os.PathLike[str]) -> str:
    """The server's secret: read ``<root>/.buildcat/secret``, creating it on first start."""
    path = secret_path(root)
    if path.exists():
        return read_secret(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FarmError(f"cannot create the farm secret {path}: {exc.strerror}") from None
    token = secrets.token_urlsafe(SECRET_BYTES)
    temporary = path.with_name(f".{SECRET_FILE}.{os.getpid()}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            # link() never replaces: two servers starting at once agree on one secret.
            os.link(temporary, path)
            log.info("created the farm secret %s (mode 0600)", path)
        except FileExistsError:
            pass
    except OSError as exc:
        raise FarmError(f"cannot create the farm secret {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    return read_secret(path)


def read_secret(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FarmError(
            f"no farm secret at {path}: point --root (BUILDCAT_ROOT) at the farm root "
            "the server uses, or give the secret with --token (FARM_TOKEN)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise FarmError(f"cannot read the farm secret {path}: {reason}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the farm secret %s is readable by others (mode %o)", path, mode & 0o777)
    return check_token(text, str(path))


def load_token(root: str | os.PathLike[str], token: str | None = None) -> str:
    """A client's or worker's secret: ``token`` (or FARM_TOKEN), else the root's file."""
    given = token or os.environ.get("FARM_TOKEN")
    if given:
        return check_token(given, "--token/FARM_TOKEN")
    return read_secret(secret_path(root))


def authorization(token: str) -> str:
    return f"Bearer {token}"


def farm_id(token: str) -> str:
    """A public fingerprint of a farm secret, advertised on the LAN: a member finds its own
    farm among several without being told its name, and learns nothing of the secret."""
    return hashlib.sha256(b"buildcat farm id\0" + token.encode()).hexdigest()[:16]


def dashboard_key(token: str) -> str:
    """The key in the dashboard's login link: derived from the secret, not the secret.

    It opens the dashboard (read, cancel, pause, resume, retry, priority) but cannot
    submit work or act as a worker, so a shared link never runs code on the farm."""
    return hmac.new(token.encode(), b"buildcat dashboard", hashlib.sha256).hexdigest()[:32]


def _raw(text: str) -> bytes:
    """The bytes a header or cookie came as: aiohttp decodes them with surrogateescape, so
    ``\\xff`` arrives as a lone surrogate that a plain ``encode()`` cannot take (a 500)."""
    return text.encode("utf-8", "surrogateescape")


def dashboard_key_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(_raw(given), dashboard_key(token).encode())


def token_matches(header: str | None, secret: str) -> bool:
    """Whether an ``Authorization`` header carries ``secret``; constant time, and any bytes
    at all (not UTF-8, not ASCII) are simply not the secret."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    return hmac.compare_digest(_raw(given.strip()), secret.encode())


# ---- TLS ----------------------------------------------------------------------------------


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise FarmError(f"cannot load the TLS certificate {cert} and key {key}: {reason}") from None
    return context


def client_ssl_context(ca: Path | None = None) -> ssl.SSLContext:
    """Verify the server against ``ca`` (a PEM file) or, without one, the system's store."""
    context = ssl.create_default_context()
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            raise FarmError(f"cannot load the TLS CA file {ca}: {reason}") from None
    return context
