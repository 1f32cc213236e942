"""Finding the farm on the LAN: the server advertises ``_buildcat._tcp.local.`` with zeroconf.

IPv4 only. A server advertises on the addresses it is bound to (every IPv4 address of
the host for ``0.0.0.0``); clients and workers browse on every IPv4 interface, or on
the addresses in ``FARM_MDNS_INTERFACES`` (comma-separated) when that is set.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import re
import socket
import time
from dataclasses import dataclass
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

from buildcat import protocol
from buildcat.errors import FarmError

log = logging.getLogger(__name__)

SERVICE_TYPE = "_buildcat._tcp.local."
#: How long a client or worker given no --host listens for a farm.
DEFAULT_TIMEOUT = 5.0


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
