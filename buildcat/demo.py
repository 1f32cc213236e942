"""``farm demo``: a throwaway local farm (a server and two workers) running a real job.

With Blender on this machine (the binary, or ``pip install buildcat[blender]``) it renders
a 24-frame animation the package builds itself and writes a contact sheet; without one it
renders a Mandelbrot image in tiles, so the farm itself can still be seen working.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from buildcat import launch
from buildcat.blender import BlenderInstall, build_demo_scene, find_blender
from buildcat.client import Client, Job
from buildcat.display import ProgressDisplay
from buildcat.jobs import demo as demo_job

FRAMES = 24


def run_demo(
    root: Path,
    workers: int = 2,
    echo: Callable[[str], None] = print,
    use_blender: bool = True,
) -> int:
    """Start the farm, run the demo job with live progress, print results, shut down.

    ``use_blender=False`` shows the farm without Blender (the Mandelbrot job), as on a
    machine that has none."""
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    blender = find_blender() if use_blender else None
    logs = root / ".buildcat" / "logs"
    server_log = launch.free_log(logs / "server.log")
    worker_logs = [launch.free_log(logs / f"worker-{n + 1}.log") for n in range(workers)]
    processes = []
    try:
        echo(f"Starting a local farm in {root} ...")
        server, port = launch.start_server(root, "--name", "demo", "--no-discovery", log=server_log)
        processes.append(server)
        echo(f"  server    http://127.0.0.1:{port}  (log: {logs / 'server.log'})")
        for n in range(workers):
            name = f"demo-worker-{n + 1}"
            switches = () if blender else ("--no-blender",)
            processes.append(
                launch.start_worker(port, root, "--name", name, *switches, log=worker_logs[n])
            )
            echo(f"  worker    {name}  (log: {logs / f'worker-{n + 1}.log'})")
        with Client("127.0.0.1", port, root) as client:
            deadline = time.monotonic() + 60
            while len(client.workers()) < workers and time.monotonic() < deadline:
                time.sleep(0.05)
            if blender is None:
                if use_blender:
                    echo("No Blender here (pip install 'buildcat[blender]' or apt install")
                    echo("blender): rendering a Mandelbrot image in tiles instead.")
                else:
                    echo("Without Blender (--no-blender): rendering a Mandelbrot image in tiles.")
                _mandelbrot(client, root, echo)
            else:
                _animation(client, root, blender, echo)
        return 0
    finally:
        launch.stop_all(processes[1:])  # workers first, so they can say goodbye
        launch.stop_all(processes[:1])
        for handle in [server_log, *worker_logs]:
            handle.close()
        echo("Farm stopped.")


def _follow(job: Job) -> None:
    display = ProgressDisplay()
    try:
        job.wait(timeout=600, on_update=display.update, interval=0.2)
    finally:
        display.close()


def _animation(
    client: Client, root: Path, blender: BlenderInstall, echo: Callable[[str], None]
) -> None:
    scene = root / "demo" / "spinning.blend"
    scene.parent.mkdir(parents=True, exist_ok=True)
    echo(f"Building the demo scene with {blender.describe()} ...")
    build_demo_scene(blender, scene, frames=FRAMES)
    job = client.render(
        "demo/spinning.blend", f"1-{FRAMES}", chunk=3, output="demo/frames/frame_####"
    )
    echo(f"Submitted job {job.id}: {FRAMES} frames of demo/spinning.blend, 3 frames per task")
    _follow(job)
    results = job.results()
    frames = [path for result in results for path in result["outputs"]]
    by_worker = Counter(task["worker"] for task in job.tasks())
    names = {w["id"]: w["name"] for w in client.workers()}
    echo("Tasks rendered per worker:")
    for worker_id, count in sorted(by_worker.items(), key=lambda item: names.get(item[0], "")):
        echo(f"  {names.get(worker_id, worker_id)}: {count} tasks")
    sheet = client.contact_sheet(job, output="demo/contact_sheet.png", columns=6, width=64)
    sheet = root / sheet["path"]
    echo(f"Frames: {root / 'demo' / 'frames'} ({len(frames)} PNG files)")
    echo(f"Contact sheet: {sheet}")


def _mandelbrot(client: Client, root: Path, echo: Callable[[str], None]) -> None:
    tasks = demo_job.tasks(width=960, height=640)
    job = client.submit_tasks(tasks, name="demo: mandelbrot in 16 tiles")
    echo(f"Submitted job {job.id}: {len(tasks) - 1} tiles and one assemble task")
    _follow(job)
    results = job.results()
    tiles, image = results[:-1], results[-1]
    echo("Tiles rendered per worker:")
    for worker, count in sorted(Counter(tile["worker"] for tile in tiles).items()):
        seconds = sum(t["seconds"] for t in tiles if t["worker"] == worker)
        echo(f"  {worker}: {count} tiles, {seconds:.2f}s of work")
    echo(f"Image: {root / image['image']} ({image['width']}x{image['height']} PNG)")
    echo(f"Tiles: {root / 'demo' / 'tiles'}")
