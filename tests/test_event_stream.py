"""`farm events` and Client.events(): the farm's job and worker events, one per line, from
real farm processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest

import buildcat
from buildcat.server.feed import MAX_BACKLOG, Feed
from buildcat.server.scheduler import Scheduler
from tests.conftest import Farm, wait_for


class Lines:
    """A `farm ...` process whose stdout lines are collected as they come."""

    def __init__(self, farm: Farm, *args: str) -> None:
        env = {
            **os.environ,
            "FARM_HOST": "127.0.0.1",
            "FARM_PORT": str(farm.port),
            "BUILDCAT_ROOT": str(farm.root),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "buildcat", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        self.process.wait(timeout=timeout)
        self._thread.join(timeout)
        assert self.process.stderr is not None
        return self.process.returncode, self.process.stderr.read()

    def kill(self) -> None:
        """At the end of the test, whatever happened: the process gone, its pipes closed."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._thread.join(30)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def of_job(events: list[dict[str, Any]], job_id: str) -> list[str]:
    return [e["event"] for e in events if e.get("job", {}).get("id") == job_id]


def test_farm_events_json_prints_a_jobs_life(jobs_farm: Farm) -> None:
    stream = Lines(jobs_farm, "events", "--json")
    try:
        wait_for(lambda: stream.lines, timeout=30)
        (hello,) = stream.events()
        assert hello["event"] == "hello" and hello["version"] == buildcat.__version__
        client = jobs_farm.client()
        job = client.map("farm_jobs:square", [1, 2, 3], name="squares")
        jobs_farm.start_worker(name="events-worker")
        job.wait(timeout=60)
        wait_for(lambda: "job.done" in of_job(stream.events(), job.id), timeout=30)
        assert of_job(stream.events(), job.id) == ["job.submitted", "job.started", "job.done"]
        done = next(e for e in stream.events() if e["event"] == "job.done")
        assert done["job"]["name"] == "squares"
        assert done["job"]["tasks"] == {"done": 3} and done["job"]["state"] == "done"
        assert isinstance(done["time"], float)
        joined = [e for e in stream.events() if e["event"] == "worker.joined"]
        assert [e["worker"]["name"] for e in joined] == ["events-worker"]
        # Ctrl-C is how one stops it: exit 130, nothing on stderr.
        stream.process.send_signal(signal.SIGINT)
        code, errors = stream.finish()
        assert code == 130
        assert errors == ""
    finally:
        stream.kill()


def test_until_job_stops_when_the_job_ends_and_exits_like_wait(jobs_farm: Farm) -> None:
    client = jobs_farm.client()
    gate = jobs_farm.gate("until")
    job = client.map("farm_jobs:gated", ["until"])
    stream = Lines(jobs_farm, "events", "--until-job", job.id)
    try:
        wait_for(lambda: stream.lines, timeout=30)  # listening
        jobs_farm.start_worker()
        gate.wait_started()
        gate.open()
        code, errors = stream.finish(timeout=60)
        assert code == 0, errors
        text = "\n".join(stream.lines)
        assert "hello farm" in stream.lines[0]
        assert f"job.started {job.id}" in text
        assert stream.lines[-1].split()[1:3] == ["job.done", job.id]
    finally:
        stream.kill()
    # Ended already: at once, and a failed job exits 1 as `farm wait` does.
    failed = client.submit_tasks(
        [{"payload": {"function": "farm_jobs:boom", "args": ["x"]}}], max_attempts=1
    )
    with pytest.raises(buildcat.JobFailed):
        failed.wait(timeout=60)
    result = jobs_farm.cli("events", "--until-job", failed.id, "--json")
    assert result.returncode == 1
    assert [json.loads(line)["event"] for line in result.stdout.splitlines()] == ["hello"]
    unknown = jobs_farm.cli("events", "--until-job", "nosuchjob")
    assert unknown.returncode != 0 and "nosuchjob" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_client_events_counts_and_tells_cancel_pause_and_workers(jobs_farm: Farm) -> None:
    client = jobs_farm.client()
    seen: list[dict[str, Any]] = []
    listening = threading.Event()

    def read() -> None:
        with buildcat.connect("127.0.0.1", jobs_farm.port, jobs_farm.root) as reader:
            for event in reader.events(count=5):
                if event["event"] == "hello":
                    listening.set()
                else:
                    seen.append(event)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert listening.wait(30)
    job = client.submit_tasks(
        [{"payload": {"function": "farm_jobs:square", "args": [2]}}], requires=["no-such-tag"]
    )
    job.pause()
    job.resume()
    job.cancel()
    worker = jobs_farm.start_worker(name="short-lived")
    thread.join(60)
    assert not thread.is_alive()  # count=5: it stopped by itself
    assert [e["event"] for e in seen] == [
        "job.submitted", "job.paused", "job.resumed", "job.cancelled", "worker.joined",
    ]  # fmt: skip
    assert seen[-1]["worker"]["name"] == "short-lived"
    worker.terminate()
    worker.wait(30)


def test_the_feed_needs_the_farm_secret(jobs_farm: Farm) -> None:
    stranger = buildcat.connect("127.0.0.1", jobs_farm.port, jobs_farm.root, token="x" * 43)
    with pytest.raises(buildcat.FarmError, match="secret"):
        next(stranger.events())


def test_a_reader_that_falls_behind_is_told_and_dropped() -> None:
    async def run() -> tuple[bool, list[bytes | None]]:
        feed = Feed()
        reader = feed.join(Scheduler())
        for number in range(MAX_BACKLOG + 5):
            feed.publish({"event": "job.submitted", "n": number})
        lines = []
        while not reader.lines.empty():
            lines.append(reader.lines.get_nowait())
        return reader.lost, lines

    lost, lines = asyncio.run(run())
    assert lost
    assert len(lines) == MAX_BACKLOG  # what it had, then the end: never more held for it
    assert lines[-1] is None
    # The oldest line made room for the end; nothing after the overflow was queued.
    assert [json.loads(line or b"")["n"] for line in lines[:-1]] == list(range(1, MAX_BACKLOG))
