"""A LAN in network namespaces: a server host, two worker hosts, a client host and an
intruder, each with its own address on one bridge and its own path to the shared root.

Workers and the client find the server by zeroconf alone (mDNS stays inside the
namespaces this test creates). Needs root and ``ip``; skipped, with the reason, where
namespaces cannot be made, which fails the run under ``CI=1``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from buildcat import launch
from tests import netns
from tests.conftest import Gate, wait_for

HERE = Path(__file__).parent
SUBNET = "10.231.0"
HOSTS = {"server": 1, "render1": 2, "render2": 3, "artist": 4, "intruder": 5}


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=30)


@dataclass
class Lan:
    """Namespaces named PREFIX-HOST on one bridge; processes started in them are stopped."""

    prefix: str
    logs: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    handles: list[object] = field(default_factory=list)

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{HOSTS[host]}"

    def build(self) -> None:
        switch = self.ns("lan")
        run("ip", "netns", "add", switch)
        run("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", switch, "link", "set", "br0", "up")
        for host, number in HOSTS.items():
            ns, port = self.ns(host), f"port{number}"
            run("ip", "netns", "add", ns)
            run("ip", "link", "add", port, "netns", switch, "type", "veth",
                "peer", "name", "eth0", "netns", ns)  # fmt: skip
            run("ip", "-n", switch, "link", "set", port, "master", "br0")
            run("ip", "-n", switch, "link", "set", port, "up")
            run("ip", "-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")

    def env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "BUILDCAT_"))}
        return {**clean, "FARM_DISCOVERY_TIMEOUT": "15"}

    def log(self, name: str) -> object:
        handle = launch.free_log(self.logs / f"{name}.log")
        self.handles.append(handle)
        return handle

    def start(self, host: str, command: list[str], name: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *command],
            stdout=self.log(name),  # type: ignore[arg-type]
            stderr=subprocess.STDOUT,
            env=self.env(),
        )
        self.processes.append(process)
        return process

    def farm(self, host: str, *args: str, root: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(host), *launch.farm_command(*args)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**self.env(), "BUILDCAT_ROOT": str(root)},
        )

    def text(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def tear_down(self) -> None:
        launch.stop_all(self.processes)
        for handle in self.handles:
            handle.close()  # type: ignore[attr-defined]
        for host in [*HOSTS, "lan"]:
            subprocess.run(["ip", "netns", "del", self.ns(host)], capture_output=True, timeout=30)


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[Lan]:
    # Under CI=1 (.ci/run) this skip fails the run (see conftest): CI always has namespaces.
    netns.require("the multi-host test")
    network = Lan(prefix=f"bc{os.getpid() % 100000}", logs=tmp_path / "logs")
    network.logs.mkdir()
    try:
        network.build()
        yield network
    finally:
        network.tear_down()
        failed = list(network.logs.glob("*.log"))
        for log in sorted(failed):
            print(f"----- {log.name} -----\n{log.read_text(errors='replace')[-3000:]}")


def test_a_farm_across_hosts_found_by_zeroconf_with_per_host_roots(
    lan: Lan, tmp_path: Path
) -> None:
    shared = tmp_path / "nas" / "farm"
    shared.mkdir(parents=True)
    shutil.copy(HERE / "farm_jobs.py", shared / "farm_jobs.py")

    # Each host reaches the share by its own path: a bind mount private to each worker
    # host (as an NFS or SMB mount would be), a symlink on the artist's workstation.
    render1_root = tmp_path / "render1" / "mnt" / "farm"
    render2_root = tmp_path / "render2" / "Volumes" / "Farm"
    render1_root.mkdir(parents=True)
    render2_root.mkdir(parents=True)
    artist_root = tmp_path / "artist" / "projects"
    artist_root.parent.mkdir(parents=True)
    artist_root.symlink_to(shared, target_is_directory=True)

    server, port = launch.start_server(
        shared,
        "--name", "studio", "--log-level", "debug",
        bind="0.0.0.0",
        log=lan.log("server"),  # type: ignore[arg-type]
        wrap=["ip", "netns", "exec", lan.ns("server")],
        env=lan.env(),
    )  # fmt: skip
    lan.processes.append(server)
    worker = ["--no-blender", "--log-level", "debug"]
    for name, root in (("render1", render1_root), ("render2", render2_root)):
        command = launch.farm_command("worker", "--root", str(root), "--name", name, *worker)
        mount_and_work = f"mount --bind {shared} {root} && exec {shlex.join(command)}"
        lan.start(
            name,
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount_and_work],
            name,
        )

    def both_workers_joined() -> bool:
        listed = lan.farm("artist", "workers", "--json", root=artist_root)
        assert listed.returncode == 0, listed.stderr
        return len(json.loads(listed.stdout)) == 2

    wait_for(both_workers_joined, timeout=60, interval=0.5)
    for name in ("render1", "render2"):
        assert f"found farm 'studio' at http://{lan.address('server')}:{port}" in lan.text(name)
    # On this (the test's) host, the workers' mount points are still empty folders.
    assert list(render1_root.iterdir()) == list(render2_root.iterdir()) == []

    # Every task waits at a gate in the shared root until the test has seen tasks running
    # on both worker hosts at once: both take part, however fast either one polls.
    items = [f"out/{n:02d}.txt" for n in range(8)]
    submitted = lan.farm(
        "artist", "submit", "python", "farm_jobs:where_am_i_gated", *items,
        "--map", "-k", "gate=hosts", "--json",
        root=artist_root,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]

    def running_on() -> set[str]:
        """Each held task's worker's path to the root, from its marker in the shared root."""
        return {marker.read_text() for marker in (shared / "gates").glob("hosts-*.started")}

    def tasks_held_on_both_hosts() -> bool:
        return len(running_on()) == 2

    wait_for(tasks_held_on_both_hosts, timeout=60, interval=0.1)
    assert running_on() == {str(render1_root), str(render2_root)}
    Gate(shared, "hosts").open()
    waited = lan.farm("artist", "wait", job_id, root=artist_root)
    assert waited.returncode == 0, waited.stderr + waited.stdout
    results = lan.farm("artist", "results", job_id, "--json", root=artist_root)
    roots = json.loads(results.stdout)
    assert set(roots) == {str(render1_root), str(render2_root)}
    # Every output landed in the one shared root, written through each worker's own path.
    for item, root in zip(items, roots, strict=True):
        assert (shared / item).read_text() == root

    # A host without the secret gets nothing run, whatever it tries.
    intruder_root = tmp_path / "intruder" / "copy"
    intruder_root.mkdir(parents=True)
    shutil.copy(HERE / "farm_jobs.py", intruder_root / "farm_jobs.py")
    no_secret = lan.farm("intruder", "submit", "python", "farm_jobs:touch", "pwned.txt",
                         root=intruder_root)  # fmt: skip
    assert no_secret.returncode == 1 and "no farm secret at" in no_secret.stderr
    guessed = {"FARM_TOKEN": "guessed-" + "x" * 40}
    unknown = subprocess.run(
        ["ip", "netns", "exec", lan.ns("intruder"),
         *launch.farm_command("submit", "python", "farm_jobs:touch", "pwned.txt")],
        capture_output=True, text=True, timeout=60,
        env={**lan.env(), "BUILDCAT_ROOT": str(intruder_root), "FARM_DISCOVERY_TIMEOUT": "3",
             **guessed},
    )  # fmt: skip
    assert unknown.returncode == 1
    assert "none uses this root's farm secret" in unknown.stderr
    direct = subprocess.run(
        ["ip", "netns", "exec", lan.ns("intruder"),
         *launch.farm_command("submit", "python", "farm_jobs:touch", "pwned.txt",
                              "--host", f"{lan.address('server')}:{port}")],
        capture_output=True, text=True, timeout=60,
        env={**lan.env(), "BUILDCAT_ROOT": str(intruder_root), **guessed},
    )  # fmt: skip
    assert direct.returncode == 1
    assert "refused the farm secret" in direct.stderr
    rogue = lan.start(
        "intruder",
        [*launch.farm_command("worker", "--root", str(intruder_root), "--name", "rogue",
                              "--host", f"{lan.address('server')}:{port}",
                              "--token", guessed["FARM_TOKEN"], *worker)],
        "rogue",
    )  # fmt: skip
    assert rogue.wait(60) == 1
    assert "refused this worker's farm secret" in lan.text("rogue")
    listed = lan.farm("artist", "status", "--json", root=artist_root)
    assert [job["id"] for job in json.loads(listed.stdout)] == [job_id]
    assert not (shared / "pwned.txt").exists() and not (intruder_root / "pwned.txt").exists()
    secret = (shared / ".buildcat" / "secret").read_text().strip()
    for log in lan.logs.glob("*.log"):
        assert secret not in log.read_text(errors="replace"), log.name
