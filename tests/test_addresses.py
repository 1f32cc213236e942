"""Pure pieces of joining a farm: farm addresses, advertised addresses, the secret check."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from buildcat import auth, discovery, protocol
from buildcat.errors import AddressError, FarmError


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


def test_advertised_addresses_follow_the_bind_address() -> None:
    assert discovery.advertised_addresses("127.0.0.1") == ["127.0.0.1"]
    assert discovery.advertised_addresses("localhost") == ["127.0.0.1"]
    every = discovery.host_ipv4_addresses()
    assert "127.0.0.1" in every and every[-1].startswith("127.")
    wildcard = discovery.advertised_addresses("0.0.0.0")
    outside = [a for a in every if not a.startswith("127.")]
    assert wildcard == (outside or every)


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
    # The fingerprint is stable, short and not the secret.
    assert auth.farm_id(secret) == auth.farm_id(secret) != auth.farm_id(secret + "y")
    assert len(auth.farm_id(secret)) == 16 and auth.farm_id(secret) not in secret


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
