"""The farm secret and TLS: whoever can read the root can join the farm, nobody else.

The server keeps a random secret in ``<root>/.buildcat/secret`` (mode 0600); clients and
workers read it from their own path to the root and send it with every request as
``Authorization: Bearer``. ``--token`` / ``FARM_TOKEN`` give it directly instead.
Beside it, also members-only: ``tls.json`` (whether the farm speaks TLS, and its
certificate's fingerprint: never taken from the network) and ``dashboard`` (the salt of
the dashboard's keys, which a revoke replaces). And the ways the secret is kept out of
what people read: task environments, logs, and everything the dashboard cookie reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import os
import secrets
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from buildcat.errors import ConnectionFailed, FarmError
from buildcat.root import state_dir, write_json_whole

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


#: Tasks of a worker given ``--token`` find the secret in this file, not in their
#: environment: a job that prints ``os.environ`` shows a path, not the secret.
TOKEN_FILE_ENV = "FARM_TOKEN_FILE"


def load_token(root: str | os.PathLike[str], token: str | None = None) -> str:
    """A client's or worker's secret: ``token`` (or FARM_TOKEN), else the file named by
    FARM_TOKEN_FILE (inside a task), else the root's file."""
    given = token or os.environ.get("FARM_TOKEN")
    if given:
        return check_token(given, "--token/FARM_TOKEN")
    named = os.environ.get(TOKEN_FILE_ENV)
    if named:
        return read_secret(Path(named))
    return read_secret(secret_path(root))


def write_token_file(token: str) -> Path:
    """A private copy of ``token`` for a worker's tasks (a folder of its own, 0700; the
    file 0600); :func:`remove_token_file` takes it away."""
    folder = Path(tempfile.mkdtemp(prefix="buildcat-worker-"))
    path = folder / SECRET_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    return path


def remove_token_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()


# ---- keeping the secret out of what people read --------------------------------------------

#: What the secret becomes in logs, errors and everything the dashboard cookie reads.
REDACTED = "[farm secret]"


def redact(text: str, secret: str) -> str:
    return text.replace(secret, REDACTED) if secret and secret in text else text


def redact_bytes(data: bytes, secret: str) -> bytes:
    """The secret masked in any bytes (msgpack, JSON, text, an image), length kept, so
    the framing of what carries it stays valid."""
    raw = secret.encode()
    if not raw or raw not in data:
        return data
    mask = REDACTED.encode().ljust(len(raw), b"*")[: len(raw)]
    return data.replace(raw, mask)


class RedactingFilter(logging.Filter):
    """Masks the secret in every record a handler writes (a task's error, as it raised it)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = redact(message, self.secret), None
        if record.exc_text and self.secret in record.exc_text:
            record.exc_text = redact(record.exc_text, self.secret)
        return True


def redact_logs(secret: str) -> None:
    """Keep the secret out of this process's log: on every handler of the root logger."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(secret))


_task_secret: list[str] = []


def task_secret() -> str:
    """The secret as a task process knows it, to keep it out of the task's log; empty
    when this process cannot read one."""
    if not _task_secret:
        try:
            _task_secret.append(load_token(os.environ.get("BUILDCAT_ROOT") or os.getcwd()))
        except FarmError:
            _task_secret.append("")
    return _task_secret[0]


