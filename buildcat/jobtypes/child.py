"""Running job-type code away from the caller: ``python -m buildcat.jobtypes describe
ROOT`` lists the job types, ``... compile ROOT NAME`` (settings on stdin) plans a job.

A job type that raises, loops or exits takes only its child process with it: the client
gets one line, the server (which lists job types this way) keeps serving.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from buildcat import protocol
from buildcat.errors import FarmError
from buildcat.jobtypes import JobTypeBroken, SettingError, loading

#: Seconds beyond its own limits a child gets before it is killed (start-up, imports).
SLACK_SECONDS = 15.0


def command(action: str, root: str | os.PathLike[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "buildcat.jobtypes", action, str(root), *extra]


def environment() -> dict[str, str]:
    """This environment, with this buildcat importable in the child."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])  # the folder holding buildcat/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    return env


def describe_timeout(root: str | os.PathLike[str]) -> float:
    return loading.LOAD_SECONDS * (len(loading.root_files(root)) + 1) + SLACK_SECONDS


def describe(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every job type under ``root`` (and the built-ins) as data, read in a child."""
    try:
        done = subprocess.run(
            command("describe", root),
            capture_output=True,
            env=environment(),
            timeout=describe_timeout(root),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise FarmError(f"reading the job types in {loading.folder(root)} took too long") from None
    return read_describe(done.returncode, done.stdout, done.stderr)


def read_describe(returncode: int, stdout: bytes, stderr: bytes) -> list[dict[str, Any]]:
    reply = _reply(returncode, stdout, stderr, "reading the job types")
    return list(reply["job_types"])


def compile_job(
    root: str | os.PathLike[str], name: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """The plan the job type ``name`` makes of ``settings``: built-ins in this process
    (package code), the root's own in a child with a time limit."""
    if name in loading.BUILTINS:
        return loading.compile_job(root, name, settings)
    if name not in loading.root_files(root):
        loading.load(root, name)  # the unknown-name refusal, without a child
    limit = loading.LOAD_SECONDS + loading.compile_seconds() + SLACK_SECONDS
    try:
        done = subprocess.run(
            command("compile", root, name),
            input=protocol.pack({"settings": settings}),
            capture_output=True,
            env=environment(),
            timeout=limit,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise JobTypeBroken(
            f"job type {name!r} is broken: it ran past {limit:g} s and was stopped"
        ) from None
    if done.stderr:  # what the job type printed
        sys.stderr.write(done.stderr.decode(errors="replace"))
    return read_compile(done.returncode, done.stdout, done.stderr, name)


def read_compile(returncode: int, stdout: bytes, stderr: bytes, name: str) -> dict[str, Any]:
    return dict(_reply(returncode, stdout, stderr, f"job type {name!r}")["plan"])


def _reply(returncode: int, stdout: bytes, stderr: bytes, what: str) -> dict[str, Any]:
    try:
        reply = protocol.unpack(stdout, trusted=True) if stdout else None
    except FarmError:
        reply = None
    if not isinstance(reply, dict):
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [
            f"exit status {returncode}"
        ]
        raise JobTypeBroken(f"{what} failed: {tail[0]}", stderr.decode(errors="replace"))
    if "error" in reply:
        error, trace = str(reply["error"]), str(reply.get("traceback", ""))
        if reply.get("class") == "SettingError":
            raise SettingError(error)
        if reply.get("class") == "JobTypeBroken":
            raise JobTypeBroken(error, trace)
        raise FarmError(error)
    return reply
