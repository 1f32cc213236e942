"""``farm demo``: a throwaway local farm (a server and two workers) running a real job."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from buildcat import launch
from buildcat.client import Client
from buildcat.display import ProgressDisplay
from buildcat.jobs import demo as demo_job


def run_demo(root: Path, workers: int = 2, echo: Callable[[str], None] = print) -> int:
    """Start the farm, run the demo job with live progress, print results, shut down."""
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    logs = root / ".buildcat" / "logs"
    server_log = launch.free_log(logs / "server.log")
    worker_logs = [launch.free_log(logs / f"worker-{n + 1}.log") for n in range(workers)]
    processes = []
    try:
        echo(f"Starting a local farm in {root} ...")
        server, port = launch.start_server(root, "--name", "demo", log=server_log)
        processes.append(server)
        echo(f"  server    http://127.0.0.1:{port}  (log: {logs / 'server.log'})")
        for n in range(workers):
            name = f"demo-worker-{n + 1}"
            processes.append(launch.start_worker(port, root, "--name", name, log=worker_logs[n]))
            echo(f"  worker    {name}  (log: {logs / f'worker-{n + 1}.log'})")
        with Client("127.0.0.1", port, root) as client:
            deadline = time.monotonic() + 30
            while len(client.workers()) < workers and time.monotonic() < deadline:
                time.sleep(0.05)
            tasks = demo_job.tasks(width=960, height=640)
            job = client.submit_tasks(tasks, name="demo: mandelbrot in 16 tiles")
            echo(f"Submitted job {job.id}: {len(tasks) - 1} tiles and one assemble task")
            display = ProgressDisplay()
            try:
                job.wait(timeout=300, on_update=display.update, interval=0.2)
            finally:
                display.close()
            results = job.results()
            tiles, image = results[:-1], results[-1]
            by_worker = Counter(tile["worker"] for tile in tiles)
            echo("Tiles rendered per worker:")
            for worker, count in sorted(by_worker.items()):
                seconds = sum(t["seconds"] for t in tiles if t["worker"] == worker)
                echo(f"  {worker}: {count} tiles, {seconds:.2f}s of work")
            echo(f"Image: {root / image['image']} ({image['width']}x{image['height']} PNG)")
            echo(f"Tiles: {root / 'demo' / 'tiles'}")
        return 0
    finally:
        launch.stop_all(processes[1:])  # workers first, so they can say goodbye
        launch.stop_all(processes[:1])
        for handle in [server_log, *worker_logs]:
            handle.close()
        echo("Farm stopped.")
