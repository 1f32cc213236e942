"""Make the screenshots in docs/watching.md: a throwaway farm on loopback, two workers,
a Blender render and a Python job, and Debian's Chromium driven by Playwright.

    python docs/images/take_screenshots.py        # writes docs/images/dashboard*.png

The job list, a render's detail beside it (frame strip, chart, a task's log), the same
at 800 px wide, and the workers' view.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

import buildcat
from buildcat import launch
from buildcat.blender import BPY, build_demo_scene, find_blender

HERE = Path(__file__).parent
JOBS = HERE.parent.parent / "tests" / "farm_jobs.py"
SHOTS = ("dashboard.png", "dashboard-job.png", "dashboard-narrow.png", "dashboard-workers.png")


def farm(root: Path, port: int, *args: str) -> str:
    done = subprocess.run(
        launch.farm_command(*args, "--host", f"127.0.0.1:{port}", "--root", str(root)),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="buildcat-shots-") as folder:
        root = Path(folder)
        shutil.copy(JOBS, root / "farm_jobs.py")
        (root / "shots").mkdir()
        binary = shutil.which("blender")
        blender = find_blender(binary) if binary else find_blender(BPY)
        assert blender is not None, "a Blender is needed for the thumbnail"
        build_demo_scene(blender, root / "shots" / "spin.blend", frames=24, resolution=96,
                         samples=8)  # fmt: skip
        server, port = launch.start_server(root, "--name", "studio", "--no-discovery")
        workers = [
            launch.start_worker(port, root, "--name", name, *extra)
            for name, extra in (("render-01", ()), ("render-02", ("--tags", "gpu")))
        ]
        try:
            client = buildcat.connect("127.0.0.1", port, root)
            while len(client.workers()) < 2:
                time.sleep(0.1)
            done = client.map("farm_jobs:square", list(range(40)), name="warm-up")
            done.wait(60)
            submitted = farm(
                root, port, "submit", "blender", "shots/spin.blend", "--frames", "1-24",
                "--name", "spin turntable", "--json",
            )  # fmt: skip
            render = json.loads(submitted)["id"]
            client.map_frames("farm_jobs:print_frames", "1-100", 0.5, chunk=5,
                              name="bake caches", priority=-1)  # fmt: skip
            link = farm(root, port, "dashboard")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                    args=["--no-sandbox"],
                )
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(link)
                row = page.locator(f'tr[data-job="{render}"]')
                row.wait_for()
                page.wait_for_function(
                    f"""() => {{ const c = document.querySelector('tr[data-job="{render}"] .count');
                    return c && parseInt(c.textContent) >= 6; }}"""
                )
                page.screenshot(path=str(HERE / "dashboard.png"))
                row.click()
                page.wait_for_function(
                    "() => { const i = document.querySelector('#thumbnail img');"
                    " return i && i.complete && i.naturalWidth > 0"
                    " && document.querySelectorAll('#frame-strip .frame-cell').length >= 4; }"
                )
                page.locator('#tasks tr[data-task$=".1"]').click()
                page.locator("#task-log pre").filter(has_text="Fra:").wait_for()
                page.evaluate("document.querySelector('#job-detail').scrollTop = 0")
                page.screenshot(path=str(HERE / "dashboard-job.png"))
                page.set_viewport_size({"width": 800, "height": 1000})
                page.evaluate("window.scrollTo(0, 0)")
                page.screenshot(path=str(HERE / "dashboard-narrow.png"))
                page.set_viewport_size({"width": 1400, "height": 900})
                page.locator("#nav-workers").click()
                page.locator('tr[data-worker="render-02"]').wait_for()
                page.screenshot(path=str(HERE / "dashboard-workers.png"))
                browser.close()
        finally:
            launch.stop_all(workers)
            launch.stop(server)
    for name in SHOTS:
        print(f"wrote {HERE / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