class Redactor:
    """Text with the secret masked, fed in pieces: the secret is caught even when it
    comes split across pieces (a tail that could begin it waits for the next piece)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.held = ""

    def feed(self, text: str) -> str:
        if not self.secret:
            return text
        pending = redact(self.held + text, self.secret)
        keep = 0
        for size in range(min(len(self.secret) - 1, len(pending)), 0, -1):
            if self.secret.startswith(pending[-size:]):
                keep = size
                break
        self.held = pending[len(pending) - keep :] if keep else ""
        return pending[: len(pending) - keep]

    def end(self) -> str:
        """What is still held back (no secret can follow it any more)."""
        held, self.held = self.held, ""
        return held


def authorization(token: str) -> str:
    return f"Bearer {token}"


def farm_id(token: str) -> str:
    """A public fingerprint of a farm secret, advertised on the LAN: a member finds its own
    farm among several without being told its name, and learns nothing of the secret."""
    return hashlib.sha256(b"buildcat farm id\0" + token.encode()).hexdigest()[:16]


# ---- the dashboard ---------------------------------------------------------------------------

#: Beside the secret: the random salt of the dashboard's keys. ``farm dashboard --revoke``
#: replaces it (every link and every browser's cookie dies; the secret stays).
DASHBOARD_SALT_FILE = "dashboard"
#: How long a browser's dashboard cookie lasts (checked by the server, not only the browser).
SESSION_SECONDS = 30 * 24 * 3600


def dashboard_key(token: str, salt: str = "") -> str:
    """The key in the dashboard's login link: derived from the secret and the revocable
    salt, never the secret, and never the cookie a browser then holds.

    It opens the dashboard (read, cancel, pause, resume, retry, priority) but cannot
    submit work or act as a worker, so a shared link never runs code on the farm."""
    message = b"buildcat dashboard" + (b"\0" + salt.encode() if salt else b"")
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()[:32]


def _raw(text: str) -> bytes:
    """The bytes a header or cookie came as: aiohttp decodes them with surrogateescape, so
    ``\\xff`` arrives as a lone surrogate that a plain ``encode()`` cannot take (a 500)."""
    return text.encode("utf-8", "surrogateescape")


def dashboard_key_matches(given: str, token: str, salt: str = "") -> bool:
    return hmac.compare_digest(_raw(given), dashboard_key(token, salt).encode())


def session_cookie(token: str, salt: str, expires: int) -> str:
    """A browser's dashboard cookie: ``EXPIRES.MAC``. Good for the dashboard of this farm
    until ``expires`` (or a revoke); it is not the login key, not the secret, and neither
    can be had from it, so a cookie that leaks opens nothing but this dashboard."""
    message = f"buildcat dashboard session\0{salt}\0{expires}".encode()
    return f"{expires}.{hmac.new(token.encode(), message, hashlib.sha256).hexdigest()[:32]}"


def session_cookie_valid(value: str, token: str, salt: str, now: float) -> bool:
    expires_text, _, _ = value.partition(".")
    if not (expires_text.isascii() and expires_text.isdigit() and len(expires_text) <= 12):
        return False
    expires = int(expires_text)
    if expires <= now:
        return False
    return hmac.compare_digest(_raw(value), session_cookie(token, salt, expires).encode())


def token_session_cookie(token: str, salt: str, expires: int, name: str, sha256: str) -> str:
    """A dashboard cookie bought with a named token: ``EXPIRES.NAME.MAC``. It opens what
    that token's role may do on the dashboard, and dies with the token (the MAC covers
    the token's hash: a token made again under the same name buys new cookies)."""
    message = f"buildcat dashboard session\0{salt}\0{expires}\0{name}\0{sha256}".encode()
    mac = hmac.new(token.encode(), message, hashlib.sha256).hexdigest()[:32]
    return f"{expires}.{name}.{mac}"


def session_cookie_token(value: str) -> tuple[int, str] | None:
    """``(expires, name)`` of a named token's cookie, unchecked; ``None`` for any other."""
    expires_text, _, rest = value.partition(".")
    name, _, _ = rest.rpartition(".")
    if not (expires_text.isascii() and expires_text.isdigit() and len(expires_text) <= 12):
        return None
    return (int(expires_text), name) if name else None


def token_session_cookie_valid(
    value: str, token: str, salt: str, now: float, name: str, sha256: str
) -> bool:
    parsed = session_cookie_token(value)
    if parsed is None or parsed[1] != name or parsed[0] <= now:
        return False
    expected = token_session_cookie(token, salt, parsed[0], name, sha256)
    return hmac.compare_digest(_raw(value), expected.encode())


