"""Zeroconf discovery on this machine's loopback: workers and clients with no --host.

Every process here browses and advertises on 127.0.0.1 only (FARM_MDNS_INTERFACES and a
server bound to 127.0.0.1), so no mDNS leaves the machine. Other farms may advertise on
the same loopback (the README's tutorial leaves one running, other test runs start theirs),
so every farm here has a name no other has and the tests count only the farms they
started; where a test needs a LAN with no farm on it, it makes one in a network namespace.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import buildcat
from buildcat import discovery, launch
from tests import netns
from tests.conftest import Farm, wait_for

HERE = Path(__file__).parent
LOOPBACK_ONLY = {"FARM_MDNS_INTERFACES": "127.0.0.1"}


@pytest.fixture(autouse=True)
def loopback_mdns(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in LOOPBACK_ONLY.items():
        monkeypatch.setenv(key, value)
    for key in ("FARM_HOST", "FARM_PORT", "FARM_NAME", "FARM_TOKEN"):
        monkeypatch.delenv(key, raising=False)


def unique(label: str) -> str:
    """A farm name no other farm on this machine uses."""
    return f"{label}-{secrets.token_hex(3)}"


def make_farm(tmp_path: Path, name: str, *extra: str) -> Farm:
    root = tmp_path / name / "root"
    root.mkdir(parents=True)
    (root / "farm_jobs.py").write_text((HERE / "farm_jobs.py").read_text())
    farm = Farm(root=root, logs=tmp_path / name / "logs", config_name=name)
    farm.start_server("--name", name, *extra, discovery=True)
    # The server advertises only after it listens (zeroconf probes for about a second):
    # wait until it answers, so what a test starts next finds it however busy the machine.
    try:
        wait_for(lambda: name in {found.name for found in discovery.browse(3, wanted=name)}, 60)
    except BaseException:
        farm.stop()
        raise
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
    farm = make_farm(tmp_path, unique("alpha"))
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
    assert f"found farm '{farm.config_name}'" in farm.log_text("finder")


def heard(*farms: Farm) -> list[discovery.FoundFarm]:
    """Browse until every one of ``farms`` answers in one listen; only those are returned."""
    names = {farm.config_name for farm in farms}

    def all_heard() -> list[discovery.FoundFarm] | None:
        found = [farm for farm in discovery.browse(3) if farm.name in names]
        return found if {farm.name for farm in found} == names else None

    listed: list[discovery.FoundFarm] = wait_for(all_heard, timeout=60)
    return listed


def test_each_root_finds_its_own_farm_among_several(tmp_path: Path, farms: list[Farm]) -> None:
    alpha, beta = make_farm(tmp_path, unique("alpha")), make_farm(tmp_path, unique("beta"))
    farms += [alpha, beta]
    listed = heard(alpha, beta)
    assert [(farm.name, farm.port) for farm in listed] == [
        (alpha.config_name, alpha.port),
        (beta.config_name, beta.port),
    ]
    assert all(farm.version == buildcat.__version__ and farm.api == "1" for farm in listed)
    # The advertised id is a fingerprint of the secret, never the secret itself.
    secrets_here = {(farm.root / ".buildcat" / "secret").read_text().strip() for farm in farms}
    assert all(farm.farm_id and farm.farm_id not in secrets_here for farm in listed)

    discovering_worker(beta, "beta-worker")
    job = farm_cli(beta.root, "submit", "python", "farm_jobs:square", "7", "--wait", "--json")
    assert job.returncode == 0, job.stderr
    assert alpha.client().jobs() == []
    assert [j["id"] for j in beta.client().jobs()] == [json.loads(job.stdout)["id"]]

    # A root whose secret no farm uses is told so, with the farms that did answer (any
    # other farm on this machine among them).
    outsider = farm_cli(tmp_path, "status", FARM_TOKEN="s" * 43)
    assert outsider.returncode == 1
    refused = re.fullmatch(
        r"farm: error: farms answer \((.+)\) but none uses this root's farm secret: "
        r"check --root \(or --token\), or choose one with --farm NAME",
        outsider.stderr.strip(),
    )
    assert refused is not None, outsider.stderr
    assert {alpha.config_name, beta.config_name} <= set(refused[1].split(", "))

    expected = [f"{farm.config_name}  http://127.0.0.1:{farm.port}" for farm in (alpha, beta)]

    def both_listed() -> bool:
        listing = farm_cli(alpha.root, "discover", "--timeout", "2")
        assert listing.returncode == 0, listing.stderr
        return all(line in listing.stdout for line in expected)

    wait_for(both_listed, timeout=60)


def test_farm_picks_one_of_two_farms_sharing_a_secret(tmp_path: Path, farms: list[Farm]) -> None:
    token = "one-studio-secret-for-two-farms-0123456789"
    main = make_farm(tmp_path, unique("main"), "--token", token)
    lookdev = make_farm(tmp_path, unique("lookdev"), "--token", token)
    farms += [main, lookdev]
    listed = heard(lookdev, main)
    # Both advertise the fingerprint of their one secret (the vector in test_addresses).
    assert [farm.farm_id for farm in listed] == ["96cf76af583d0177"] * 2

    name = lookdev.config_name
    discovering_worker(lookdev, "lookdev-worker", "--farm", name, "--token", token)
    job = farm_cli(lookdev.root, "submit", "python", "farm_jobs:square", "7", "--wait",
                   FARM_NAME=name, FARM_TOKEN=token)  # fmt: skip
    assert job.returncode == 0, job.stderr
    with buildcat.connect("127.0.0.1", main.port, main.root, token=token) as client:
        assert client.jobs() == []
    with buildcat.connect(root=lookdev.root, token=token, farm=name) as client:
        assert client.address == f"http://127.0.0.1:{lookdev.port}"
        assert len(client.jobs()) == 1


def test_no_farm_is_a_clear_error_within_the_timeout(tmp_path: Path) -> None:
    # A LAN with no farm on it: a namespace of our own, where no other farm can answer.
    netns.require("the no-farm test")
    (tmp_path / ".buildcat").mkdir()
    (tmp_path / ".buildcat" / "secret").write_text("s" * 43)
    (tmp_path / ".buildcat" / "secret").chmod(0o600)
    env = {
        **os.environ,
        **LOOPBACK_ONLY,
        "BUILDCAT_ROOT": str(tmp_path),
        "FARM_DISCOVERY_TIMEOUT": "1",
    }
    with netns.private_namespace("bc-nofarm") as lan:
        started = time.monotonic()
        result = lan.run(launch.farm_command("status"), env=env)
        elapsed = time.monotonic() - started
        assert result.returncode == 1
        assert result.stderr.strip() == (
            "farm: error: no farm server answered on the LAN within 1s: start `farm server`, "
            "or give its address with --host (FARM_HOST)"
        )
        # It listened for the second it was given, and gave up (lan.run's deadline is 60 s).
        assert elapsed >= 1.0
        worker = lan.run(
            launch.farm_command("worker", "--root", str(tmp_path), "--farm", "nowhere"), env=env
        )
        assert worker.returncode == 1
        assert worker.stderr.strip().splitlines()[-1] == (
            "farm: error: no farm named 'nowhere' answered on the LAN within 1s (heard: none); "
            "give --host, or check the name with `farm discover`"
        )
        assert "Traceback" not in worker.stderr
        nothing = lan.run(launch.farm_command("discover", "--timeout", "0.5"), env=env)
        assert nothing.returncode == 1
        assert nothing.stderr.strip() == "farm: error: no farm answered within 0.5s"

        # The control: on this same LAN a farm that does advertise is found, so the errors
        # above mean "no farm", not "mDNS does not work in here".
        with launch.free_log(tmp_path / "logs" / "server.log") as log:
            server, _ = launch.start_server(
                tmp_path, "--name", "here", wrap=lan.wrap, env=env, log=log
            )
            try:
                # The server advertises after it listens (probing takes about a second):
                # a generous timeout, which ends as soon as the farm answers.
                patient = {**env, "FARM_DISCOVERY_TIMEOUT": "30"}
                found = lan.run(launch.farm_command("status", "--json"), env=patient)
                assert found.returncode == 0, found.stderr
                assert json.loads(found.stdout) == []
            finally:
                launch.stop(server)


def test_a_discovering_worker_follows_its_server_to_a_new_port(
    tmp_path: Path, farms: list[Farm]
) -> None:
    farm = make_farm(tmp_path, unique("moving"))
    farms.append(farm)
    discovering_worker(farm, "follower")
    client = farm.client()
    assert client.map("farm_jobs:square", [2]).results() == [4]
    old_port = farm.port
    launch.stop(farm.server)  # type: ignore[arg-type]
    farm.start_server("--name", farm.config_name, discovery=True)
    assert farm.port != old_port
    with buildcat.connect("127.0.0.1", farm.port, farm.root) as moved:
        assert moved.map("farm_jobs:square", [3]).results() == [9]
    assert f"found farm '{farm.config_name}'" in farm.log_text("follower")


def test_server_without_discovery_is_not_heard(tmp_path: Path, farms: list[Farm]) -> None:
    root = tmp_path / "quiet"
    root.mkdir()
    quiet = Farm(root=root, logs=tmp_path / "logs", config_name=unique("quiet"))
    quiet.start_server("--name", quiet.config_name)
    farms.append(quiet)
    assert quiet.client().jobs() == []
    # The control: a farm started after the quiet one, with discovery on, is heard.
    loud = make_farm(tmp_path, unique("loud"))
    farms.append(loud)

    def loud_heard() -> set[str] | None:
        names = {found.name for found in discovery.browse(3)}
        return names if loud.config_name in names else None

    names: set[str] = wait_for(loud_heard, timeout=60)
    assert quiet.config_name not in names


#: Joins the mDNS group on loopback beside the browser and prints each question it hears.
LISTENER = """
import json, socket
from zeroconf import DNSIncoming

listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
listener.bind(("", 5353))
group = socket.inet_aton("224.0.0.251") + socket.inet_aton("127.0.0.1")
listener.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
print("listening", flush=True)
while True:
    message = DNSIncoming(listener.recv(9000))
    for question in message.questions if message.is_query() else []:
        print(json.dumps({"name": question.name, "unicast": question.unicast}), flush=True)
"""


def test_browsers_ask_for_answers_every_program_on_the_host_hears(tmp_path: Path) -> None:
    """A unicast ("QU") answer reaches only one of the programs sharing UDP 5353 on a host
    (RFC 6762, 15.1): beside a server or worker on the same machine, the browser missed the
    first answers and waited a second for its next query. So every question asks for a
    multicast answer, which all of them hear."""
    netns.require("the mDNS question test")
    env = {**os.environ, **LOOPBACK_ONLY}
    with netns.private_namespace("bc-mdns") as lan:
        listener = subprocess.Popen(
            [*lan.wrap, sys.executable, "-c", LISTENER],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            assert listener.stdout is not None
            assert listener.stdout.readline().strip() == "listening"
            browsed = lan.run(launch.farm_command("discover", "--timeout", "1.5"), env=env)
            assert browsed.returncode == 1, browsed.stderr
        finally:
            listener.terminate()
            heard_lines, _ = listener.communicate(timeout=30)
    questions = [json.loads(line) for line in heard_lines.splitlines()]
    ours = [q for q in questions if q["name"] == discovery.SERVICE_TYPE]
    assert ours, heard_lines
    assert [q["unicast"] for q in ours] == [False] * len(ours)
