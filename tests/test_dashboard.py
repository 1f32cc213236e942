"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against a real
farm rendering with real Blender; and what its login cookie may and may not do."""

from __future__ import annotations

import http.client
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Farm, secret_header, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser() -> Iterator[object]:
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


def dashboard_link(farm: Farm) -> str:
    printed = farm.cli("dashboard")
    assert printed.returncode == 0, printed.stderr
    link = printed.stdout.strip()
    assert link.startswith(f"http://127.0.0.1:{farm.port}/login?key=")
    return link


def test_dashboard_shows_live_progress_a_frame_and_cancels(
    farm: Farm, scene_file: Path, browser: object, tmp_path: Path
) -> None:
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "spin.blend")
    farm.start_worker(name="render-1")
    submitted = farm.cli(
        "submit", "blender", "shots/spin.blend", "--frames", "1-6", "--chunk", "1",
        "--name", "spin", "--json",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split('"id": "')[1].split('"')[0]
    job = farm.client().job(job_id)

    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page.goto(dashboard_link(farm))
    assert page.url == f"http://127.0.0.1:{farm.port}/"
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
    assert page.locator('tr[data-worker="render-1"]').count() == 1

    row.click()
    image = page.locator("#thumbnail img")
    page.wait_for_function(
        "() => { const i = document.querySelector('#thumbnail img');"
        " return i && i.complete && i.naturalWidth === 64; }",
        timeout=60_000,
    )
    assert image.is_visible()
    assert page.locator("#tasks tbody tr").count() == 6
    screenshot = tmp_path / "dashboard.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000

    if job.status()["state"] != "done":
        row.locator('button[data-action="cancel"]').click()
        page.wait_for_function(
            f"""() => document.querySelector('tr[data-job="{job_id}"] [data-field="state"]')
                .textContent === "cancelled" """,
            timeout=30_000,
        )
        assert job.status()["state"] == "cancelled"
    else:  # the machine rendered every frame before we got there: nothing left to cancel
        assert row.locator('button[data-action="cancel"]').count() == 0
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
    assert request(port, "GET", "/", with_cookie)[1].count(b"app.js") == 1
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
