"""Job-end notices: a real receiver on 127.0.0.1 gets one signed POST per job end, through
failures, retries and a server killed with SIGKILL before it could deliver."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import buildcat
from buildcat import launch
from buildcat.server import notices, snapshot
from tests.conftest import Farm, secret_header, wait_for
from tests.receiver import Receiver, farm_secret, verify

HERE = Path(__file__).parent


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver().start()
    try:
        yield made
    finally:
        made.stop()


def new_farm(tmp_path: Path) -> Farm:
    farm = Farm(root=tmp_path / "root", logs=tmp_path / "logs")
    farm.root.mkdir()
    shutil.copy(HERE / "farm_jobs.py", farm.root / "farm_jobs.py")
    return farm


def kill_server(farm: Farm) -> None:
    assert farm.server is not None
    farm.server.kill()
    farm.server.wait()
    if farm.server.stdout is not None:
        farm.server.stdout.close()


def call(farm: Farm, method: str, path: str, body: object = None) -> tuple[int, object]:
    """One JSON request to the farm's HTTP API, as a script without our client sends it."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{farm.port}/api/v1{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", **secret_header(farm.root)},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def nothing_owed(client: buildcat.Client) -> bool:
    return client.notices() == []


def test_each_job_end_is_one_signed_notice(jobs_farm: Farm, receiver: Receiver) -> None:
    jobs_farm.start_worker()
    client = jobs_farm.client()
    done = client.map("farm_jobs:square", [2, 3], notify=receiver.url)
    failed = client.submit_tasks(
        [{"payload": {"function": "farm_jobs:boom", "args": ["no"]}}],
        max_attempts=1,
        notify=[receiver.url],
    )
    # Through the CLI, on a job no worker can take (so it is still queued when cancelled).
    submitted = jobs_farm.cli(
        "submit", "python", "farm_jobs:square", "4", "--requires", "no-such-tag",
        "--notify", receiver.url, "--json", "--name", "never runs",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    cancelled = client.job(json.loads(submitted.stdout)["id"])
    done.wait(timeout=60)
    with pytest.raises(buildcat.JobFailed):
        failed.wait(timeout=60)
    cancelled.cancel()

    wait_for(lambda: len(receiver.delivered()) >= 3, timeout=60)
    wait_for(lambda: nothing_owed(client), timeout=30)
    got = receiver.all()
    assert len(got) == 3  # exactly one each, nothing sent twice once delivered
    by_job = {r.notice["job"]["id"]: r for r in got}
    assert set(by_job) == {done.id, failed.id, cancelled.id}
    secret = farm_secret(jobs_farm.root)
    for job, state in ((done, "done"), (failed, "failed"), (cancelled, "cancelled")):
        received = by_job[job.id]
        notice = received.notice
        assert verify(secret, received.headers, received.body), received.headers
        assert received.headers["X-Buildcat-Event"] == f"job.{state}"
        assert received.headers["X-Buildcat-Delivery"] == notice["delivery"]
        assert received.headers["Content-Type"] == "application/json"
        assert notice["event"] == f"job.{state}"
        assert notice["attempt"] == 1
        assert notice["farm"]
        assert notice["job"]["state"] == state
        assert notice["job"]["finished_at"] >= notice["job"]["created_at"]
        assert secret not in received.body.decode()  # only the HMAC travels
    assert by_job[done.id].notice["job"]["tasks"] == {"done": 2}
    assert by_job[done.id].notice["job"]["total"] == 2
    assert "boom: no" in by_job[failed.id].notice["job"]["error"]
    assert by_job[cancelled.id].notice["job"]["name"] == "never runs"
    assert by_job[cancelled.id].notice["job"]["started_at"] is None
    # A body changed on the way, or signed with another key, does not verify.
    first = by_job[done.id]
    assert not verify(secret, first.headers, first.body.replace(b'"done"', b'"fine"'))
    assert not verify("another secret", first.headers, first.body)
    assert not verify(secret, {**first.headers, "X-Buildcat-Timestamp": "1"}, first.body)


def test_server_wide_notify_hears_every_job(tmp_path: Path, receiver: Receiver) -> None:
    own = Receiver().start()
    farm = new_farm(tmp_path)
    try:
        farm.start_server("--notify", receiver.url, "--name", "nightly")
        farm.start_worker()
        client = farm.client()
        plain = client.submit("farm_jobs:square", 5)
        also = client.map("farm_jobs:square", [6], notify=own.url)
        plain.wait(timeout=60)
        also.wait(timeout=60)
        wait_for(lambda: len(receiver.delivered()) >= 2 and own.delivered(), timeout=60)
        wait_for(lambda: nothing_owed(client), timeout=30)
        assert sorted(r.notice["job"]["id"] for r in receiver.all()) == sorted([plain.id, also.id])
        assert [r.notice["job"]["id"] for r in own.all()] == [also.id]
        assert {r.notice["farm"] for r in receiver.all()} == {"nightly"}
        # One delivery id per job end and URL: the two URLs of one job have their own.
        ids = {r.notice["delivery"] for r in [*receiver.all(), *own.all()]}
        assert len(ids) == 3
    finally:
        farm.stop()
        own.stop()


def test_server_wide_notify_reaches_jobs_queued_before_it(
    tmp_path: Path, receiver: Receiver
) -> None:
    farm = new_farm(tmp_path)
    try:
        farm.start_server()
        client = farm.client()
        waiting = client.submit_tasks(
            [{"payload": {"function": "farm_jobs:square", "args": [3]}}], requires=["later"]
        )
        ended = client.map("farm_jobs:square", [4])  # ends before --notify: owes nothing
        farm.start_worker(name="plain")
        ended.wait(timeout=60)
        launch.stop(farm.server)  # type: ignore[arg-type]
        farm.start_server("--notify", receiver.url, port=farm.port)
        kill_server(farm)  # what that start gave the queued job is on disk: it keeps it
        farm.start_server(port=farm.port)
        farm.start_worker("--tags", "later", name="tagged")
        client = farm.client()
        client.job(waiting.id).wait(timeout=60)
        wait_for(lambda: receiver.delivered(), timeout=60)
        wait_for(lambda: nothing_owed(client), timeout=30)
        assert [r.notice["job"]["id"] for r in receiver.all()] == [waiting.id]
        assert client.job(waiting.id).status()["meta"]["notify"] == [receiver.url]
    finally:
        farm.stop()


def test_a_failing_receiver_gets_it_on_the_third_try(jobs_farm: Farm) -> None:
    flaky = Receiver(answers=[500, 503]).start()
    try:
        jobs_farm.start_worker()
        client = jobs_farm.client()
        job = client.map("farm_jobs:square", [7], notify=flaky.url)
        job.wait(timeout=60)
        wait_for(lambda: flaky.delivered(), timeout=60)
        wait_for(lambda: nothing_owed(client), timeout=30)
        tries = flaky.all()
        assert [r.status for r in tries] == [500, 503, 200]
        assert [r.notice["attempt"] for r in tries] == [1, 2, 3]
        assert len({r.notice["delivery"] for r in tries}) == 1  # the same notice each time
        secret = farm_secret(jobs_farm.root)
        assert all(verify(secret, r.headers, r.body) for r in tries)
    finally:
        flaky.stop()


def test_a_receiver_that_says_never_is_not_asked_again(jobs_farm: Farm) -> None:
    gone = Receiver(answers=[410]).start()
    try:
        jobs_farm.start_worker()
        client = jobs_farm.client()
        client.map("farm_jobs:square", [8], notify=gone.url).wait(timeout=60)
        wait_for(lambda: gone.all(), timeout=60)
        wait_for(lambda: nothing_owed(client), timeout=30)
        assert [r.status for r in gone.all()] == [410]
        wait_for(lambda: "HTTP 410: given up" in jobs_farm.log_text("server"), timeout=10)
    finally:
        gone.stop()


@pytest.mark.parametrize("in_snapshot", [False, True], ids=["journal", "snapshot"])
def test_a_notice_owed_survives_sigkill(tmp_path: Path, in_snapshot: bool) -> None:
    receiver = Receiver()  # not listening yet: every try is refused
    farm = new_farm(tmp_path)
    extra = ("--snapshot-every", "10") if in_snapshot else ()
    try:
        farm.start_server(*extra)
        farm.start_worker()
        client = farm.client()
        job = client.map("farm_jobs:square", [9], notify=receiver.url)
        job.wait(timeout=60)

        def tried() -> list[dict[str, object]]:
            owed = client.notices()
            return owed if owed and owed[0]["attempts"] else []

        (owed,) = wait_for(tried, timeout=30)
        assert owed["job"] == job.id and owed["url"] == receiver.url
        assert owed["last_error"]  # tried, and the receiver was not there
        if in_snapshot:  # the job's end (and its notice) lives in the snapshot, not the journal
            path = farm.root / ".buildcat" / "snapshot.bin"
            client.map("farm_jobs:square", range(20)).wait(timeout=60)  # events: a snapshot

            def snapshotted() -> bool:
                found = snapshot.read(path) if path.exists() else None
                return bool(found and found[1].get("notices"))

            wait_for(snapshotted, timeout=30)
        kill_server(farm)
        receiver.start()
        farm.start_server(*extra, port=farm.port)
        wait_for(lambda: receiver.delivered(), timeout=60)
        client = farm.client()
        wait_for(lambda: nothing_owed(client), timeout=30)
        (got,) = receiver.all()
        assert got.notice["delivery"] == owed["delivery"]
        assert got.notice["job"]["id"] == job.id and got.notice["event"] == "job.done"
        assert verify(farm_secret(farm.root), got.headers, got.body)
        # Delivered is on disk: another SIGKILL and start owes nothing and sends nothing.
        kill_server(farm)
        farm.start_server(*extra, port=farm.port)
        client = farm.client()
        assert client.notices() == []
        assert client.job(job.id).status()["state"] == "done"
        assert len(receiver.all()) == 1
    finally:
        farm.stop()
        receiver.stop()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.invalid/hook", "only http:// and https://"),
        ("javascript:alert(1)", "only http:// and https://"),
        ("http:///no-host", "no host"),
        ("http://127.0.0.1:99999/", "not a URL"),
        ("http://127.0.0.1/" + "a" * 3000, "longer than 2048"),
        ("http://127.0.0.1/a b", "spaces"),
    ],
)
def test_a_bad_url_is_refused_at_submit(jobs_farm: Farm, url: str, reason: str) -> None:
    result = jobs_farm.cli("submit", "python", "farm_jobs:square", "2", "--notify", url)
    assert result.returncode != 0
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # The server refuses it the same way (a client that skips the check).
    body = {"kind": "python", "tasks": [{"payload": {"function": "farm_jobs:square", "args": [2]}}]}
    status, reply = call(jobs_farm, "POST", "/jobs", {**body, "notify": url})
    assert status == 400
    assert isinstance(reply, dict) and reason in reply["error"]
    status, listed = call(jobs_farm, "GET", "/jobs")
    assert isinstance(listed, dict) and listed["jobs"] == []  # nothing queued


