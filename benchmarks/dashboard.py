"""How the dashboard feels on a big farm: first paint and a filter, in Debian's Chromium.

    python benchmarks/dashboard.py [--jobs 10000] [--runs 3]

A farm of JOBS queued jobs (written to a fresh root's journal, then a real `farm server`
replays it), one headless Chromium page logged in with the dashboard link. Prints, per
run, the time from opening the page to the job list's first 50 rows, from typing a
search to the one matching row, and from choosing a state filter to its rows; then the
medians, and the size of one page of the job list and of one live update.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from buildcat import launch
from buildcat.root import state_dir
from buildcat.server.journal import encode


def seed(root: Path, count: int) -> None:
    folder = state_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    with (folder / "journal.bin").open("ab") as journal:
        for number in range(count):
            specs = [[{"function": "jobs:noop", "args": [number]}, []]]
            event = ["submit", now + number * 1e-3, f"j{number:06d}", specs,
                     f"shot-{number:06d}", "python", 0, [], 3, f"artist{number % 7}", {},
                     None]  # fmt: skip
            journal.write(encode(event))


def link(root: Path, port: int) -> str:
    done = subprocess.run(
        launch.farm_command("dashboard", "--host", f"127.0.0.1:{port}", "--root", str(root)),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="buildcat-dash-bench-") as folder:
        root = Path(folder)
        seed(root, options.jobs)
        server, port = launch.start_server(root, "--no-discovery")
        try:
            login = link(root, port)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                    args=["--no-sandbox"],
                )
                paints, searches, states = [], [], []
                for run in range(options.runs):
                    page = browser.new_page(viewport={"width": 1400, "height": 900})
                    page.goto(login, wait_until="commit")
                    started = time.perf_counter()
                    page.wait_for_function(
                        "() => document.querySelectorAll('#jobs tbody tr.job').length === 50",
                        timeout=60_000,
                    )
                    paints.append(time.perf_counter() - started)
                    wanted = f"shot-{(run * 4321) % options.jobs:06d}"
                    started = time.perf_counter()
                    page.locator("#job-search").fill(wanted)
                    page.wait_for_function(
                        "() => document.querySelectorAll('#jobs tbody tr.job').length === 1"
                    )
                    searches.append(time.perf_counter() - started)
                    page.locator("#job-search").fill("")
                    page.wait_for_function(
                        "() => document.querySelectorAll('#jobs tbody tr.job').length === 50"
                    )
                    started = time.perf_counter()
                    page.locator("#job-owner").fill("artist3")
                    matching = len(range(3, options.jobs, 7))
                    page.wait_for_function(
                        "() => document.querySelector('#jobs-count').textContent"
                        f".includes('of {matching} ')"
                    )
                    states.append(time.perf_counter() - started)
                    sizes = page.evaluate(
                        """async () => {
                            const list = await fetch(
                                '/api/v1/jobs?order=newest&limit=50&archived=no');
                            const update = await new Promise((resolve) => {
                                const source = new EventSource('/api/v1/events');
                                source.addEventListener('update', (event) => {
                                    source.close(); resolve(event.data); });
                            });
                            return {list: (await list.text()).length, update: update.length};
                        }"""
                    )
                    page.close()
                    print(
                        f"run {run + 1}: first paint {paints[-1] * 1000:.0f} ms, search "
                        f"{searches[-1] * 1000:.0f} ms, owner filter {states[-1] * 1000:.0f} ms; "
                        f"a page of the list {sizes['list'] / 1024:.0f} KiB, an update "
                        f"{sizes['update'] / 1024:.0f} KiB"
                    )
                browser.close()
        finally:
            launch.stop(server)
    figures = {
        "jobs": options.jobs,
        "first_paint_ms": round(statistics.median(paints) * 1000),
        "search_ms": round(statistics.median(searches) * 1000),
        "owner_filter_ms": round(statistics.median(states) * 1000),
    }
    print(json.dumps(figures))
    if max(figures["first_paint_ms"], figures["search_ms"], figures["owner_filter_ms"]) > 1000:
        print("slower than 1 s somewhere: see above", file=sys.stderr)


if __name__ == "__main__":
    main()
