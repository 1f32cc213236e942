"""Pieces of joining a farm: farm addresses, the secret check, and the addresses a server
advertises, checked inside network namespaces whose interfaces the test sets up."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from buildcat import auth, discovery, protocol
from buildcat.errors import AddressError, FarmError
from tests import netns


@pytest.mark.parametrize(
    ("text", "port", "expected"),
    [
        ("aurora.lan", None, ("aurora.lan", 8765, False)),
        ("aurora.lan", 9000, ("aurora.lan", 9000, False)),
        ("aurora.lan:9100", 9000, ("aurora.lan", 9100, False)),
        ("192.168.1.10:8000", None, ("192.168.1.10", 8000, False)),
        ("http://aurora.lan:8765/", None, ("aurora.lan", 8765, False)),
        ("https://aurora.lan", None, ("aurora.lan", 8765, True)),
        ("HTTPS://10.0.0.1:443", None, ("10.0.0.1", 443, True)),
    ],
)
def test_farm_addresses(text: str, port: int | None, expected: tuple[str, int, bool]) -> None:
    assert protocol.split_address(text, port) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ftp://aurora", "only http:// and https://"),
        ("aurora:http", "is not a port"),
        ("aurora:70000", "is not a port"),
        ("[::1]:8765", "IPv6 is not supported"),
        ("https://", "is not a host name"),
        ("http://aurora/api", "is not a host name"),
    ],
)
def test_bad_farm_addresses_say_why(text: str, reason: str) -> None:
    with pytest.raises(AddressError, match=reason):
        protocol.split_address(text)


#: What a server reports about addresses, run inside a namespace of known interfaces.
REPORT = """
import json
from buildcat import discovery

def advertiser(bind):
    return discovery.Advertiser("x", bind, 1, tls=False, version="", farm_id="").interfaces

