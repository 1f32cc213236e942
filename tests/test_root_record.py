"""Finding the farm through the root: ``<root>/.buildcat/server.json``.

The server writes where it listens into the root, beside the secret, and keeps it fresh;
members with no --host read it before they listen for zeroconf. Every server here is
started with ``--no-discovery`` unless a test says otherwise, and every client browses
on 127.0.0.1 only, so nothing but the root can lead a client to the server.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import buildcat
from buildcat import auth, discovery, launch
from tests.conftest import Farm, unused_port, wait_for

HERE = Path(__file__).parent
LOOPBACK_ONLY = {"FARM_MDNS_INTERFACES": "127.0.0.1", "FARM_DISCOVERY_TIMEOUT": "1"}
RECORD_KEYS = {
    "version", "farm", "farm_id", "addresses", "port", "scheme", "tls_fingerprint", "host",
    "pid", "boot_id", "started_at", "beat_at", "stopped",
}  # fmt: skip


@pytest.fixture(autouse=True)
def no_address_given(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in LOOPBACK_ONLY.items():
        monkeypatch.setenv(key, value)
    for key in ("FARM_HOST", "FARM_PORT", "FARM_NAME", "FARM_TOKEN", "FARM_TLS_CA"):
        monkeypatch.delenv(key, raising=False)


def record_file(root: Path) -> Path:
    return root / ".buildcat" / "server.json"


def read_record(root: Path) -> dict[str, object]:
    value: dict[str, object] = json.loads(record_file(root).read_text())
    return value


def make_farm(tmp_path: Path, name: str, *extra: str, discovery: bool = False) -> Farm:
    root = tmp_path / name / "root"
    root.mkdir(parents=True)
    (root / "farm_jobs.py").write_text((HERE / "farm_jobs.py").read_text())
    farm = Farm(root=root, logs=tmp_path / name / "logs", config_name=name)
    farm.start_server("--name", name, *extra, discovery=discovery)
    return farm


@pytest.fixture
def farms() -> Iterator[list[Farm]]:
    made: list[Farm] = []
    yield made
    for farm in made:
        farm.stop()


def unique(label: str) -> str:
    return f"{label}-{secrets.token_hex(3)}"


def farm_cli(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``farm ARGS`` told nothing but the root: no FARM_HOST, no FARM_PORT."""
    return subprocess.run(
        [sys.executable, "-m", "buildcat", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **LOOPBACK_ONLY, "BUILDCAT_ROOT": str(root), **env},
    )


def worker_without_host(farm: Farm, name: str, *extra: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        launch.farm_command(
            "worker", "--root", str(farm.root), "--name", name, "--no-blender",
            "--log-level", "debug", *extra,
        ),
        stdout=farm._log(name),
        stderr=subprocess.STDOUT,
        env={**os.environ, **LOOPBACK_ONLY},
    )  # fmt: skip
    farm.workers.append(process)
    return process


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("farm: error: "), result.stderr
    return lines[0]


# ---- what the server writes -------------------------------------------------------------------


