"""``<root>/.buildcat/server.json``: where the farm server listens, written into the root so
members that read the root find it without multicast, and the rule that says a record
(this one, or the lock's holder record) is fresh.

The record is public to members (mode 0644): addresses, port, scheme, the TLS
certificate's fingerprint, the farm's name and id, who wrote it and when it last beat.
It holds no secret. Its file name and keys are a contract (the Blender add-on reads it
with the standard library only): change them only by raising :data:`RECORD_VERSION`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from buildcat.errors import FarmError
from buildcat.root import state_dir, write_json_whole

RECORD_FILE = "server.json"
RECORD_VERSION = 1
#: A record (the server's, or the lock's) that beat this recently, by the reader's clock,
#: is alive; one that did not is taken for a server gone.
FRESH_SECONDS = 10.0


def is_fresh(beat_at: float, now: float) -> bool:
    """The one freshness rule: a beat within :data:`FRESH_SECONDS` of ``now`` (either way:
    a writer whose clock runs ahead is not thereby stale for ever, nor fresh for ever)."""
    return abs(now - beat_at) < FRESH_SECONDS


def record_path(root: str | os.PathLike[str]) -> Path:
    """Always under the root (beside the secret), even with ``--state-dir``: members know
    the root, not the server's state folder."""
    return state_dir(root) / RECORD_FILE


@dataclass(slots=True)
class ServerRecord:
    """What ``server.json`` says (see the module's docstring)."""

    farm: str
    farm_id: str
    addresses: list[str]
    port: int
    scheme: str
    tls_fingerprint: str | None
    host: str
    pid: int
    boot_id: str
    started_at: float
    beat_at: float
    stopped: bool = False
    buildcat: str = ""
    api: int = 0
    version: int = RECORD_VERSION
    #: Not part of the file: where it was read from.
    path: Path | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["path"]
        return data

    def same_server(self, other: ServerRecord) -> bool:
        return (self.host, self.pid, self.started_at) == (other.host, other.pid, other.started_at)

    def problem(self, now: float) -> str:
        """Why this record does not lead to a live server ("" when it may)."""
        if self.stopped:
            return f"says its server stopped at {_clock(self.beat_at)}"
        if not is_fresh(self.beat_at, now):
            return f"is stale: last beat {now - self.beat_at:.0f} s ago"
        return ""

    def describe(self) -> str:
        return (
            f"farm {self.farm!r} on {self.host} (pid {self.pid}, port {self.port}, "
            f"since {_clock(self.started_at)})"
        )

    @classmethod
    def from_dict(cls, item: Any) -> ServerRecord:
        """Raises ValueError for anything that is not a version-1 record."""
        if not isinstance(item, dict):
            raise ValueError("not a JSON object")
        if item.get("version") != RECORD_VERSION:
            raise ValueError(f"version {item.get('version')!r}, not {RECORD_VERSION}")
        addresses = item.get("addresses")
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise ValueError("addresses is not a list of strings")
        fingerprint = item.get("tls_fingerprint")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise ValueError("tls_fingerprint is not a string")
        scheme = item.get("scheme")
        if scheme not in ("http", "https"):
            raise ValueError(f"scheme {scheme!r}")
        try:
            port = int(item["port"])
            if not 0 < port < 65536:
                raise ValueError(f"port {port}")
            return cls(
                farm=str(item["farm"]),
                farm_id=str(item["farm_id"]),
                addresses=list(addresses),
                port=port,
                scheme=str(scheme),
                tls_fingerprint=fingerprint,
                host=str(item["host"]),
                pid=int(item["pid"]),
                boot_id=str(item.get("boot_id", "")),
                started_at=float(item["started_at"]),
                beat_at=float(item["beat_at"]),
                stopped=item["stopped"] is True,
                buildcat=str(item.get("buildcat", "")),
                api=int(item.get("api", 0)),
            )
        except KeyError as exc:
            raise ValueError(f"no {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ValueError(str(exc)) from None


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def write_record(path: Path, record: ServerRecord) -> None:
    """Write the record whole (a reader sees the old record or the new, never half of
    one), mode 0644: it holds no secret and every member reads it."""
    write_json_whole(path, record.as_dict(), 0o644, indent=1)


def read_record(root: str | os.PathLike[str]) -> ServerRecord | None:
    """The root's record; ``None`` when there is none (or this host cannot read the root).
    Raises FarmError for a record that is there but damaged."""
    return read_record_at(record_path(root))


def read_record_at(path: Path) -> ServerRecord | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise FarmError(f"{path} cannot be read ({reason})") from None
    try:
        record = ServerRecord.from_dict(json.loads(text))
    except ValueError as exc:
        raise FarmError(f"{path} is damaged (not a farm server record: {exc})") from None
    record.path = path
    return record
