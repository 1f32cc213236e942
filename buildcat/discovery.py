"""Finding the farm: through the root's record, then on the LAN with zeroconf.

A member given no address (no --host, no FARM_HOST) first reads
``<root>/.buildcat/server.json`` (buildcat/farmrecord.py): if it is fresh and names this
root's farm, the first of its addresses that answers a ping carrying the secret is the
server. That costs one file read and one round trip, with no multicast wait, and works
where multicast does not reach (another subnet, a VPN). Otherwise (no record, a stale
one, or none of its addresses answer) the member listens for zeroconf as before, and an
error says what was wrong with the record.

Zeroconf: the server advertises ``_buildcat._tcp.local.``, IPv4 only, on the addresses it
is bound to (every IPv4 address of the host for ``0.0.0.0``); clients and workers browse
on every IPv4 interface, or on the addresses in ``FARM_MDNS_INTERFACES`` (comma-separated)
when that is set.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import os
import queue
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ifaddr
from zeroconf import (
    DNSQuestionType,
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from buildcat import auth, protocol
from buildcat.errors import FarmError
from buildcat.farmrecord import ServerRecord, read_record, record_path

log = logging.getLogger(__name__)

SERVICE_TYPE = "_buildcat._tcp.local."
#: How long a client or worker given no --host listens for a farm.
DEFAULT_TIMEOUT = 5.0
#: How long a member waits for each address in the root's record to answer its ping.
PROBE_TIMEOUT = 2.0


class NoFarmFound(FarmError):
    """Browsing found no farm (or not the one asked for) before the timeout."""


@dataclass(frozen=True, slots=True)
class FoundFarm:
    """A farm server that answered on the LAN."""

    name: str
    host: str
    port: int
    addresses: tuple[str, ...]
    version: str = ""
    api: str = ""
    tls: bool = False
    server: str = ""
    #: A public fingerprint of the farm's secret: members recognise their own farm by it.
    farm_id: str = ""
    #: How it was found: ``"lan"`` (zeroconf) or ``"root"`` (the root's record).
    via: str = "lan"

    @property
    def how(self) -> str:
        return "through the root's record" if self.via == "root" else "on the LAN"

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "addresses": list(self.addresses),
            "version": self.version,
            "api": self.api,
            "tls": self.tls,
            "id": self.farm_id,
            "url": self.url,
            "via": self.via,
        }


# ---- addresses ----------------------------------------------------------------------------


def host_ipv4_addresses() -> list[str]:
    """Every IPv4 address of this host, loopback last."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and ip.ip not in found:
                found.append(ip.ip)
    return sorted(found, key=lambda address: ipaddress.ip_address(address).is_loopback)


def advertised_addresses(bind: str) -> list[str]:
    """The IPv4 addresses a server bound to ``bind`` is reachable on."""
    if bind in ("", "0.0.0.0", "::"):
        every = host_ipv4_addresses()
        outside = [a for a in every if not ipaddress.ip_address(a).is_loopback]
        return outside or every
    try:
        infos = socket.getaddrinfo(bind, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _interfaces_for(addresses: list[str], bind: str) -> list[str]:
    """Where to send the advertisement: loopback too for a wildcard bind, for local browsers."""
    if bind in ("", "0.0.0.0", "::"):
        return list(dict.fromkeys([*addresses, *host_ipv4_addresses()]))
    return addresses


def browse_interfaces() -> list[str] | InterfaceChoice:
    configured = os.environ.get("FARM_MDNS_INTERFACES", "").strip()
    if not configured:
        return InterfaceChoice.All
    addresses = [part.strip() for part in configured.split(",") if part.strip()]
    for address in addresses:
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise FarmError(f"FARM_MDNS_INTERFACES: {address!r} is not an IPv4 address") from None
    return addresses


def instance_name(name: str) -> str:
    """An mDNS instance label for a farm name: no dots, at most 63 bytes."""
    label = re.sub(r"[.\x00-\x1f]", "-", name).strip() or "farm"
    return label.encode()[:63].decode(errors="ignore")


# ---- the server's side ----------------------------------------------------------------------


class Advertiser:
    """The server's zeroconf registration, inside the server's event loop."""

    def __init__(
        self, name: str, bind: str, port: int, *, tls: bool, version: str, farm_id: str
    ) -> None:
        self.name = name
        self.port = port
        self.addresses = advertised_addresses(bind)
        self.interfaces = _interfaces_for(self.addresses, bind)
        self.properties = {
            "name": name,
            "version": version,
            "api": str(protocol.API_VERSION),
            "tls": "1" if tls else "0",
            "id": farm_id,
        }
        self._zeroconf: AsyncZeroconf | None = None
        self.info: AsyncServiceInfo | None = None

    async def start(self) -> None:
        if not self.addresses:
            log.warning("discovery: no IPv4 address to advertise; workers need --host")
            return
        self._zeroconf = AsyncZeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        self.info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{instance_name(self.name)}.{SERVICE_TYPE}",
            port=self.port,
            properties=self.properties,
            server=f"{instance_name(socket.gethostname())}.local.",
            parsed_addresses=self.addresses,
        )
        # Registration probes the LAN for about 1.2 s; the server answers meanwhile.
        await self._zeroconf.async_register_service(self.info, allow_name_change=True)
        log.info(
            "discovery: advertising %r as %s on %s port %d",
            self.name,
            self.info.name,
            ", ".join(self.addresses),
            self.port,
        )

    async def close(self) -> None:
        if self._zeroconf is not None:
            await self._zeroconf.async_unregister_all_services()
            await self._zeroconf.async_close()
            self._zeroconf = None


