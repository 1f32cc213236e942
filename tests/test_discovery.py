"""Zeroconf discovery on this machine's loopback: workers and clients with no --host.

Every process here browses and advertises on 127.0.0.1 only (FARM_MDNS_INTERFACES and a
server bound to 127.0.0.1), so no mDNS leaves the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import buildcat
from buildcat import discovery, launch
from tests.conftest import Farm, wait_for

HERE = Path(__file__).parent
LOOPBACK_ONLY = {"FARM_MDNS_INTERFACES": "127.0.0.1"}


@pytest.fixture(autouse=True)
def loopback_mdns(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in LOOPBACK_ONLY.items():
        monkeypatch.setenv(key, value)
    for key in ("FARM_HOST", "FARM_PORT", "FARM_NAME", "FARM_TOKEN"):
        monkeypatch.delenv(key, raising=False)


def make_farm(tmp_path: Path, name: str, *extra: str) -> Farm:
    root = tmp_path / name / "root"
    root.mkdir(parents=True)
    (root / "farm_jobs.py").write_text((HERE / "farm_jobs.py").read_text())
    farm = Farm(root=root, logs=tmp_path / name / "logs", config_name=name)
    farm.start_server("--name", name, *extra, discovery=True)
    return farm


@pytest.fixture
def farms(tmp_path: Path) -> Iterator[list[Farm]]:
    made: list[Farm] = []
    yield made
    for farm in made:
        farm.stop()


def discovering_worker(farm: Farm, name: str, *extra: str) -> subprocess.Popen[bytes]:
    """A worker told nothing but its root (and maybe --farm): it must find the server."""
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


def farm_cli(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buildcat", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **LOOPBACK_ONLY, "BUILDCAT_ROOT": str(root), **env},
    )


def test_a_worker_and_a_client_with_no_host_find_the_farm(
    tmp_path: Path, farms: list[Farm]
) -> None:
    farm = make_farm(tmp_path, "alpha")
    farms.append(farm)
    discovering_worker(farm, "finder")
    with buildcat.connect(root=farm.root) as client:
        job = client.map("farm_jobs:square", [1, 2, 3, 4])
        assert client.address == f"http://127.0.0.1:{farm.port}"
        assert job.results() == [1, 4, 9, 16]
        assert [worker["name"] for worker in client.workers()] == ["finder"]
    found = farm_cli(farm.root, "status", "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["state"] == "done"
    assert "found farm 'alpha'" in farm.log_text("finder")


def both_heard(first: Farm, second: Farm) -> list[discovery.FoundFarm]:
    def heard() -> list[discovery.FoundFarm] | None:
        found = discovery.browse(3)
        return found if len(found) == 2 else None

    listed: list[discovery.FoundFarm] = wait_for(heard)
    assert [(farm.name, farm.port) for farm in listed] == [
        (first.config_name, first.port),
        (second.config_name, second.port),
    ]
    return listed


def test_each_root_finds_its_own_farm_among_several(tmp_path: Path, farms: list[Farm]) -> None:
    alpha, beta = make_farm(tmp_path, "alpha"), make_farm(tmp_path, "beta")
    farms += [alpha, beta]
    listed = both_heard(alpha, beta)
    assert all(farm.version == buildcat.__version__ and farm.api == "1" for farm in listed)
    # The advertised id is a fingerprint of the secret, never the secret itself.
    secrets = {(farm.root / ".buildcat" / "secret").read_text().strip() for farm in farms}
    assert all(farm.farm_id and farm.farm_id not in secrets for farm in listed)

    discovering_worker(beta, "beta-worker")
    job = farm_cli(beta.root, "submit", "python", "farm_jobs:square", "7", "--wait", "--json")
    assert job.returncode == 0, job.stderr
    assert alpha.client().jobs() == []
    assert [j["id"] for j in beta.client().jobs()] == [json.loads(job.stdout)["id"]]

    stranger = farm_cli(tmp_path, "status", FARM_TOKEN="s" * 43)
    assert stranger.returncode == 1
    assert stranger.stderr.strip() == (
        "farm: error: farms answer (alpha, beta) but none uses this root's farm secret: "
        "check --root (or --token), or choose one with --farm NAME"
    )
    listing = farm_cli(alpha.root, "discover", "--timeout", "2")
    assert listing.returncode == 0
    assert f"alpha  http://127.0.0.1:{alpha.port}" in listing.stdout
    assert f"beta  http://127.0.0.1:{beta.port}" in listing.stdout


def test_farm_picks_one_of_two_farms_sharing_a_secret(tmp_path: Path, farms: list[Farm]) -> None:
    token = "one-studio-secret-for-two-farms-0123456789"
    main = make_farm(tmp_path, "main", "--token", token)
    lookdev = make_farm(tmp_path, "lookdev", "--token", token)
    farms += [main, lookdev]
    both_heard(lookdev, main)

    discovering_worker(lookdev, "lookdev-worker", "--farm", "lookdev", "--token", token)
    job = farm_cli(lookdev.root, "submit", "python", "farm_jobs:square", "7", "--wait",
                   FARM_NAME="lookdev", FARM_TOKEN=token)  # fmt: skip
    assert job.returncode == 0, job.stderr
    with buildcat.connect("127.0.0.1", main.port, main.root, token=token) as client:
        assert client.jobs() == []
    with buildcat.connect(root=lookdev.root, token=token, farm="lookdev") as client:
        assert client.address == f"http://127.0.0.1:{lookdev.port}"
        assert len(client.jobs()) == 1


def test_no_farm_is_a_clear_error_within_the_timeout(tmp_path: Path) -> None:
    (tmp_path / ".buildcat").mkdir()
    (tmp_path / ".buildcat" / "secret").write_text("s" * 43)
    (tmp_path / ".buildcat" / "secret").chmod(0o600)
    started = time.monotonic()
    result = farm_cli(tmp_path, "status", FARM_DISCOVERY_TIMEOUT="1")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "farm: error: no farm server answered on the LAN within 1s: start `farm server`, "
        "or give its address with --host (FARM_HOST)"
    )
    assert elapsed < 10
    worker = subprocess.run(
        launch.farm_command("worker", "--root", str(tmp_path), "--farm", "nowhere"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **LOOPBACK_ONLY, "FARM_DISCOVERY_TIMEOUT": "1"},
    )
    assert worker.returncode == 1
    assert "no farm named 'nowhere' answered on the LAN within 1s" in worker.stderr
    assert "Traceback" not in worker.stderr
    nothing = farm_cli(tmp_path, "discover", "--timeout", "0.5")
    assert nothing.returncode == 1 and "no farm answered" in nothing.stderr


def test_a_discovering_worker_follows_its_server_to_a_new_port(
    tmp_path: Path, farms: list[Farm]
) -> None:
    farm = make_farm(tmp_path, "moving")
    farms.append(farm)
    discovering_worker(farm, "follower")
    client = farm.client()
    assert client.map("farm_jobs:square", [2]).results() == [4]
    old_port = farm.port
    launch.stop(farm.server)  # type: ignore[arg-type]
    farm.start_server("--name", "moving", discovery=True)
    assert farm.port != old_port
    with buildcat.connect("127.0.0.1", farm.port, farm.root) as moved:
        assert moved.map("farm_jobs:square", [3]).results() == [9]
    assert "found farm 'moving'" in farm.log_text("follower")


def test_server_without_discovery_is_not_heard(tmp_path: Path, farms: list[Farm]) -> None:
    root = tmp_path / "quiet"
    root.mkdir()
    farm = Farm(root=root, logs=tmp_path / "logs")
    farm.start_server("--name", "quiet")
    farms.append(farm)
    assert [found.name for found in discovery.browse(2)] == []
