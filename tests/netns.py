"""Private network namespaces for tests: a LAN that only the test's own processes are on.

Discovery tests that need "no farm answers" or known interface addresses cannot use the
machine's own loopback, where any other `farm server` may be advertising. A namespace made
here starts with nothing but its loopback (brought up) and is deleted afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces are a Linux feature"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "the `ip` (iproute2) and `unshare` (util-linux) commands are missing"
    probe = f"bc-probe-{os.getpid()}-{secrets.token_hex(2)}"
    try:
        ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return f"`ip netns add` failed here: {detail.decode(errors='replace').strip() or exc}"
    ip("netns", "del", probe)
    return None


def require(what: str) -> None:
    """Skip (a failure under CI=1, see conftest) with the reason when namespaces are missing."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"{what} needs network namespaces: {reason}")


@dataclass(frozen=True)
class Namespace:
    """One named namespace (``ip netns``): commands run in it see only its interfaces."""

    name: str

    @property
    def wrap(self) -> list[str]:
        """What goes before a command to run it inside (``launch.start_server(wrap=...)``)."""
        return ["ip", "netns", "exec", self.name]

    def ip(self, *args: str) -> None:
        ip("-n", self.name, *args)

    def run(
        self, command: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.wrap, *command], capture_output=True, text=True, timeout=timeout, env=env
        )


@contextmanager
def private_namespace(prefix: str = "bc") -> Iterator[Namespace]:
    """A fresh namespace with only ``lo`` (up, 127.0.0.1), deleted on the way out."""
    namespace = Namespace(f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}")
    ip("netns", "add", namespace.name)
    try:
        namespace.ip("link", "set", "lo", "up")
        yield namespace
    finally:
        subprocess.run(["ip", "netns", "del", namespace.name], capture_output=True, timeout=30)
