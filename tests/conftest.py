"""Fixtures that start real ``farm`` processes on loopback and clean up what they made."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import buildcat
from buildcat import launch
from buildcat.blender import BPY, build_demo_scene, find_blender
from buildcat.errors import FarmError

#: ``.ci/run`` sets ``CI``: there every skipped test counts as a failure (a missing Blender,
#: Chromium or network namespace must not pass unnoticed).
STRICT = bool(os.environ.get("CI"))


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def unused_port(avoid: Collection[int] = ()) -> int:
    """A free loopback port below the kernel's ephemeral range: no outgoing connection or
    ``bind(0)`` elsewhere on the machine is handed it, so a server stopped and started
    again on it does not lose it in between."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(max(1024, low - 12000), low)
        if port in avoid:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError(f"no free port below {low}")


@dataclass
class Gate:
    """A task that waits for the test (``farm_jobs.gated``): it marks
    ``gates/NAME.started`` when it runs and finishes once the test opens the gate."""

    root: Path
    name: str

    def _marker(self, suffix: str) -> Path:
        return self.root / "gates" / f"{self.name}.{suffix}"

    def started(self) -> bool:
        return self._marker("started").exists()

    def wait_started(self, timeout: float = 60.0) -> None:
        wait_for(self.started, timeout)

    def cancelled(self) -> bool:
        """The task saw TaskCancelled raised inside it."""
        return self._marker("cancelled").exists()

    def open(self) -> None:
        marker = self._marker("go")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("go")


def secret_header(root: Path) -> dict[str, str]:
    """The ``Authorization`` header a farm member sends: the root's secret."""
    token = (root / ".buildcat" / "secret").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Farm:
    """A real server plus the workers a test starts; stopped at the end of the test."""

    root: Path
    logs: Path
    port: int = 0
    #: The farm's --name, where a test gives one.
    config_name: str = ""
    #: The ``farm`` its processes run (default: this Python's ``-m buildcat``), and their
    #: environment (default: this one): the single executable's tests set both.
    program: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    server: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list)
    _clients: list[buildcat.Client] = field(default_factory=list)

    def _log(self, name: str) -> Any:
        handle = launch.free_log(self.logs / f"{name}.log")
        self._handles.append(handle)
        return handle

    def start_server(self, *extra: str, port: int = 0, discovery: bool = False) -> int:
        """Start ``farm server`` on loopback; ``discovery`` advertises it on 127.0.0.1.

        With no ``port`` it takes one outside the ephemeral range (see :func:`unused_port`),
        so a restart on ``port=farm.port`` finds it still free."""
        switches = () if discovery else ("--no-discovery",)
        deadline = time.monotonic() + 30
        while True:
            chosen = port or unused_port(avoid={self.port})
            try:
                self.server, self.port = launch.start_server(
                    self.root, "--log-level", "debug", *switches, *extra,
                    port=chosen, log=self._log("server"), program=self.program, env=self.env,
                )  # fmt: skip
                return self.port
            except FarmError as exc:
                # Someone bound it explicitly in between: another port, or the same again.
                if "cannot listen" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def gate(self, name: str) -> Gate:
        return Gate(self.root, name)

    def start_worker(self, *extra: str, name: str | None = None) -> subprocess.Popen[bytes]:
        name = name or f"worker-{len(self.workers) + 1}"
        process = launch.start_worker(
            self.port, self.root, "--name", name, *extra, log=self._log(name),
            program=self.program, env=self.env,
        )  # fmt: skip
        self.workers.append(process)
        return process

    def client(self) -> buildcat.Client:
        client = buildcat.connect("127.0.0.1", self.port, self.root)
        self._clients.append(client)
        return client

    def wait_workers(self, count: int, timeout: float = 30.0) -> None:
        client = self.client()

        def online() -> bool:
            return sum(w["state"] != "offline" for w in client.workers()) >= count

        wait_for(online, timeout)

    def cli(
        self, *args: str, timeout: float = 60.0, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run ``farm ARGS`` as a user would, pointed at this farm by environment variables."""
        environment = {
            **(os.environ if self.env is None else self.env),
            "FARM_HOST": "127.0.0.1",
            "FARM_PORT": str(self.port),
            "BUILDCAT_ROOT": str(self.root),
            **env,
        }
        return subprocess.run(
            launch.farm_command(*args, program=self.program),
            capture_output=True,
            text=True,
            env=environment,
            timeout=timeout,
        )

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        launch.stop_all(self.workers)
        if self.server is not None:
            launch.stop(self.server)
        for handle in self._handles:
            handle.close()


@pytest.fixture
def farm(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Farm]:
    """A farm root with a running server; tests add workers with ``farm.start_worker()``."""
    root = tmp_path / "root"
    root.mkdir()
    farm = Farm(root=root, logs=tmp_path / "logs")
    farm.start_server(*getattr(request, "param", ()))
    try:
        yield farm
    finally:
        farm.stop()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            for log in sorted(farm.logs.glob("*.log")):
                print(f"----- {log.name} -----\n{log.read_text(errors='replace')[-4000:]}")


#: Debian's Chromium, which the dashboard tests drive with Playwright (no browser download).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser() -> Iterator[object]:
    """Debian's Chromium under Playwright, headless."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def scene_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64x64, 6-frame Cycles scene built by the oldest Blender here (all can open it)."""
    binary = shutil.which("blender")
    blender = find_blender(binary) if binary else find_blender(BPY)
    if blender is None:
        pytest.skip("no Blender installed")
    path = tmp_path_factory.mktemp("scenes") / "spin.blend"
    build_demo_scene(blender, path, frames=6, resolution=64, samples=4)
    return path


@pytest.fixture
def jobs_farm(farm: Farm) -> Farm:
    """A farm whose root holds the test job module `farm_jobs`."""
    shutil.copy(Path(__file__).parent / "farm_jobs.py", farm.root / "farm_jobs.py")
    return farm


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, and CI runs every test: {reason}"
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    skipped = len(terminalreporter.stats.get("skipped", []))
    rule = " (CI: every skip fails)" if STRICT else ""
    terminalreporter.write_line(f"buildcat: {skipped} test(s) skipped{rule}")
