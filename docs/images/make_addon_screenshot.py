"""Make docs/images/addon-panel.png (docs/addon.md): a throwaway farm on loopback with one
Blender worker, and Debian's Blender 3.4 drawing its real UI under Xvfb (Mesa's software
GL), the add-on registered from this checkout, a render submitted from the Farm panel and
followed to its end.

    python docs/images/make_addon_screenshot.py     # needs xvfb-run (apt-get install xvfb)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from buildcat import launch
from buildcat.blender import addon_package, build_demo_scene, find_blender

HERE = Path(__file__).parent
TARGET = HERE / "addon-panel.png"
WIDTH, HEIGHT = 760, 1240

#: Runs inside Blender: registers the add-on, submits, waits for the job, then shows the
#: Render properties alone (the Farm panel scrolled into view) and takes the screenshot.
INSIDE = """
import sys
import bpy

addons, port, shot = sys.argv[sys.argv.index("--") + 1 :]
sys.path.insert(0, addons)
import buildcat_farm
buildcat_farm.register()

bpy.context.preferences.view.show_tooltips = False  # the pointer rests over the panel
scene = bpy.context.scene
scene.render.filepath = "//frames/spin_"
props = scene.buildcat
props.host = "127.0.0.1:" + port
props.chunk = 2
props.requires = "blender"
state = {"step": 0, "ticks": 0}


def properties_area():
    window = bpy.context.window_manager.windows[0]
    areas = [a for a in window.screen.areas if a.type == "PROPERTIES"]
    return window, max(areas, key=lambda a: a.width * a.height)


def step():
    window, area = properties_area()
    region = next(r for r in area.regions if r.type == "WINDOW")
    state["ticks"] += 1
    if state["step"] == 0:
        with bpy.context.temp_override(window=window, area=area, region=region):
            bpy.ops.screen.screen_full_area()
        state["step"] = 1
        return 0.5
    if state["step"] == 1:
        area.spaces[0].context = "RENDER"
        with bpy.context.temp_override(window=window, area=area, region=region):
            bpy.ops.buildcat.refresh()
            bpy.ops.buildcat.submit()
        state["step"] = 2
        return 1.0
    if state["step"] == 2:
        if props.job_state not in ("done", "failed", "cancelled") and state["ticks"] < 300:
            return 0.5  # the add-on's own timer brings the job's state into the panel
        with bpy.context.temp_override(window=window, area=area, region=region):
            for _ in range(40):
                bpy.ops.view2d.scroll_down(page=True)
        state["step"] = 3
        return 1.0
    bpy.ops.screen.screenshot(filepath=shot)
    print("job", props.job_id, props.job_state, props.job_frames, flush=True)
    bpy.ops.wm.quit_blender()
    return None


bpy.app.timers.register(step, first_interval=2.0)
"""


def main() -> None:
    xvfb = shutil.which("xvfb-run")
    blender = (
        find_blender(shutil.which("blender"), allow_bpy=False) if shutil.which("blender") else None
    )
    if xvfb is None or blender is None:
        sys.exit("needs xvfb-run and Debian's blender (apt-get install xvfb blender)")
    with tempfile.TemporaryDirectory(prefix="buildcat-addon-shot-") as folder:
        base = Path(folder)
        root = base / "farm"
        (root / "shots").mkdir(parents=True)
        build_demo_scene(blender, root / "shots" / "spin.blend", frames=6, resolution=64,
                         samples=4)  # fmt: skip
        archive = addon_package.write_zip(base / addon_package.default_zip_name())
        shutil.unpack_archive(archive, base / "addons")
        (base / "inside.py").write_text(INSIDE)
        server, port = launch.start_server(root, "--name", "studio", "--no-discovery")
        worker = launch.start_worker(port, root, "--name", "render-01", "--blender", blender.path)
        shot = base / "shot.png"
        try:
            done = subprocess.run(
                [xvfb, "-a", "-s", f"-screen 0 {WIDTH}x{HEIGHT}x24", blender.path,
                 str(root / "shots" / "spin.blend"), "--factory-startup",
                 "--window-geometry", "0", "0", str(WIDTH), str(HEIGHT),
                 "--python", str(base / "inside.py"), "--",
                 str(base / "addons"), str(port), str(shot)],
                capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
        finally:
            launch.stop_all([worker])
            launch.stop(server)
        print("\n".join(line for line in done.stdout.splitlines() if line.startswith("job ")))
        if not shot.is_file():
            sys.exit(f"Blender drew nothing:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        with Image.open(shot) as image:
            image.convert("RGB").save(TARGET, optimize=True)
        print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
