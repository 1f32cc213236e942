"""The farm's JSON HTTP API with Python's standard library only: Blender's Python has
none of buildcat's dependencies, so the add-on never imports buildcat.

Finding the farm: a host typed in the panel, else ``FARM_HOST``/``FARM_PORT``, else the
server's record in the root (``<root>/.buildcat/server.json``: its addresses, port and
TLS fingerprint), each address tried with a ping. The secret is read from the root
(``<root>/.buildcat/secret``) unless ``FARM_TOKEN`` gives it. This module has no bpy in it.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import http.client
import json
import os
import secrets
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

API = "/api/v1"
DEFAULT_PORT = 8765
STATE_DIR = ".buildcat"
SERVER_RECORD = "server.json"
#: Seconds to wait for an answer to a ping while looking for the farm.
PING_SECONDS = 3.0
#: Seconds for any other request (a plan reads the .blend on the server).
REQUEST_SECONDS = 60.0
FINAL_STATES = ("done", "failed", "cancelled")


class FarmTrouble(Exception):
    """Something the artist must fix, said in one line."""


def state_dir(root: str | os.PathLike[str]) -> Path:
    return Path(root) / STATE_DIR


def find_root(blend: str, given: str = "") -> Path | None:
    """The farm root: ``given`` (the panel), else ``BUILDCAT_ROOT``, else the nearest
    folder above the .blend that holds ``.buildcat/secret``."""
    chosen = given.strip() or os.environ.get("BUILDCAT_ROOT", "")
    if chosen:
        return Path(os.path.expanduser(chosen)).resolve()
    if not blend:
        return None
    for folder in Path(blend).resolve().parents:
        if (state_dir(folder) / "secret").is_file():
            return folder
    return None


def relative_in_root(root: Path, path: str) -> str | None:
    """``path`` (absolute, on this machine) relative to the root with ``/``; None outside."""
    try:
        relative = Path(os.path.normpath(path)).resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return relative.as_posix()


def read_secret(root: Path) -> str:
    given = os.environ.get("FARM_TOKEN", "").strip()
    if given:
        return given
    path = state_dir(root) / "secret"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise FarmTrouble(
            f"no farm secret at {path}: is {root} the farm root the server uses?"
        ) from None
    except OSError as exc:
        raise FarmTrouble(f"cannot read the farm secret {path}: {exc.strerror}") from None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def root_fingerprint(root: Path) -> str:
    """The TLS certificate the root names (``tls.json``), ``""`` for a plain-HTTP farm."""
    record = _read_json(state_dir(root) / "tls.json") or {}
    fingerprint = record.get("sha256") if record.get("tls") is True else ""
    return str(fingerprint or "").lower()


def split_address(text: str, port: int | None = None) -> tuple[str, int, bool]:
    """``host``, ``host:port``, ``http(s)://host:port`` → (host, port, tls)."""
    address = text.strip()
    tls = False
    scheme, separator, rest = address.partition("://")
    if separator:
        if scheme.lower() not in ("http", "https"):
            raise FarmTrouble(f"farm address {text!r}: only http:// and https:// are spoken")
        tls = scheme.lower() == "https"
        address = rest.rstrip("/")
    host, found = address, None
    if address.count(":") == 1:
        host, _, port_text = address.partition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise FarmTrouble(f"farm address {text!r}: {port_text!r} is not a port")
        found = int(port_text)
    if not host or "/" in host or ":" in host:
        raise FarmTrouble(f"farm address {text!r} is not a host name or IPv4 address")
    return host, found or port or DEFAULT_PORT, tls


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to the certificate the root names: checked before any header is sent."""

    def __init__(self, host: str, port: int, timeout: float, fingerprint: str) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the pin below is the check
        super().__init__(host, port, timeout=timeout, context=context)
        self.fingerprint = fingerprint

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True) or b""
        shown = hashlib.sha256(der).hexdigest()
        if not hmac.compare_digest(shown, self.fingerprint):
            self.close()
            raise FarmTrouble(
                f"{self.host}:{self.port} shows a TLS certificate that is not this farm's: "
                "not sending the farm secret"
            )


@dataclass
class Farm:
    """One farm server, as the add-on talks to it."""

    host: str
    port: int
    root: Path
    token: str
    tls: bool = False
    fingerprint: str = ""

    @property
    def address(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = REQUEST_SECONDS
    ) -> Any:
        """One call of the JSON API; the decoded reply, or FarmTrouble with the reason."""
        connection: http.client.HTTPConnection
        if self.tls:
            if not self.fingerprint:
                raise FarmTrouble(
                    f"{self.address}: the root names no TLS certificate for this farm"
                )
            connection = _PinnedHTTPS(self.host, self.port, timeout, self.fingerprint)
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, API + path, body=data, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except FarmTrouble:
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise FarmTrouble(f"cannot reach the farm server at {self.address} ({exc})") from None
        finally:
            connection.close()
        try:
            reply = json.loads(payload) if payload else {}
        except ValueError:
            raise FarmTrouble(f"{self.address} did not answer like a farm server") from None
        if response.status == 401:
            raise FarmTrouble(
                f"the farm server at {self.address} refused the farm secret of {self.root}: "
                "is this the root the server uses?"
            )
        if response.status >= 400:
            reason = reply.get("error") if isinstance(reply, dict) else None
            raise FarmTrouble(str(reason or f"HTTP {response.status}"))
        return reply

    # ---- what the add-on asks ----------------------------------------------------------

    def ping(self, timeout: float = PING_SECONDS) -> dict[str, Any]:
        return dict(self.request("GET", "/ping", timeout=timeout))

    def job_types(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/job-types")["job_types"])

    def plan(self, job_type: str, settings: dict[str, Any]) -> dict[str, Any]:
        """The tasks ``job_type`` makes of ``settings``, planned by the server from its
        own view of the root (the same checks as ``farm submit``)."""
        return dict(self.request("POST", f"/job-types/{job_type}/plan", {"settings": settings}))

    def submit(
        self,
        plan: dict[str, Any],
        *,
        priority: int = 0,
        requires: list[str] | None = None,
        name: str = "",
    ) -> str:
        """Submit a plan as one job; its id."""
        body = {
            "tasks": plan["tasks"],
            "kind": plan["kind"],
            "name": name or plan["name"],
            "requires": [*plan["requires"], *(requires or [])],
            "meta": {**plan["meta"], "submitted_from": "blender"},
            "priority": priority,
            "owner": owner(),
            "key": secrets.token_hex(16),
        }
        return str(self.request("POST", "/jobs", body)["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/jobs/{job_id}", timeout=PING_SECONDS))

    def dashboard_url(self) -> str:
        return f"{self.address}/login?key={self.request('GET', '/dashboard')['key']}"


def owner() -> str:
    try:
        login = getpass.getuser()
    except Exception:  # no login name at all (a service account): say so, never fail
        login = "someone"
    return f"{login}@{socket.gethostname()}"


def locate(root: Path, typed: str = "") -> Farm:
    """The farm whose root is ``root``: at ``typed`` (host[:port]), else FARM_HOST and
    FARM_PORT, else the first address of the root's server record that answers a ping."""
    token = read_secret(root)
    fingerprint = root_fingerprint(root)
    env_port = os.environ.get("FARM_PORT", "")
    port = int(env_port) if env_port.isdigit() else None
    given = typed.strip() or os.environ.get("FARM_HOST", "").strip()
    if given:
        host, port, tls = split_address(given, port)
        return Farm(host, port, root, token, tls or bool(fingerprint), fingerprint)
    record_path = state_dir(root) / SERVER_RECORD
    record = _read_json(record_path)
    if record is None:
        raise FarmTrouble(
            f"no farm server recorded in {record_path}: start `farm server` on this root, "
            "or type the farm's host:port in the panel"
        )
    if record.get("stopped"):
        raise FarmTrouble(
            f"the farm server recorded in {record_path} has stopped: start `farm server`, "
            "or type the farm's host:port in the panel"
        )
    tls = record.get("scheme") == "https" or bool(fingerprint)
    fingerprint = fingerprint or str(record.get("tls_fingerprint") or "").lower()
    try:
        record_port = int(record.get("port") or DEFAULT_PORT)
    except (TypeError, ValueError):
        record_port = DEFAULT_PORT
    tried = []
    for address in record.get("addresses") or [record.get("host")]:
        if not isinstance(address, str) or not address:
            continue
        farm = Farm(address, record_port, root, token, tls, fingerprint)
        try:
            farm.ping()
        except FarmTrouble as exc:
            tried.append(f"{address}: {exc}")
            continue
        return farm
    raise FarmTrouble(
        f"the farm server recorded in {record_path} does not answer at any of its addresses "
        f"({'; '.join(tried) or 'none recorded'}): is it running?"
    )
