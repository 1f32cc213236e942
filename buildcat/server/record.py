"""The server's public record in the root (``<root>/.buildcat/server.json``, see
buildcat/farmrecord.py): written when it listens, beaten with the state lock's own beat
(one heartbeat, one freshness rule), marked stopped by a clean stop.

A separate file from ``server.lock``, not that record made public: the lock's record is
rewritten in place inside a file that is never replaced (its lock lives on it) and is
private (0600); this one is replaced whole at every beat and is for every member (0644).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from pathlib import Path

from buildcat import discovery, protocol
from buildcat.errors import FarmError
from buildcat.farmrecord import ServerRecord, read_record_at, record_path, write_record
from buildcat.server.lock import Holder, StateLock

log = logging.getLogger(__name__)


def reachable_addresses(bind: str) -> list[str]:
    """Where the server is reachable: what it binds; for a wildcard bind this host's
    addresses (as the advert gives them) and then loopback, for members on this host."""
    addresses = discovery.advertised_addresses(bind)
    if bind in ("", "0.0.0.0", "::"):
        local = [a for a in discovery.host_ipv4_addresses() if ipaddress.ip_address(a).is_loopback]
        addresses = list(dict.fromkeys([*addresses, *(local or ["127.0.0.1"])]))
    return addresses or [bind]


class RecordKeeper:
    """Writes the record, then rewrites it at each of the lock's beats."""

    def __init__(self, path: Path, record: ServerRecord) -> None:
        self.path = path
        self.record = record
        self._lock = threading.Lock()
        #: Another server's newer record replaced ours: leave it alone from then on.
        self._yielded = False
        self._failing = False

    def write(self) -> None:
        try:
            write_record(self.path, self.record)
            self._failing = False
        except FarmError as exc:
            if not self._failing:
                log.warning("%s: members with no --host fall back to zeroconf", exc)
            self._failing = True

    def beat(self, holder: Holder) -> None:
        with self._lock:
            if self._yielded:
                return
            try:
                seen = read_record_at(self.path)
            except FarmError:
                seen = None  # damaged: ours to mend
            if seen is not None and not seen.same_server(self.record) and not seen.stopped:
                # A server on the same root with its own state folder started after us:
                # the newest one speaks for the root; fighting over the file helps no one.
                log.warning(
                    "%s now names %s: no longer writing this server's record there",
                    self.path,
                    seen.describe(),
                )
                self._yielded = True
                return
            self.record.beat_at = holder.refreshed_at
            self.record.stopped = holder.state == "stopped"
            self.write()


def publish(
    holder: StateLock,
    *,
    root: Path,
    farm: str,
    farm_id: str,
    bind: str,
    port: int,
    tls_fingerprint: str | None,
    version: str,
) -> RecordKeeper:
    """Write the root's record for the server holding ``holder`` and keep it beating."""
    held = holder.holder
    record = ServerRecord(
        farm=farm, farm_id=farm_id, addresses=reachable_addresses(bind), port=port,
        scheme="https" if tls_fingerprint else "http", tls_fingerprint=tls_fingerprint,
        host=held.host, pid=held.pid, boot_id=held.boot_id, started_at=held.started_at,
        beat_at=held.refreshed_at, buildcat=version, api=protocol.API_VERSION,
    )  # fmt: skip
    keeper = RecordKeeper(record_path(root), record)
    keeper.write()  # the newest server speaks for the root: over whatever was there
    holder.on_beat = keeper.beat
    log.info(
        "wrote %s: members with no --host find this server at %s port %d",
        keeper.path,
        ", ".join(record.addresses),
        port,
    )
    return keeper