# ---- the client's and worker's side ---------------------------------------------------------


def _found(info: ServiceInfo) -> FoundFarm | None:
    addresses = tuple(info.parsed_addresses(IPVersion.V4Only))
    if not addresses or not info.port:
        return None
    properties = {
        (key or b"").decode(errors="replace"): (value or b"").decode(errors="replace")
        for key, value in info.properties.items()
    }
    name = properties.get("name") or info.name.removesuffix("." + SERVICE_TYPE)
    return FoundFarm(
        name=name,
        host=addresses[0],
        port=int(info.port),
        addresses=addresses,
        version=properties.get("version", ""),
        api=properties.get("api", ""),
        tls=properties.get("tls") == "1",
        server=info.server or "",
        farm_id=properties.get("id", ""),
    )


def browse(
    timeout: float = DEFAULT_TIMEOUT, *, wanted: str | None = None, farm_id: str | None = None
) -> list[FoundFarm]:
    """Listen for farms for up to ``timeout`` seconds.

    Returns as soon as the farm named ``wanted`` whose id is ``farm_id`` answers (either
    may be missing, not both); with neither it listens the whole time, as ``farm discover``
    does.
    """
    names: queue.Queue[str] = queue.Queue()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is not ServiceStateChange.Removed:
            names.put(name)

    zeroconf = Zeroconf(interfaces=browse_interfaces(), ip_version=IPVersion.V4Only)
    farms: dict[str, FoundFarm] = {}
    try:
        # Multicast answers only (QM): a unicast answer reaches just one of the programs
        # bound to UDP 5353 on this host (RFC 6762, 15.1), often the server or a worker
        # rather than us, and the next query comes a second later.
        browser = ServiceBrowser(
            zeroconf, SERVICE_TYPE, handlers=[on_change], question_type=DNSQuestionType.QM
        )
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                name = names.get(timeout=remaining)
            except queue.Empty:
                break
            wait = max(0.1, deadline - time.monotonic())
            info = zeroconf.get_service_info(
                SERVICE_TYPE, name, timeout=int(wait * 1000), question_type=DNSQuestionType.QM
            )
            farm = _found(info) if info is not None else None
            if farm is None:
                continue
            farms[name] = farm
            if (wanted is None or farm.name == wanted) and (
                (farm_id and farm.farm_id == farm_id) or (wanted is not None and not farm_id)
            ):
                break
        browser.cancel()
    finally:
        zeroconf.close()
    return sorted(farms.values(), key=lambda farm: (farm.name, farm.host, farm.port))