def test_notify_in_the_body_takes_a_list_and_checks_each(jobs_farm: Farm) -> None:
    body = {
        "kind": "python",
        "tasks": [{"payload": {"function": "farm_jobs:square", "args": [2]}}],
        "notify": ["http://127.0.0.1:9/ok", "gopher://127.0.0.1/"],
    }
    status, reply = call(jobs_farm, "POST", "/jobs", body)
    assert status == 400 and isinstance(reply, dict) and "gopher" in reply["error"]
    status, reply = call(jobs_farm, "POST", "/jobs", {**body, "notify": {"url": "x"}})
    assert status == 400 and isinstance(reply, dict)
    assert "a URL or a list of URLs" in reply["error"]
    assert jobs_farm.client().jobs() == []


def test_a_bad_server_wide_url_stops_the_server_with_one_line(tmp_path: Path) -> None:
    farm = new_farm(tmp_path)
    farm.start_server()
    try:
        result = farm.cli("server", "--root", str(farm.root), "--notify", "file:///etc/passwd")
        assert result.returncode != 0
        assert "--notify URL 'file:///etc/passwd': only http:// and https://" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        farm.stop()


# ---- the rules, without a server ---------------------------------------------------------


def test_backoff_doubles_from_one_second_to_five_minutes() -> None:
    delays = [notices.next_delay(attempt) for attempt in range(1, 12)]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert notices.next_delay(10_000) == 300


def test_which_answers_end_the_retries() -> None:
    assert notices.permanent(400) and notices.permanent(404) and notices.permanent(410)
    assert not any(notices.permanent(s) for s in (408, 425, 429, 500, 502, 503, 302, 200))


def test_the_signature_is_what_the_docs_say() -> None:
    body = b'{"event":"job.done"}'
    signed = notices.signature("s3cret", "1700000000", body)
    headers = {"X-Buildcat-Timestamp": "1700000000", "X-Buildcat-Signature": signed}
    assert verify("s3cret", headers, body, tolerance=float("inf"))
    assert signed.startswith("sha256=") and len(signed) == 7 + 64


def test_the_same_job_end_has_the_same_delivery_id() -> None:
    first = notices.delivery_id("ab12", 1700000000.25, "done", "http://a/")
    assert first == notices.delivery_id("ab12", 1700000000.25, "done", "http://a/")
    assert first != notices.delivery_id("ab12", 1700000099.0, "done", "http://a/")  # retried
    assert first != notices.delivery_id("ab12", 1700000000.25, "done", "http://b/")
