"""Working in the dashboard, in Chromium (Playwright) against a real farm: the layout at
1400x900, 800x1000 and a phone's width, links that open the same job, filters and pages,
archive / delete / requeue asking first, logs that follow their tail and load in pieces,
the keyboard, and a farm of 10,000 jobs."""

from __future__ import annotations

import json
import time
from typing import Any

from buildcat import launch
from buildcat.root import state_dir
from buildcat.server.journal import encode as journal_encode
from tests.conftest import Farm, wait_for
from tests.test_dashboard import dashboard_link

WIDE = {"width": 1400, "height": 900}
NARROW = {"width": 800, "height": 1000}
PHONE = {"width": 390, "height": 844}


def seed_jobs(farm: Farm, jobs: list[tuple[str, str, str]]) -> None:
    """Queued jobs ``(id, name, owner)`` of one task each, written to the journal while
    the server is stopped (as many as a busy studio has, without 10,000 submits)."""
    assert farm.server is not None
    launch.stop(farm.server)
    now = time.time()
    with (state_dir(farm.root) / "journal.bin").open("ab") as journal:
        for number, (job_id, name, owner) in enumerate(jobs):
            specs = [[{"function": "farm_jobs:square", "args": [number]}, []]]
            event = ["submit", now + number * 1e-3, job_id, specs, name, "python", 0, [], 3,
                     owner, {}, None]  # fmt: skip
            journal.write(journal_encode(event))
    farm.start_server(port=farm.port)


def open_page(browser: Any, farm: Farm, viewport: dict[str, int], hash_: str = "") -> Any:
    page = browser.new_page(viewport=viewport)
    page.goto(dashboard_link(farm))
    if hash_:
        page.goto(f"http://127.0.0.1:{farm.port}/{hash_}")
    return page


def box(page: Any, selector: str) -> dict[str, float]:
    found = page.locator(selector).bounding_box()
    assert found is not None, f"{selector} is not shown"
    return dict(found)