def find_farm(
    wanted: str | None = None, timeout: float | None = None, *, farm_id: str | None = None
) -> FoundFarm:
    """The farm to talk to: the one named ``wanted``, else the one whose id is ``farm_id``
    (the farm whose secret we hold), else the only one that answers."""
    if timeout is None:
        timeout = discovery_timeout()
    farms = browse(timeout, wanted=wanted, farm_id=farm_id)
    if wanted is not None:
        matching = [farm for farm in farms if farm.name == wanted]
        if not matching:
            heard = ", ".join(sorted({farm.name for farm in farms})) or "none"
            raise NoFarmFound(
                f"no farm named {wanted!r} answered on the LAN within {timeout:g}s "
                f"(heard: {heard}); give --host, or check the name with `farm discover`"
            )
        # A name is anyone's to advertise: the farm must also use our secret.
        ours = [farm for farm in matching if not farm_id or farm.farm_id == farm_id]
        if not ours:
            raise NoFarmFound(
                f"a farm named {wanted!r} answers but does not use this root's farm secret: "
                "check --root (or --token), or give --host"
            )
        return ours[0]
    if not farms:
        raise NoFarmFound(
            f"no farm server answered on the LAN within {timeout:g}s: start `farm server`, "
            "or give its address with --host (FARM_HOST)"
        )
    if farm_id:
        ours = [farm for farm in farms if farm.farm_id == farm_id]
        if len(ours) == 1:
            return ours[0]
        names = ", ".join(sorted({farm.name for farm in farms}))
        if not ours:
            raise NoFarmFound(
                f"farms answer ({names}) but none uses this root's farm secret: check --root "
                "(or --token), or choose one with --farm NAME"
            )
        where = ", ".join(f"{farm.name} at {farm.host}:{farm.port}" for farm in ours)
        raise NoFarmFound(f"several servers share this farm secret ({where}): give --host")
    names = ", ".join(sorted({farm.name for farm in farms}))
    if len(farms) > 1:
        raise NoFarmFound(f"several farms answer ({names}): choose one with --farm NAME")
    return farms[0]


