"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against a real
farm rendering with real Blender; and what its login cookie may and may not do."""

from __future__ import annotations

import http.client
import json
import shutil
import time
from pathlib import Path

import pytest

import buildcat
from buildcat import launch
from buildcat.root import state_dir
from buildcat.server.journal import encode as journal_encode
from tests.conftest import Farm, secret_header, wait_for


def dashboard_link(farm: Farm) -> str:
    printed = farm.cli("dashboard")
    assert printed.returncode == 0, printed.stderr
    link = printed.stdout.strip()
    assert link.startswith(f"http://127.0.0.1:{farm.port}/login?key=")
    return link


def test_dashboard_shows_live_progress_a_frame_and_cancels(
    jobs_farm: Farm, scene_file: Path, browser: object, tmp_path: Path
) -> None:
    farm = jobs_farm
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "spin.blend")
    # One slot, and a grace far beyond the test: only a cancel that reaches the running
    # task (TaskCancelled inside it) can free the slot, not the kill that follows the grace.
    farm.start_worker("--slots", "1", "--cancel-grace", "600", name="render-1")
    submitted = farm.cli(
        "submit", "blender", "shots/spin.blend", "--frames", "1-6", "--chunk", "1",
        "--name", "spin", "--json",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    client = farm.client()
    job = client.job(job_id)

    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page.goto(dashboard_link(farm))
    assert page.url == f"http://127.0.0.1:{farm.port}/#/jobs"
    row = page.locator(f'tr[data-job="{job_id}"]')
    row.wait_for(timeout=30_000)
    page.evaluate("window.notReloaded = true")
    first = row.locator(".count").inner_text()
    # The count moves as frames finish, with no reload.
    page.wait_for_function(
        f"""() => {{
            const count = document.querySelector('tr[data-job="{job_id}"] .count');
            return count && count.textContent !== {first!r} && !count.textContent.startsWith("0/");
        }}""",
        timeout=120_000,
    )
    assert page.evaluate("window.notReloaded") is True
    assert page.locator("#live").inner_text() == "live"

    row.click()
    assert page.url.endswith(f"#/jobs/{job_id}")  # the selection is in the URL
    image = page.locator("#thumbnail img")
    page.wait_for_function(
        "() => { const i = document.querySelector('#thumbnail img');"
        " return i && i.complete && i.naturalWidth === 64; }",
        timeout=60_000,
    )
    assert image.is_visible()
    assert page.locator("#tasks tbody tr").count() == 6
    job.wait(timeout=120)
    row.locator('[data-field="state"]').filter(has_text="done").wait_for(timeout=30_000)
    assert row.locator('button[data-action="cancel"]').count() == 0  # nothing left to cancel
    # Every rendered frame is in the strip, its render time in the chart; the last is shown
    # large, and the arrow keys step through the others.
    strip = page.locator("#frame-strip .frame-cell")
    page.wait_for_function(
        "() => document.querySelectorAll('#frame-strip .frame-cell').length === 6", timeout=30_000
    )
    assert [strip.nth(i).get_attribute("data-frame") for i in range(6)] == [
        str(frame) for frame in range(1, 7)
    ]
    assert page.locator("#frame-chart rect").count() == 6
    caption = page.locator("#thumbnail figcaption")
    assert caption.inner_text().startswith("frame 6")
    page.locator("#frame-strip").focus()
    page.keyboard.press("ArrowLeft")
    caption.filter(has_text="frame 5").wait_for(timeout=10_000)
    assert page.locator("#frame-strip .frame-cell.on").get_attribute("data-frame") == "5"
    page.wait_for_function(
        f"() => {{ const i = document.querySelector('#thumbnail img');"
        f" return i.complete && i.naturalWidth === 64 && i.src.includes('/tasks/{job_id}.4/'); }}",
        timeout=30_000,
    )
    # Workers have their own view.
    page.locator("#nav-workers").click()
    page.locator('tr[data-worker="render-1"]').wait_for(timeout=30_000)
    assert not page.locator("#jobs-view").is_visible()
    page.locator("#nav-jobs").click()
    screenshot = tmp_path / "dashboard.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000

    # Cancel: a task that runs until the test opens its gate, which it never does before
    # the click, so the job is certainly running when the button is pressed.
    gate = farm.gate("cancel-from-the-dashboard")
    held = client.submit("farm_jobs:gated", gate.name, "should never finish")
    gate.wait_started()
    held_row = page.locator(f'tr[data-job="{held.id}"]')
    held_row.locator('[data-field="state"]').filter(has_text="running").wait_for(timeout=30_000)
    assert held.status()["state"] == "running"
    # Cancel asks first: keeping it changes nothing.
    held_row.locator('button[data-action="cancel"]').click()
    page.locator("#confirm").filter(has_text=held.id).wait_for(timeout=10_000)
    page.locator("#confirm-cancel").click()
    assert not page.locator("#confirm").is_visible()
    assert held.status()["state"] == "running"
    held_row.locator('button[data-action="cancel"]').click()
    page.locator("#confirm-ok").click()
    held_row.locator('[data-field="state"]').filter(has_text="cancelled").wait_for(timeout=30_000)
    assert held.status()["state"] == "cancelled"
    assert held_row.locator('button[data-action="cancel"]').count() == 0
    wait_for(gate.cancelled, 30)  # TaskCancelled was raised inside the running task
    # The worker's only slot is free for the next job while the gate is still shut.
    after = client.map("farm_jobs:square", [7])
    after.wait(timeout=60)
    assert after.results() == [49]
    assert [task["worker"] for task in after.tasks()] == [
        worker["id"] for worker in client.workers() if worker["name"] == "render-1"
    ]
    assert page.evaluate("window.notReloaded") is True


def test_dashboard_priority_and_pause_buttons(jobs_farm: Farm, browser: object) -> None:
    client = jobs_farm.client()
    job = client.map("farm_jobs:square", [1, 2, 3])  # no worker: it stays queued
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(dashboard_link(jobs_farm))
    row = page.locator(f'tr[data-job="{job.id}"]')
    row.wait_for(timeout=30_000)
    row.locator('button[data-action="priority-up"]').click()
    wait_for(lambda: job.status()["priority"] == 1)
    row.locator('[data-field="priority"]').filter(has_text="1").wait_for(timeout=10_000)
    row.locator('button[data-action="pause"]').click()
    wait_for(lambda: job.status()["state"] == "paused")
    row.locator('button[data-action="resume"]').wait_for(timeout=10_000)
    row.locator('button[data-action="resume"]').click()
    wait_for(lambda: job.status()["state"] == "queued")


def test_the_python_api_link_logs_in_and_a_clicked_task_shows_its_log(
    jobs_farm: Farm, browser: object
) -> None:
    farm = jobs_farm
    farm.start_worker("--no-blender")
    client = farm.client()
    link = client.dashboard_url()
    assert link == dashboard_link(farm)  # the same link `farm dashboard` prints
    job = client.map("farm_jobs:chatty", [41, 42])
    assert job.results() == [42, 43]
    second = job.tasks()[1]["id"]

    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(link)
    assert (
        page.url == f"http://127.0.0.1:{farm.port}/#/jobs"
    )  # logged in: the dashboard, no login page
    row = page.locator(f'tr[data-job="{job.id}"]')
    row.wait_for(timeout=30_000)
    row.click()
    page.locator(f'#tasks tr[data-task="{second}"]').click()
    log = page.locator("#task-log pre")
    log.filter(has_text="working on 42").wait_for(timeout=30_000)
    assert page.locator("#log-title").inner_text() == second
    assert "working on 41" not in log.inner_text()  # the clicked task's log, not another's
    # A key that is not this farm's opens nothing.
    wrong = browser.new_page()  # type: ignore[attr-defined]
    wrong.goto(link.rsplit("=", 1)[0] + "=" + "0" * 32)
    assert "not this farm's" in wrong.locator("body").inner_text()
    assert wrong.locator(f'tr[data-job="{job.id}"]').count() == 0


def test_the_retry_button_runs_a_failed_job_again_until_done(
    jobs_farm: Farm, browser: object
) -> None:
    farm = jobs_farm
    farm.start_worker("--no-blender")
    client = farm.client()
    job = client.map("farm_jobs:fails_first_time", ["markers/flaky"], max_attempts=1)
    with pytest.raises(buildcat.JobFailed, match="failing the first time on purpose"):
        job.wait(timeout=60)
    task = job.tasks()[0]["id"]

    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(client.dashboard_url())
    row = page.locator(f'tr[data-job="{job.id}"]')
    row.locator('[data-field="state"]').filter(has_text="failed").wait_for(timeout=30_000)
    # The failed task's log shows what it printed and why it failed.
    row.click()
    page.locator(f'#tasks tr[data-task="{task}"]').click()
    log = page.locator("#task-log pre")
    log.filter(has_text="failing on purpose").wait_for(timeout=30_000)
    assert "RuntimeError: failing the first time on purpose" in log.inner_text()

    row.locator('button[data-action="retry"]').click()
    row.locator('[data-field="state"]').filter(has_text="done").wait_for(timeout=60_000)
    assert job.status()["state"] == "done"
    assert job.results() == ["fine the second time"]
    assert row.locator('button[data-action="retry"]').count() == 0
    # The open log follows the task's new run.
    log.filter(has_text="next attempt at markers/flaky: fine").wait_for(timeout=30_000)


def _no_nan(text: str) -> float:
    raise AssertionError(f"{text} is not JSON")


def test_one_jobs_bad_data_never_stops_the_dashboard_or_the_job_list(
    jobs_farm: Farm, browser: object
) -> None:
    farm = jobs_farm
    client = farm.client()
    good = client.map("farm_jobs:square", [3, 4], name="good")  # no worker yet: queued
    # A job whose meta JSON cannot carry, as an older release could have journaled it
    # (today's submit refuses it): a NaN, a bytes key, both nested.
    assert farm.server is not None
    launch.stop(farm.server)
    bad_meta = {"fps": float("nan"), b"raw": 1, "nested": {b"k": [float("inf")]}}
    specs = [[{"function": "farm_jobs:square", "args": [5]}, []]]
    event = ["submit", time.time(), "badbad00", specs, "bad", "python", 0, [], 3, "", bad_meta,
             None]  # fmt: skip
    with (state_dir(farm.root) / "journal.bin").open("ab") as journal:
        journal.write(journal_encode(event))
    farm.start_server(port=farm.port)

    status, body, _ = request(farm.port, "GET", "/api/v1/jobs", secret_header(farm.root))
    assert status == 200, body
    listed = {job["id"]: job for job in json.loads(body, parse_constant=_no_nan)["jobs"]}
    assert set(listed) == {good.id, "badbad00"}
    assert "display_error" in listed["badbad00"] and "display_error" not in listed[good.id]
    assert listed["badbad00"]["meta"]["fps"] is None and listed["badbad00"]["meta"]["raw"] == 1
    assert {job["id"] for job in client.jobs()} == {good.id, "badbad00"}  # msgpack too

    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(dashboard_link(farm))
    bad_row = page.locator('tr[data-job="badbad00"]')
    bad_row.filter(has_text="shown in part").wait_for(timeout=30_000)
    good_row = page.locator(f'tr[data-job="{good.id}"]')
    good_row.locator('[data-field="state"]').filter(has_text="queued").wait_for(timeout=30_000)
    # The stream goes on: the good job runs and the page shows it done, live.
    farm.start_worker("--no-blender")
    assert good.results() == [9, 16]
    good_row.locator('[data-field="state"]').filter(has_text="done").wait_for(timeout=30_000)
    assert page.locator("#live").inner_text() == "live"


def request(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, bytes, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


def test_the_dashboard_cookie_reads_and_steers_but_never_runs_code(jobs_farm: Farm) -> None:
    farm = jobs_farm
    port = farm.port
    link = dashboard_link(farm)
    status, page, _ = request(port, "GET", "/", {})
    assert status == 200 and b"farm dashboard" in page  # the login page, no data
    status, _, _ = request(port, "GET", "/login?key=" + "0" * 32, {})
    assert status == 401
    status, _, headers = request(port, "GET", link.split(str(port), 1)[1], {})
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    assert cookie.split("=", 1)[1] not in (farm.root / ".buildcat" / "secret").read_text()

    job = farm.client().map("farm_jobs:square", [4])
    with_cookie = {"Cookie": cookie}
    steer = {**with_cookie, "X-Buildcat-Dashboard": "1", "Content-Type": "application/json"}
    assert request(port, "GET", "/", with_cookie)[1].count(b"js/main.js") == 1
    assert request(port, "GET", "/api/v1/jobs", with_cookie)[0] == 200
    assert request(port, "GET", "/metrics", with_cookie)[0] == 200
    # Submitting work or acting as a worker needs the secret itself.
    body = b'{"tasks": [{"payload": {"function": "farm_jobs:square", "args": [2]}}]}'
    assert request(port, "POST", "/api/v1/jobs", steer, body)[0] == 401
    assert request(port, "POST", "/api/v1/workers", steer, b'{"name": "x"}')[0] == 401
    # Steering needs the dashboard's header too, so a form on another site cannot.
    assert request(port, "POST", f"/api/v1/jobs/{job.id}/pause", with_cookie, b"{}")[0] == 401
    assert request(port, "POST", f"/api/v1/jobs/{job.id}/pause", steer, b"{}")[0] == 200
    assert job.status()["state"] == "paused"
    assert len(farm.client().jobs()) == 1
    # Without a cookie the API is closed as before.
    assert request(port, "GET", "/api/v1/jobs", {})[0] == 401
    assert request(port, "GET", "/metrics", {})[0] == 401
    assert request(port, "GET", "/metrics", secret_header(farm.root))[0] == 200