def no_sideways_scroll(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def test_the_selected_job_opens_beside_the_list_wide_and_in_its_place_narrow(
    jobs_farm: Farm, browser: object
) -> None:
    farm = jobs_farm
    farm.start_worker("--no-blender")
    client = farm.client()
    jobs = [client.map("farm_jobs:chatty", [n, n + 1], name=f"shot-{n}") for n in range(12)]
    for job in jobs:
        job.wait(timeout=60)
    oldest = jobs[0]

    page = open_page(browser, farm, WIDE)
    row = page.locator(f'tr[data-job="{oldest.id}"]')
    row.wait_for(timeout=30_000)
    assert (
        page.locator("#jobs tbody tr").first.get_attribute("data-job") == jobs[-1].id
    )  # newest first
    row.click()
    page.locator("#detail-title").filter(has_text=oldest.id).wait_for(timeout=30_000)
    listed, detail = box(page, "#jobs-pane"), box(page, "#job-detail")
    assert detail["x"] >= listed["x"] + listed["width"]  # beside the list, not below it
    assert detail["y"] < WIDE["height"] / 2  # in view without scrolling
    assert row.is_visible()
    assert no_sideways_scroll(page)

    for viewport in (NARROW, PHONE):
        page.set_viewport_size(viewport)
        page.goto(f"http://127.0.0.1:{farm.port}/#/jobs")
        row.wait_for(timeout=30_000)
        assert no_sideways_scroll(page), viewport
        row.click()
        page.locator("#detail-title").filter(has_text=oldest.id).wait_for(timeout=30_000)
        assert box(page, "#job-detail")["y"] < viewport["height"] / 2, viewport
        assert not row.is_visible()  # the job takes the list's place
        page.locator("#tasks tbody tr").first.wait_for(timeout=30_000)
        assert no_sideways_scroll(page), viewport
        page.locator("#detail-back").click()
        row.wait_for(timeout=30_000)
        assert page.url.endswith("#/jobs")


def test_a_link_opens_the_same_job_and_task_log(jobs_farm: Farm, browser: object) -> None:
    farm = jobs_farm
    farm.start_worker("--no-blender")
    job = farm.client().map("farm_jobs:chatty", [7, 8, 9], name="linked")
    job.wait(timeout=60)
    task = job.tasks()[2]["id"]
    page = open_page(browser, farm, WIDE)
    page.locator(f'tr[data-job="{job.id}"]').click()
    page.locator(f'#tasks tr[data-task="{task}"]').click()
    page.locator("#task-log pre").filter(has_text="working on 9").wait_for(timeout=30_000)
    link = page.url
    assert link.endswith(f"#/jobs/{job.id}/{task}")

    other = open_page(browser, farm, NARROW, "#" + link.split("#", 1)[1])
    other.locator("#detail-title").filter(has_text=job.id).wait_for(timeout=30_000)
    other.locator("#task-log pre").filter(has_text="working on 9").wait_for(timeout=30_000)
    assert other.locator("#log-title").inner_text() == task
    # Back returns to where the person was before.
    other.go_back()
    other.wait_for_function("() => !location.hash.includes('/jobs/')", timeout=10_000)


def test_filters_search_and_pages_say_what_is_hidden(jobs_farm: Farm, browser: object) -> None:
    farm = jobs_farm
    seeded = [(f"job{n:04d}", f"shot-{n:03d}", "ana" if n % 3 == 0 else "ben") for n in range(70)]
    seed_jobs(farm, seeded)
    client = farm.client()
    client.job("job0001").pause()
    for job_id in ("job0002", "job0004", "job0005"):
        client.job(job_id).cancel()
    client.archive("job0002")
    client.archive("job0004")

    page = open_page(browser, farm, WIDE)
    rows = page.locator("#jobs tbody tr.job")
    rows.first.wait_for(timeout=30_000)
    count = page.locator("#jobs-count")
    count.filter(has_text="1-50 of 68").wait_for(timeout=30_000)
    assert "2 archived not shown" in count.inner_text()
    assert rows.count() == 50
    assert rows.first.get_attribute("data-job") == "job0069"
    page.locator("#jobs-older").click()
    count.filter(has_text="51-68 of 68").wait_for(timeout=30_000)
    assert rows.count() == 18 and rows.last.get_attribute("data-job") == "job0000"
    assert "page=1" in page.url

    page.locator("#job-state").select_option("paused")
    count.filter(has_text="1-1 of 1").wait_for(timeout=30_000)
    assert rows.first.get_attribute("data-job") == "job0001"
    assert "67 others do not match" in count.inner_text()
    page.locator("#job-state").select_option("")

    page.locator("#job-search").fill("shot-06")  # shot-060 … shot-069
    count.filter(has_text="of 10").wait_for(timeout=30_000)
    assert {rows.nth(i).get_attribute("data-job") for i in range(10)} == {
        f"job{n:04d}" for n in range(60, 70)
    }
    page.locator("#job-owner").fill("ana")  # 60, 63, 66, 69
    count.filter(has_text="1-4 of 4").wait_for(timeout=30_000)
    assert "q=shot-06" in page.url and "owner=ana" in page.url
    # The filtered view is a link too.
    again = open_page(browser, farm, WIDE, "#" + page.url.split("#", 1)[1])
    again.locator("#jobs-count").filter(has_text="1-4 of 4").wait_for(timeout=30_000)
    assert again.locator("#job-owner").input_value() == "ana"

    page.locator("#job-search").fill("")
    page.locator("#job-owner").fill("")
    page.locator("#job-archived").check()
    count.filter(has_text="1-2 of 2").wait_for(timeout=30_000)
    assert {rows.nth(i).get_attribute("data-job") for i in range(2)} == {"job0002", "job0004"}


def test_archive_and_delete_from_the_page_ask_first(jobs_farm: Farm, browser: object) -> None:
    farm = jobs_farm
    farm.start_worker("--no-blender")
    client = farm.client()
    kept = client.map("farm_jobs:chatty", [1], name="kept")
    gone = client.map("farm_jobs:chatty", [2], name="gone")
    kept.wait(timeout=60)
    gone.wait(timeout=60)
    logs = state_dir(farm.root) / "logs" / gone.id
    assert logs.is_dir()

    page = open_page(browser, farm, WIDE)
    row = page.locator(f'tr[data-job="{kept.id}"]')
    row.locator('button[data-action="archive"]').click()
    row.wait_for(state="detached", timeout=30_000)
    assert client.job(kept.id).status()["archived"] is True
    page.locator("#jobs-count").filter(has_text="1 archived not shown").wait_for(timeout=30_000)
    page.locator("#job-archived").check()
    row.locator('button[data-action="unarchive"]').click()
    wait_for(lambda: client.job(kept.id).status()["archived"] is False)

    page.locator("#job-archived").uncheck()
    doomed = page.locator(f'tr[data-job="{gone.id}"]')
    doomed.locator('button[data-action="delete"]').click()
    page.locator("#confirm").filter(has_text="cannot be undone").wait_for(timeout=10_000)
    page.keyboard.press("Escape")  # a dialog closed with Escape keeps the job
    assert not page.locator("#confirm").is_visible()
    assert gone.id in {job["id"] for job in client.jobs()}
    doomed.locator('button[data-action="delete"]').click()
    page.locator("#confirm-ok").click()
    doomed.wait_for(state="detached", timeout=30_000)
    assert gone.id not in {job["id"] for job in client.jobs(archived=True)}
    wait_for(lambda: not logs.exists())
    assert kept.id in {job["id"] for job in client.jobs()}


def test_one_task_is_requeued_from_the_task_table(jobs_farm: Farm, browser: object) -> None:
    farm = jobs_farm
    farm.start_worker("--no-blender")
    client = farm.client()
    job = client.map("farm_jobs:chatty", [10, 20, 30], name="again")
    job.wait(timeout=60)
    task = job.tasks()[1]["id"]

    page = open_page(browser, farm, WIDE, f"#/jobs/{job.id}")
    row = page.locator(f'#tasks tr[data-task="{task}"]')
    row.locator('button[data-action="requeue"]').click()
    page.locator("#confirm").filter(has_text=task).wait_for(timeout=10_000)
    page.locator("#confirm-ok").click()
    wait_for(lambda: any(e["action"] == "requeue-task" for e in job.status()["history"]))
    job.wait(timeout=60)
    assert job.results() == [11, 21, 31]
    page.locator("#job-history").click()
    page.locator("#job-history li").filter(has_text=f"task {task} requeued").wait_for(
        timeout=30_000
    )
    # The log shows the second run after the first.
    row.locator('button[data-action="log"]').click()
    log = page.locator("#task-log pre")
    log.filter(has_text="attempt 1").wait_for(timeout=30_000)
    wait_for(lambda: log.inner_text().count("working on 20") == 2, 30)


def test_the_log_follows_its_tail_live_and_loads_earlier_pieces(
    jobs_farm: Farm, browser: object
) -> None:
    farm = jobs_farm
    farm.start_worker("--no-blender", "--slots", "2")
    client = farm.client()
    talker = client.submit("farm_jobs:talk_until", "talker", 3)
    gate = farm.gate("talker")
    gate.wait_started()
    task = talker.tasks()[0]["id"]

    page = open_page(browser, farm, WIDE, f"#/jobs/{talker.id}/{task}")
    log = page.locator("#task-log pre")
    page.locator("#log-title").filter(has_text=task).wait_for(timeout=30_000)
    page.evaluate("window.notReloaded = true")
    for number in (1, 2, 3):
        (farm.root / "gates" / f"talker.say-{number}").write_text("")
        log.filter(has_text=f"said {number}").wait_for(timeout=30_000)
    talker.wait(timeout=60)
    assert page.evaluate("window.notReloaded") is True
    assert log.inner_text().count("said 1") == 1  # each piece read once

    # A long log: its end first, earlier pieces when asked.
    long = client.submit("farm_jobs:long_log", 600)
    long.wait(timeout=120)
    long_task = long.tasks()[0]["id"]
    page.goto(f"http://127.0.0.1:{farm.port}/#/jobs/{long.id}/{long_task}")
    log.filter(has_text="the last line").wait_for(timeout=30_000)
    assert "line 00000000" not in log.inner_text()
    assert len(log.inner_text()) < 200_000  # a piece, not the whole 600 KiB
    earlier = page.locator("#log-earlier")
    for _ in range(10):
        if not earlier.is_visible():
            break
        shown = len(log.inner_text())
        earlier.click()
        wait_for(lambda shown=shown: len(log.inner_text()) > shown, 30)
    assert not earlier.is_visible()
    text = log.inner_text()
    assert text.count("line 00000000 of a long log") == 1 and text.count("the last line") == 1
    lines = [line for line in text.splitlines() if line.startswith("line ")]
    assert lines == [f"line {n:08d} of a long log..." for n in range(len(lines))]  # none twice


def test_the_keyboard_reaches_a_job_its_tasks_and_back(jobs_farm: Farm, browser: object) -> None:
    farm = jobs_farm
    farm.start_worker("--no-blender")
    job = farm.client().map("farm_jobs:chatty", [5], name="keys")
    job.wait(timeout=60)
    page = open_page(browser, farm, WIDE)
    page.locator(f'tr[data-job="{job.id}"]').wait_for(timeout=30_000)
    for _ in range(40):  # Tab until the job's link has the focus
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('job-link')"):
            break
    assert page.evaluate("document.activeElement.closest('tr').dataset.job") == job.id
    page.keyboard.press("Enter")
    page.locator("#detail-title").filter(has_text=job.id).wait_for(timeout=30_000)
    page.locator('#tasks button[data-action="log"]').first.focus()
    page.keyboard.press("Enter")
    page.locator("#task-log pre").filter(has_text="working on 5").wait_for(timeout=30_000)
    page.keyboard.press("Escape")
    page.wait_for_function("() => location.hash === '#/jobs'", timeout=10_000)
    assert not page.locator("#job-detail").is_visible()


def test_a_farm_of_ten_thousand_jobs_lists_a_page_and_filters(
    jobs_farm: Farm, browser: object
) -> None:
    farm = jobs_farm
    seed_jobs(farm, [(f"j{n:05d}", f"shot-{n:05d}", f"artist{n % 7}") for n in range(10_000)])
    page = open_page(browser, farm, WIDE)
    count = page.locator("#jobs-count")
    count.filter(has_text="1-50 of 10000").wait_for(timeout=60_000)
    assert page.locator("#jobs tbody tr.job").count() == 50
    page.locator("#job-search").fill("shot-04321")
    count.filter(has_text="1-1 of 1").wait_for(timeout=30_000)
    assert page.locator("#jobs tbody tr.job").first.get_attribute("data-job") == "j04321"
    # What the page reads stays a page, and the live update a bounded list, however many
    # jobs the farm holds.
    sizes = page.evaluate(
        """async () => {
            const list = await fetch('/api/v1/jobs?order=newest&limit=50&archived=no');
            const body = await list.text();
            return {list: body.length, jobs: JSON.parse(body).jobs.length};
        }"""
    )
    assert sizes["jobs"] == 50
    update = first_update(page)
    assert len(update["jobs"]) <= 250 and update["active_jobs"] == 10_000
    assert update["more_jobs"] == 10_000 - len(update["jobs"])


def first_update(page: Any) -> dict[str, Any]:
    text = page.evaluate(
        """() => new Promise((resolve) => {
            const source = new EventSource('/api/v1/events');
            source.addEventListener('update', (event) => { source.close(); resolve(event.data); });
        })"""
    )
    return dict(json.loads(text))


def by_name(client: Any, name: str) -> dict[str, Any]:
    return next(worker for worker in client.workers() if worker["name"] == name)


def test_the_workers_view_drains_disables_enables_schedules_and_forgets(
    jobs_farm: Farm, browser: object
) -> None:
    farm = jobs_farm
    farm.start_worker("--no-blender", "--tags", "gpu,lookdev", name="ws-gpu")
    other = farm.start_worker("--no-blender", name="ws-cpu")
    farm.wait_workers(2)
    client = farm.client()
    gate = farm.gate("on-the-gpu")
    task = {"payload": {"function": "farm_jobs:gated", "args": ["on-the-gpu", "rendered"]}}
    held = client.submit_tasks([task], name="gpu shot", requires=["gpu"])
    gate.wait_started()

    page = open_page(browser, farm, NARROW, "#/workers")
    gpu = page.locator('tr[data-worker="ws-gpu"]')
    gpu.locator('[data-field="state"]').filter(has_text="running").wait_for(timeout=30_000)
    assert "gpu" in gpu.locator(".tag").all_inner_texts()
    current = gpu.locator('[data-field="current"] a')
    assert held.id in current.inner_text() and "gpu shot" in current.inner_text()
    assert no_sideways_scroll(page)

    # Drain: what it runs finishes; it takes nothing more until enabled.
    gpu.locator('button[data-action="drain"]').click()
    gpu.locator('[data-field="state"]').filter(has_text="draining").wait_for(timeout=30_000)
    assert by_name(client, "ws-gpu")["draining"] is True
    gate.open()
    assert held.results() == ["rendered"]
    waiting = client.submit_tasks([task], name="gpu shot 2", requires=["gpu"])
    wait_for(lambda: "draining" in waiting.status()["waiting"], 30)
    gpu.locator('button[data-action="enable"]').click()
    assert waiting.results() == ["rendered"]  # the gate is open: it runs at once

    # Disable asks first; kept, nothing changes.
    cpu = page.locator('tr[data-worker="ws-cpu"]')
    cpu.locator('button[data-action="disable"]').click()
    page.locator("#confirm").filter(has_text="ws-cpu").wait_for(timeout=10_000)
    page.locator("#confirm-cancel").click()
    assert by_name(client, "ws-cpu")["enabled"] is True
    cpu.locator('button[data-action="disable"]').click()
    page.locator("#confirm-ok").click()
    cpu.locator('[data-field="state"]').filter(has_text="disabled").wait_for(timeout=30_000)
    cpu.locator('button[data-action="enable"]').click()
    cpu.locator('[data-field="state"]').filter(has_text="idle").wait_for(timeout=30_000)

    # A schedule that starts the day after tomorrow: asleep now, and it says when it wakes.
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[(time.gmtime().tm_wday + 2) % 7]
    cpu.locator('button[data-action="schedule"]').click()
    page.locator("#schedule-spec").fill(f"{day} 00:00-24:00")
    page.locator("#schedule-timezone").fill("UTC")
    page.locator("#schedule-save").click()
    cpu.locator('[data-field="state"]').filter(has_text="asleep").wait_for(timeout=30_000)
    assert f"{day} 00:00-24:00" in cpu.locator('[data-field="schedule"]').inner_text()
    assert "wakes" in cpu.locator('[data-field="schedule"]').inner_text()
    assert by_name(client, "ws-cpu")["schedule"]["timezone"] == "UTC"

    # A worker that has left is forgotten, after asking.
    launch.stop(other)
    cpu.locator('[data-field="state"]').filter(has_text="offline").wait_for(timeout=60_000)
    cpu.locator('button[data-action="forget"]').click()
    page.locator("#confirm-ok").click()
    cpu.wait_for(state="detached", timeout=30_000)
    assert "ws-cpu" not in {worker["name"] for worker in client.workers()}


def test_a_named_tokens_dashboard_shows_who_and_only_what_they_may_do(
    jobs_farm: Farm, browser: object
) -> None:
    from tests.people_support import add_token

    farm = jobs_farm
    viewer = add_token(farm, "vic", "viewer")
    artist = add_token(farm, "ana", "artist")
    client = farm.client()
    theirs = client.map("farm_jobs:square", [1], name="someone else's")  # no worker: queued
    base = f"http://127.0.0.1:{farm.port}"

    page = browser.new_page(viewport=WIDE)  # type: ignore[attr-defined]
    page.goto(f"{base}/login?token={viewer}")
    page.locator("#whoami").filter(has_text="vic (viewer)").wait_for(timeout=30_000)
    row = page.locator(f'tr[data-job="{theirs.id}"]')
    row.wait_for(timeout=30_000)
    assert not row.locator('button[data-action="cancel"]').is_visible()
    row.click()
    page.locator("#detail-title").filter(has_text=theirs.id).wait_for(timeout=30_000)

    page = browser.new_page(viewport=WIDE)  # type: ignore[attr-defined]
    page.goto(f"{base}/login?token={artist}")
    page.locator("#whoami").filter(has_text="ana (artist)").wait_for(timeout=30_000)
    row = page.locator(f'tr[data-job="{theirs.id}"]')
    row.locator('button[data-action="pause"]').click()  # the page offers it; the server says no
    page.locator("#toast").filter(has_text="belongs to").wait_for(timeout=30_000)
    assert theirs.status()["state"] == "queued"