def bearer(header: str | None) -> str:
    """The credential an ``Authorization: Bearer`` header carries ("" when none)."""
    scheme, _, given = (header or "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else ""


def dashboard_salt_path(root: str | os.PathLike[str]) -> Path:
    return state_dir(root) / DASHBOARD_SALT_FILE


def ensure_dashboard_salt(root: str | os.PathLike[str]) -> str:
    """The salt of the dashboard's keys, made on first start (0600, beside the secret)."""
    path = dashboard_salt_path(root)
    with contextlib.suppress(FileNotFoundError):
        return _read_salt(path)
    new_dashboard_salt(root, replace=False)
    return _read_salt(path)  # two servers starting at once agree on the one linked first


def new_dashboard_salt(root: str | os.PathLike[str], *, replace: bool = True) -> str:
    """A fresh salt, written whole (temporary name, fsync, then rename, or with
    ``replace=False`` a link that never replaces one already there) before it is used."""
    path = dashboard_salt_path(root)
    salt = secrets.token_urlsafe(16)
    temporary = path.with_name(f".{DASHBOARD_SALT_FILE}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(salt + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
    except OSError as exc:
        raise FarmError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    return salt


def _read_salt(path: Path) -> str:
    try:
        salt = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise FarmError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not salt or not salt.isascii() or not salt.isprintable():
        raise FarmError(f"{path} is damaged: delete it (every browser logs in again)")
    return salt


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


class WrongCertificate(ConnectionFailed):
    """The server's certificate is not the one the farm root names: not this farm."""


#: Beside the secret: whether the farm speaks TLS and which certificate it shows. Members
#: read it from the root, never from the (unauthenticated) zeroconf advert.
TLS_RECORD_FILE = "tls.json"


@dataclass(frozen=True, slots=True)
class Transport:
    """How a member talks to its farm: TLS or not, and the certificate it must show."""

    tls: bool
    #: SHA-256 (hex) of the server's certificate (DER); empty: none pinned.
    fingerprint: str = ""


def certificate_fingerprint(cert: Path) -> str:
    """SHA-256 of the first (leaf) certificate of a PEM chain: what a browser calls the
    certificate's fingerprint, and what the server shows in the TLS handshake."""
    text = cert.read_text(encoding="ascii", errors="replace")
    end = "-----END CERTIFICATE-----"
    start = text.find("-----BEGIN CERTIFICATE-----")
    if start < 0 or end not in text[start:]:
        raise FarmError(f"the TLS certificate {cert} holds no PEM certificate")
    pem = text[start : text.index(end, start) + len(end)] + "\n"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def tls_record_path(root: str | os.PathLike[str]) -> Path:
    return state_dir(root) / TLS_RECORD_FILE


def write_tls_record(root: str | os.PathLike[str], fingerprint: str | None) -> None:
    """Say in the root whether this farm speaks TLS (``fingerprint``) or not (``None``).

    Kept when the server stops: an impostor that shows up while the server is down must
    not talk a member into plain HTTP either. Written whole (temporary name, rename)."""
    path = tls_record_path(root)
    record = {"tls": fingerprint is not None, "sha256": fingerprint or ""}
    write_json_whole(path, record, 0o600)


def read_tls_record(root: str | os.PathLike[str]) -> Transport | None:
    """What the root says of the farm's TLS; ``None`` when it says nothing (a server older
    than this record, or a host that cannot read the root)."""
    path = tls_record_path(root)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    except (OSError, ValueError) as exc:
        raise FarmError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    fingerprint = record.get("sha256") if isinstance(record, dict) else None
    if not isinstance(fingerprint, str) or (record.get("tls") is True) != bool(fingerprint):
        raise FarmError(f"{path} is damaged: delete it and restart the farm server")
    return Transport(tls=bool(fingerprint), fingerprint=fingerprint.lower())


def choose_transport(
    root: str | os.PathLike[str], *, tls: bool, plain_asked: bool, where: str
) -> Transport:
    """How to talk to the farm at ``where``: TLS when the root says the farm speaks it,
    whatever an advert or a bare ``--host`` says, pinned to the root's certificate.

    ``tls`` is what the address or the advert asks for; ``plain_asked`` is true for an
    address written ``http://``, which the root's record then refuses. Never downgrades:
    without a record the asked transport is used as before."""
    record = read_tls_record(root)
    if record is None or not record.tls:
        return Transport(tls=tls)
    if plain_asked:
        raise FarmError(
            f"the farm root says this farm speaks TLS ({tls_record_path(root)}): refusing to "
            f"send the farm secret in clear text to {where}; give the host as https://…"
        )
    return record


def check_certificate(der: bytes | None, transport: Transport, where: str) -> None:
    """Refuse a server whose certificate is not the one the root names."""
    if not transport.fingerprint:
        return
    shown = hashlib.sha256(der or b"").hexdigest()
    if not hmac.compare_digest(shown, transport.fingerprint):
        raise WrongCertificate(
            f"{where} shows a TLS certificate (sha256 {shown[:16]}…) that is not this farm's "
            f"(the root names {transport.fingerprint[:16]}…): not sending the farm secret"
        )


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection that checks the certificate against the root's record right
    after the handshake, before a single header (the secret among them) is sent."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        context: ssl.SSLContext,
        transport: Transport,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.transport = transport

    def connect(self) -> None:
        super().connect()
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            check_certificate(sock.getpeercert(binary_form=True), self.transport,
                              f"{self.host}:{self.port}")  # fmt: skip
        except WrongCertificate:
            self.close()
            raise


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