def test_the_record_says_where_the_server_is_and_holds_no_secret(
    tmp_path: Path, farms: list[Farm]
) -> None:
    name = unique("rec")
    farm = make_farm(tmp_path, name)
    farms.append(farm)
    path = record_file(farm.root)
    record = read_record(farm.root)
    assert set(record) >= RECORD_KEYS, sorted(record)
    secret = (farm.root / ".buildcat" / "secret").read_text().strip()
    assert record["version"] == 1
    assert record["farm"] == name
    assert record["farm_id"] == auth.farm_id(secret)
    assert record["addresses"] == ["127.0.0.1"]
    assert record["port"] == farm.port
    assert record["scheme"] == "http" and record["tls_fingerprint"] is None
    assert record["host"] == socket.gethostname()
    assert farm.server is not None and record["pid"] == farm.server.pid
    assert record["stopped"] is False
    assert isinstance(record["started_at"], float) and isinstance(record["beat_at"], float)
    # Readable by every member (it holds no secret), written whole, never the secret in it.
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert secret not in path.read_text()
    lock = (farm.root / ".buildcat" / "server.lock").read_text()
    claim = json.loads(lock)["claim"]
    assert claim and claim not in path.read_text()
    # It beats while the server runs.
    first = record["beat_at"]
    wait_for(lambda: read_record(farm.root)["beat_at"] != first, timeout=30)
    # A clean stop says so.
    assert farm.server is not None
    launch.stop(farm.server)
    stopped = read_record(farm.root)
    assert stopped["stopped"] is True and stopped["pid"] == record["pid"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_tls_farm_records_its_scheme_and_certificate(tmp_path: Path) -> None:
    from tests.test_security import start_tls_farm

    farm, ca, _ = start_tls_farm(tmp_path)
    try:
        record = read_record(farm.root)
        assert record["scheme"] == "https"
        assert (
            record["tls_fingerprint"]
            == json.loads((farm.root / ".buildcat" / "tls.json").read_text())["sha256"]
        )
        # A member that trusts the CA finds the farm through the root, over TLS.
        with buildcat.connect(root=farm.root, tls_ca=ca) as client:
            assert client.address == f"https://127.0.0.1:{farm.port}"
            assert client.jobs() == []
    finally:
        farm.stop()


# ---- members that find the server through it --------------------------------------------------


def test_a_client_and_a_worker_with_no_host_and_no_advert_find_the_server(
    tmp_path: Path, farms: list[Farm]
) -> None:
    farm = make_farm(tmp_path, unique("root-only"))  # --no-discovery: nothing to hear
    farms.append(farm)
    worker_without_host(farm, "finder")
    with buildcat.connect(root=farm.root) as client:
        assert client.address == f"http://127.0.0.1:{farm.port}"
        job = client.map("farm_jobs:square", [1, 2, 3])
        assert job.results() == [1, 4, 9]
        assert [worker["name"] for worker in client.workers()] == ["finder"]
    assert re.search(r"found farm '.*' at http://127\.0\.0\.1:\d+ through", farm.log_text("finder"))
    listed = farm_cli(farm.root, "status", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["state"] == "done"
    # --farm NAME still selects by name: the record's farm is the one named.
    named = farm_cli(farm.root, "workers", "--json", FARM_NAME=farm.config_name)
    assert named.returncode == 0, named.stderr
    other = one_line_error(farm_cli(farm.root, "workers", FARM_NAME="someone-else"))
    assert "no farm named 'someone-else'" in other


def test_a_worker_follows_the_record_to_a_server_restarted_on_another_port(
    tmp_path: Path, farms: list[Farm]
) -> None:
    farm = make_farm(tmp_path, unique("moving"))
    farms.append(farm)
    worker_without_host(farm, "follower")
    farm.wait_workers(1)
    assert farm.server is not None
    old_port = farm.port
    launch.stop(farm.server)
    farm.start_server("--name", farm.config_name, port=unused_port(avoid={old_port}))
    assert farm.port != old_port and read_record(farm.root)["port"] == farm.port
    with buildcat.connect(root=farm.root) as client:
        job = client.map("farm_jobs:square", [6])
        job.wait(timeout=90)
        assert job.results() == [36]
    assert f"at http://127.0.0.1:{farm.port} through the root's record" in farm.log_text("follower")


def test_a_record_whose_server_was_killed_is_not_trusted(tmp_path: Path, farms: list[Farm]) -> None:
    farm = make_farm(tmp_path, unique("killed"))
    farms.append(farm)
    assert farm.server is not None
    farm.server.send_signal(signal.SIGKILL)
    farm.server.wait()
    line = one_line_error(farm_cli(farm.root, "status"))
    assert str(record_file(farm.root)) in line
    assert "does not answer" in line and f"127.0.0.1:{farm.port}" in line


def test_a_record_of_a_stopped_server_is_not_trusted(tmp_path: Path, farms: list[Farm]) -> None:
    farm = make_farm(tmp_path, unique("stopped"))
    farms.append(farm)
    assert farm.server is not None
    launch.stop(farm.server)
    line = one_line_error(farm_cli(farm.root, "status"))
    assert str(record_file(farm.root)) in line and "stopped" in line


def test_a_record_with_an_old_beat_is_not_trusted(tmp_path: Path, farms: list[Farm]) -> None:
    farm = make_farm(tmp_path, unique("old"))
    farms.append(farm)
    assert farm.server is not None
    farm.server.send_signal(signal.SIGKILL)
    farm.server.wait()
    record = read_record(farm.root)
    record["beat_at"] = time.time() - 120
    record_file(farm.root).write_text(json.dumps(record))
    line = one_line_error(farm_cli(farm.root, "status"))
    assert str(record_file(farm.root)) in line
    assert re.search(r"last beat 1[12]\d s ago", line), line


def test_a_record_whose_addresses_do_not_answer_falls_back_to_zeroconf(
    tmp_path: Path, farms: list[Farm], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FARM_DISCOVERY_TIMEOUT", "20")  # it returns once the farm answers
    farm = make_farm(tmp_path, unique("moved"), discovery=True)
    farms.append(farm)
    wait_for(lambda: discovery.browse(3, wanted=farm.config_name), timeout=60)
    # A fresh record naming a server (another one, on a port nobody listens on) that is
    # not there: the running server leaves a newer record than its own alone.
    record = read_record(farm.root)
    record.update(pid=1, port=unused_port(avoid={farm.port}), beat_at=time.time())
    record_file(farm.root).write_text(json.dumps(record))
    with buildcat.connect(root=farm.root) as client:
        assert client.address == f"http://127.0.0.1:{farm.port}"
        assert client.jobs() == []


def test_a_record_from_a_farm_with_another_secret_is_not_trusted(
    tmp_path: Path, farms: list[Farm]
) -> None:
    ours, theirs = make_farm(tmp_path, unique("ours")), make_farm(tmp_path, unique("theirs"))
    farms += [ours, theirs]
    assert ours.server is not None
    launch.stop(ours.server)
    # Their record in our root: its farm id is not our secret's, so it is not even asked.
    record_file(ours.root).write_text(record_file(theirs.root).read_text())
    line = one_line_error(farm_cli(ours.root, "status"))
    assert str(record_file(ours.root)) in line and "another farm secret" in line
    # A record that claims our farm id but leads to their server: it refuses our secret.
    forged = read_record(theirs.root)
    forged["farm_id"] = auth.farm_id((ours.root / ".buildcat" / "secret").read_text().strip())
    record_file(ours.root).write_text(json.dumps(forged))
    line = one_line_error(farm_cli(ours.root, "status"))
    assert str(record_file(ours.root)) in line and "refused this root's farm secret" in line


# ---- farm discover ------------------------------------------------------------------------------


def test_discover_shows_the_roots_record_fresh_and_stale(tmp_path: Path, farms: list[Farm]) -> None:
    farm = make_farm(tmp_path, unique("shown"))
    farms.append(farm)
    shown = farm_cli(farm.root, "discover", "--timeout", "0.5")
    assert shown.returncode == 0, shown.stderr
    assert str(record_file(farm.root)) in shown.stdout
    assert f"{farm.config_name}  http://127.0.0.1:{farm.port}" in shown.stdout
    assert "fresh" in shown.stdout and "answers" in shown.stdout
    as_json = farm_cli(farm.root, "discover", "--timeout", "0.5", "--json")
    assert as_json.returncode == 0, as_json.stderr
    (entry,) = [item for item in json.loads(as_json.stdout) if item.get("via") == "root"]
    assert entry["name"] == farm.config_name and entry["port"] == farm.port
    assert entry["fresh"] is True and entry["problem"] is None
    assert entry["record"] == str(record_file(farm.root))

    assert farm.server is not None
    launch.stop(farm.server)
    # (Its exit status says whether any farm answers: others on this loopback may.)
    stale = farm_cli(farm.root, "discover", "--timeout", "0.5")
    assert str(record_file(farm.root)) in stale.stdout and "stale" in stale.stdout
    assert "stopped" in stale.stdout


def test_an_impostor_advertising_the_farm_never_hears_from_members_that_read_the_root(
    tmp_path: Path, farms: list[Farm]
) -> None:
    from tests.test_security import Impostor

    farm = make_farm(tmp_path, unique("real"))
    farms.append(farm)
    secret = (farm.root / ".buildcat" / "secret").read_text().strip()
    impostor = Impostor(farm.config_name, auth.farm_id(secret))
    try:
        worker_without_host(farm, "member")
        status = farm_cli(farm.root, "status", "--json", FARM_DISCOVERY_TIMEOUT="5")
        assert status.returncode == 0, status.stderr
        with buildcat.connect(root=farm.root) as client:
            assert client.address == f"http://127.0.0.1:{farm.port}"
            assert client.map("farm_jobs:square", [5]).results() == [25]
        assert impostor.connections == 0 and impostor.received == []
    finally:
        impostor.close()


def test_a_damaged_record_is_named_and_passed_over(tmp_path: Path) -> None:
    state = tmp_path / ".buildcat"
    state.mkdir()
    (state / "secret").write_text("s" * 43)
    (state / "secret").chmod(0o600)
    record_file(tmp_path).write_text('{"version": 1, "farm": "half a reco')
    line = one_line_error(farm_cli(tmp_path, "status"))
    assert f"the root's record {record_file(tmp_path)} is damaged" in line


# ---- the record's rules, without a server -----------------------------------------------------


def test_freshness_is_the_locks_rule_both_ways() -> None:
    from buildcat import farmrecord
    from buildcat.server import lock

    assert lock.FRESH_SECONDS == farmrecord.FRESH_SECONDS == 10.0
    now = 1_000_000.0
    assert farmrecord.is_fresh(now - 9.9, now) and farmrecord.is_fresh(now + 9.9, now)
    assert not farmrecord.is_fresh(now - 10.1, now) and not farmrecord.is_fresh(now + 60, now)


def test_a_wildcard_bind_records_this_hosts_addresses_then_loopback() -> None:
    from buildcat.server.record import reachable_addresses

    assert reachable_addresses("127.0.0.1") == ["127.0.0.1"]
    every = reachable_addresses("0.0.0.0")  # computed, never bound
    assert every[-1] == "127.0.0.1"
    assert every[:-1] == [a for a in discovery.advertised_addresses("0.0.0.0") if a != "127.0.0.1"]


def test_loopback_in_another_hosts_record_is_not_that_server(tmp_path: Path) -> None:
    state = tmp_path / ".buildcat"
    state.mkdir()
    (state / "secret").write_text("s" * 43)
    (state / "secret").chmod(0o600)
    record = {
        "version": 1, "farm": "far", "farm_id": auth.farm_id("s" * 43),
        "addresses": ["127.0.0.1"], "port": 8765, "scheme": "http", "tls_fingerprint": None,
        "host": "another-host", "pid": 7, "boot_id": "", "started_at": time.time(),
        "beat_at": time.time(), "stopped": False,
    }  # fmt: skip
    record_file(tmp_path).write_text(json.dumps(record))
    line = one_line_error(farm_cli(tmp_path, "status"))
    assert "lists only loopback addresses of another-host" in line
    # Records that are not version 1, or miss a key, are named as damaged.
    for broken in ({**record, "version": 2}, {k: v for k, v in record.items() if k != "port"}):
        record_file(tmp_path).write_text(json.dumps(broken))
        assert "is damaged" in one_line_error(farm_cli(tmp_path, "status"))