def discovery_timeout() -> float:
    text = os.environ.get("FARM_DISCOVERY_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise FarmError(f"FARM_DISCOVERY_TIMEOUT: {text!r} is not a number of seconds") from None
    if not value > 0:
        raise FarmError("FARM_DISCOVERY_TIMEOUT must be more than 0 seconds")
    return value


# ---- through the root -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RootRecord:
    """What the root's record says, and whether it leads to this root's farm."""

    path: Path
    #: ``None``: the file is there but is no record.
    record: ServerRecord | None
    #: The server it led to (it answered with our secret); ``None`` when it did not.
    farm: FoundFarm | None
    #: Why it does not lead to the farm ("" when it does, or when it was not asked).
    problem: str
    #: Not stopped, and beating by :func:`buildcat.farmrecord.is_fresh`.
    fresh: bool

    def note(self) -> str:
        return f"the root's record {self.path} {self.problem}"

    def as_dict(self) -> dict[str, Any]:
        record = self.record
        found = self.farm
        if found is not None:
            entry = found.as_dict()
        elif record is not None:
            first = record.addresses[0] if record.addresses else ""
            entry = FoundFarm(
                name=record.farm, host=first, port=record.port,
                addresses=tuple(record.addresses), version=record.buildcat,
                api=str(record.api or ""), tls=record.scheme == "https", server=record.host,
                farm_id=record.farm_id, via="root",
            ).as_dict()  # fmt: skip
        else:
            entry = {"via": "root"}
        entry.update(
            record=str(self.path),
            fresh=self.fresh,
            answers=found is not None,
            problem=self.problem or None,
        )
        if record is not None:
            entry.update(pid=record.pid, started_at=record.started_at, beat_at=record.beat_at,
                         stopped=record.stopped)  # fmt: skip
        return entry


def check_root_record(
    root: str | os.PathLike[str],
    token: str | None,
    *,
    wanted: str | None = None,
    tls_ca: Path | None = None,
) -> RootRecord | None:
    """Read the root's record and, when it is fresh and names our farm, ping its
    addresses with the secret. ``None`` when the root holds no record (or this host cannot
    read it). With no ``token`` the record is only read, not tried."""
    path = record_path(root)
    try:
        record = read_record(root)
    except FarmError as exc:
        return RootRecord(path, None, None, str(exc).removeprefix(f"{path} "), fresh=False)
    if record is None:
        return None
    stale = record.problem(time.time())
    fresh = not stale

    def verdict(problem: str, farm: FoundFarm | None = None) -> RootRecord:
        return RootRecord(path, record, farm, problem, fresh)

    if token is None:
        return verdict(stale)
    if record.farm_id != auth.farm_id(token):
        return verdict(
            f"names farm {record.farm!r}, which uses another farm secret than this root's "
            "(check --root or --token): not trusted"
        )
    if wanted is not None and record.farm != wanted:
        return verdict(f"names farm {record.farm!r}, not {wanted!r}")
    if stale:
        return verdict(f"{stale}: not trusted")
    # Loopback in another host's record is this host, not that server.
    local = record.host == socket.gethostname()
    addresses = [a for a in record.addresses if local or not _is_loopback(a)]
    if not addresses:
        return verdict(f"lists only loopback addresses of {record.host}")
    where = f"{addresses[0]}:{record.port}"
    transport = auth.choose_transport(
        root, tls=record.scheme == "https", plain_asked=False, where=where
    )
    context = auth.client_ssl_context(tls_ca) if transport.tls else None
    # Every address at once: one that does not route costs its timeout, not everyone's.
    answers: queue.Queue[tuple[str, str | None]] = queue.Queue()

    def probe(address: str) -> None:
        try:
            trouble = _probe(address, record.port, token, transport, context)
        except Exception as exc:  # whatever happens, the waiting member hears of it
            trouble = f"could not be asked ({exc})"
        answers.put((address, trouble))

    for address in addresses:
        threading.Thread(target=probe, args=(address,), name="farm-probe", daemon=True).start()
    failures: dict[str, str] = {}
    for _ in addresses:
        address, trouble = answers.get()
        if trouble is None:
            found = FoundFarm(
                name=record.farm, host=address, port=record.port,
                addresses=tuple(record.addresses), version=record.buildcat,
                api=str(record.api or ""), tls=transport.tls, server=record.host,
                farm_id=record.farm_id, via="root",
            )  # fmt: skip
            return verdict("", found)
        failures[address] = f"{address}:{record.port} {trouble}"
    told = "; ".join(failures[address] for address in addresses)
    return verdict(f"names {record.describe()}, but {told}")


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def _probe(
    address: str,
    port: int,
    token: str,
    transport: auth.Transport,
    context: ssl.SSLContext | None,
) -> str | None:
    """Ping ``address`` with the secret: ``None`` when it answers as our farm, else why not."""
    connection: http.client.HTTPConnection
    if context is not None:
        connection = auth.PinnedHTTPSConnection(
            address, port, timeout=PROBE_TIMEOUT, context=context, transport=transport
        )
    else:
        connection = http.client.HTTPConnection(address, port, timeout=PROBE_TIMEOUT)
    headers = {"Accept": protocol.JSON, "Authorization": auth.authorization(token)}
    try:
        connection.request("GET", protocol.API_PREFIX + "/ping", headers=headers)
        response = connection.getresponse()
        body = response.read(1 << 16)
    except auth.WrongCertificate:
        return "shows a TLS certificate that is not this farm's"
    except ssl.SSLCertVerificationError:
        # It is there and speaks TLS; the request that follows says what to trust.
        return None
    except ssl.SSLError as exc:
        return f"fails TLS ({exc.reason or exc})"
    except (OSError, http.client.HTTPException) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"does not answer ({reason or type(exc).__name__})"
    finally:
        connection.close()
    if response.status == 401:
        return "refused this root's farm secret"
    try:
        reply = json.loads(body)
    except ValueError:
        reply = None
    if response.status != 200 or not isinstance(reply, dict) or "api" not in reply:
        return f"did not answer like a farm server (HTTP {response.status})"
    return None


def locate(
    root: str | os.PathLike[str],
    token: str,
    wanted: str | None = None,
    timeout: float | None = None,
    *,
    tls_ca: Path | None = None,
) -> FoundFarm:
    """The farm to talk to, for a member given no address: through the root's record when
    it leads to our farm, else on the LAN (:func:`find_farm`); the error then says what
    was wrong with the record too."""
    checked = check_root_record(root, token, wanted=wanted, tls_ca=tls_ca)
    if checked is not None and checked.farm is not None:
        return checked.farm
    try:
        return find_farm(wanted, timeout, farm_id=auth.farm_id(token))
    except NoFarmFound as exc:
        if checked is None:
            raise
        raise NoFarmFound(f"{exc}; {checked.note()}") from None