print(json.dumps({
    "host": discovery.host_ipv4_addresses(),
    "wildcard": discovery.advertised_addresses("0.0.0.0"),
    "loopback": discovery.advertised_addresses("127.0.0.1"),
    "localhost": discovery.advertised_addresses("localhost"),
    "sent on, wildcard": advertiser("0.0.0.0"),
    "sent on, loopback": advertiser("127.0.0.1"),
}))
"""


def addresses_in(namespace: netns.Namespace) -> dict[str, list[str]]:
    result = namespace.run([sys.executable, "-c", REPORT])
    assert result.returncode == 0, result.stderr
    report: dict[str, list[str]] = json.loads(result.stdout)
    return report


def add_interface(namespace: netns.Namespace, name: str, *addresses: str) -> None:
    """A veth whose peer stays down and unaddressed in the same namespace: one more NIC."""
    namespace.ip("link", "add", name, "type", "veth", "peer", "name", f"{name}-peer")
    for address in addresses:
        namespace.ip("addr", "add", address, "dev", name)
    namespace.ip("link", "set", name, "up")


def test_a_host_with_only_loopback_advertises_loopback() -> None:
    netns.require("the advertised-address test")
    with netns.private_namespace("bc-addr") as namespace:
        assert addresses_in(namespace) == {
            "host": ["127.0.0.1"],
            "wildcard": ["127.0.0.1"],
            "loopback": ["127.0.0.1"],
            "localhost": ["127.0.0.1"],
            "sent on, wildcard": ["127.0.0.1"],
            "sent on, loopback": ["127.0.0.1"],
        }


def test_a_wildcard_server_advertises_its_lan_address_not_loopback() -> None:
    netns.require("the advertised-address test")
    with netns.private_namespace("bc-addr") as namespace:
        add_interface(namespace, "eth0", "10.231.7.2/24")
        assert addresses_in(namespace) == {
            "host": ["10.231.7.2", "127.0.0.1"],
            "wildcard": ["10.231.7.2"],
            "loopback": ["127.0.0.1"],
            "localhost": ["127.0.0.1"],
            # Loopback too, so browsers on the server's own host hear it.
            "sent on, wildcard": ["10.231.7.2", "127.0.0.1"],
            "sent on, loopback": ["127.0.0.1"],
        }
        bound = namespace.run(
            [sys.executable, "-c", "from buildcat import discovery as d; "
             "print(d.advertised_addresses('10.231.7.2'))"]
        )  # fmt: skip
        assert bound.stdout.strip() == "['10.231.7.2']", bound.stderr


def test_a_wildcard_server_on_two_networks_advertises_both() -> None:
    netns.require("the advertised-address test")
    with netns.private_namespace("bc-addr") as namespace:
        add_interface(namespace, "eth0", "10.231.7.2/24")
        add_interface(namespace, "eth1", "10.231.8.2/24", "10.231.8.3/24")
        report = addresses_in(namespace)
        assert report["host"] == ["10.231.7.2", "10.231.8.2", "10.231.8.3", "127.0.0.1"]
        assert report["wildcard"] == ["10.231.7.2", "10.231.8.2", "10.231.8.3"]
        assert report["loopback"] == report["localhost"] == ["127.0.0.1"]


def test_instance_names_are_single_mdns_labels() -> None:
    assert discovery.instance_name("studio") == "studio"
    assert discovery.instance_name("aurora.lan") == "aurora-lan"
    assert len(discovery.instance_name("x" * 100).encode()) == 63
    assert discovery.instance_name("  ") == "farm"


def test_mdns_interfaces_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_MDNS_INTERFACES", "127.0.0.1, 10.0.0.2")
    assert discovery.browse_interfaces() == ["127.0.0.1", "10.0.0.2"]
    monkeypatch.setenv("FARM_MDNS_INTERFACES", "eth0")
    with pytest.raises(FarmError, match="'eth0' is not an IPv4 address"):
        discovery.browse_interfaces()
    monkeypatch.setenv("FARM_DISCOVERY_TIMEOUT", "soon")
    with pytest.raises(FarmError, match="not a number of seconds"):
        discovery.discovery_timeout()


def test_the_secret_check() -> None:
    secret = "s3cret-" + "x" * 40
    assert auth.token_matches(f"Bearer {secret}", secret)
    assert auth.token_matches(f"bearer {secret}", secret)
    assert not auth.token_matches(None, secret)
    assert not auth.token_matches("", secret)
    assert not auth.token_matches(f"Basic {secret}", secret)
    assert not auth.token_matches(f"Bearer {secret}x", secret)
    assert not auth.token_matches(secret, secret)


def test_the_farm_id_is_a_tagged_sha256_fingerprint_of_the_secret() -> None:
    # Known vectors, computed outside Python with coreutils:
    #   printf 'buildcat farm id\0%s' "$SECRET" | sha256sum | cut -c1-16
    # The tag keeps the advertised id from being a plain sha256 of the secret, which a
    # secret reused elsewhere might already expose.
    vectors = {
        "s3cret-" + "x" * 40: "5e47320b61e57b22",
        "one-studio-secret-for-two-farms-0123456789": "96cf76af583d0177",
    }
    for secret, expected in vectors.items():
        assert auth.farm_id(secret) == expected
        # The id is public, the dashboard key is not: no part of one gives the other.
        assert auth.farm_id(secret) not in auth.dashboard_key(secret)


def test_ensure_secret_creates_once_and_reads_after(tmp_path: Path) -> None:
    first = auth.ensure_secret(tmp_path)
    path = tmp_path / ".buildcat" / "secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.ensure_secret(tmp_path) == first == auth.load_token(tmp_path)
    assert [p.name for p in path.parent.iterdir()] == ["secret"]
    assert auth.load_token(tmp_path, "given-token-0123456789") == "given-token-0123456789"
    path.write_text("short\n")
    with pytest.raises(FarmError, match="at least 16"):
        auth.load_token(tmp_path)
