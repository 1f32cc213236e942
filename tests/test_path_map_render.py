"""A scene saved on Windows renders right on a Linux worker: its absolute paths under a
location of the farm's path map (``F:\\farm`` is the root on Windows) are remapped before
the render, a linked library before it loads. Without the map the files are missing, and
`farm check`, the submit and the worker each say so. Real farm, real Blenders (both)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from buildcat.blender import BPY
from tests.blender_support import BINARY, BOTH_BLENDERS, needs_binary, run_in_blender
from tests.conftest import Farm, wait_for
from tests.test_blender_assets import build_linked, job_of, pixels, plain_render, submit
from tests.test_blendfile import build

#: The library and the board's texture as a Windows artist's Blender saved them, the farm
#: root being F:\farm there, or the share \\aurora\farm: a UNC path, a drive, backslashes
#: and forward slashes mixed, another case.
WINDOWS_LIBRARY = "\\\\aurora\\farm\\shots\\lib\\props.blend"
WINDOWS_TEXTURE = "f:\\Farm/shots\\tex/paint.png"
#: The same as Blender on Linux reads them: a backslash after the first two is a slash.
AS_READ = {
    WINDOWS_LIBRARY: "\\\\aurora/farm/shots/lib/props.blend",
    WINDOWS_TEXTURE: "f:/Farm/shots/tex/paint.png",
}

#: shots/windows.blend: shots/linked.blend (tests/test_blender_assets.py) with its library
#: and its texture at Windows absolute paths (the file's only difference).
TO_WINDOWS = """
import bpy
bpy.ops.wm.open_mainfile(filepath=SOURCE)
bpy.data.libraries[0].filepath = LIBRARY
bpy.data.images["paint.png"].filepath = TEXTURE
bpy.ops.wm.save_as_mainfile(filepath=OUTPUT)
"""

WORKER_BLENDERS = [
    *BOTH_BLENDERS,
    pytest.param(BINARY or "blender", id="binary-3.4-per-task", marks=needs_binary),
]


def windows_blend(blender: str, linked: Path, output: Path) -> None:
    """Save ``linked`` as ``output`` with its library and texture where Windows has them."""
    script = (
        f"SOURCE = {str(linked)!r}\nLIBRARY = {WINDOWS_LIBRARY!r}\n"
        f"TEXTURE = {WINDOWS_TEXTURE!r}\n{TO_WINDOWS}"
    )
    build(blender, script, output)
    saved = output.read_bytes()
    assert WINDOWS_LIBRARY.encode() in saved and WINDOWS_TEXTURE.encode() in saved


def farm_paths(farm: Farm, *args: str) -> subprocess.CompletedProcess[str]:
    done = farm.cli("paths", *args)
    assert done.returncode == 0, done.stderr
    return done


def statuses(farm: Farm, scene: str) -> tuple[int, dict[str, tuple[str, str, str | None]]]:
    done = farm.cli("check", scene, "--json")
    report = json.loads(done.stdout)
    return done.returncode, {
        a["path"]: (a["status"], a["resolved"], a["location"])
        for a in report["assets"]
        if a["used_by"] == scene
    }


@pytest.mark.timeout(600)
@pytest.mark.parametrize("blender", WORKER_BLENDERS)
def test_a_scene_saved_on_windows_renders_on_linux_through_the_path_map(
    blender: str,
    farm: Farm,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    if request.node.callspec.id.endswith("per-task"):
        monkeypatch.setenv("BUILDCAT_BLENDER_WARM", "0")  # override.py, before -f
    shots = farm.root / "shots"
    linked = build_linked(blender, shots)
    windows_blend(blender, linked, shots / "windows.blend")

    # No map: nobody knows where F:\farm is. farm check and the submit say so.
    code, found = statuses(farm, "shots/windows.blend")
    assert code == 1
    library, texture = WINDOWS_LIBRARY, WINDOWS_TEXTURE
    assert found[library][0] == found[texture][0] == "under no location"
    refused = submit(farm, "shots/windows.blend")
    assert refused.returncode != 0 and refused.stderr.count("\n") == 1
    assert f"{texture} (under no location, image " in refused.stderr
    assert "farm paths add" in refused.stderr

    # The map: the root is F:\farm on Windows. Now both are found where this machine has them.
    farm_paths(farm, "add", "root", "--windows", "F:\\farm", "--windows", "\\\\aurora\\farm")
    code, found = statuses(farm, "shots/windows.blend")
    assert code == 0
    assert found[library] == ("mapped", str(shots / "lib" / "props.blend"), "root")
    assert found[texture] == ("mapped", str(shots / "tex" / "paint.png"), "root")
    text = farm.cli("check", "shots/windows.blend")
    assert text.returncode == 0, text.stderr
    assert "shots/windows.blend: 2 files: 2 mapped" in text.stdout
    client = farm.client()
    unmapped = client.job(job_of(farm, submit(farm, "shots/windows.blend", "--output", "a/f_####")))

    # The map gone before a worker takes the task: the worker finds the files missing and
    # fails the job at once, naming them and why (issue 13's check, before any frame).
    farm_paths(farm, "remove", "root")
    farm.start_worker("--blender", blender)
    wait_for(lambda: unmapped.status()["state"] == "failed", timeout=300, interval=0.2)
    (task,) = unmapped.tasks()
    assert task["attempts"] == 1
    library, texture = AS_READ[WINDOWS_LIBRARY], AS_READ[WINDOWS_TEXTURE]
    assert f"missing files: {library} (library 'props.blend', looked for " in task["error"]
    assert f"{texture} (image 'paint.png', looked for " in task["error"]
    assert "under no location of the farm's path map (farm paths)" in task["error"]
    assert not list((farm.root / "a").glob("f_*"))

    # With the map, the worker remaps the library (reloaded) and the texture before the
    # render: the frame is the one Blender renders from the file with the right paths.
    farm_paths(farm, "add", "root", "--windows", "F:\\farm", "--windows", "\\\\aurora\\farm")
    job = client.job(job_of(farm, submit(farm, "shots/windows.blend", "--output", "b/f_####")))
    job.wait(timeout=300)
    frame = pixels(farm.root / "b" / "f_0001.png")
    plain = plain_render(blender, linked, tmp_path / "plain")
    difference = int(np.abs(frame - plain).max())
    print(f"{blender}: farm frame of windows.blend against plain linked.blend: max {difference}")
    assert difference == 0  # without the remapping: magenta board, no prop at all
    board, prop = frame[8:24, 2:12], frame[8:24, 20:30]
    assert (board[..., 2] > 200).all() and (board[..., 0] < 40).all()  # the blue texture
    assert (prop[..., 0] > 200).all() and (prop[..., 2] < 40).all()  # the orange prop
    log = farm.cli("logs", job.id)
    assert f"buildcat: mapped library 'props.blend': {library} -> " in log.stdout
    assert (
        f"buildcat: mapped image 'paint.png': {texture} -> {shots / 'tex' / 'paint.png'}"
        in log.stdout
    )


#: Builds every kind of path Blender exposes with Windows paths under F:\farm, remaps
#: them with dependencies.remap and prints each as it is then.
EVERY_KIND = """
import json, sys, wave
import bpy
sys.path.insert(0, SCRIPTS)
import dependencies
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
with wave.open(WAV, "wb") as sound:
    sound.setnchannels(1); sound.setsampwidth(2); sound.setframerate(8000)
    sound.writeframes(b"\\0\\0" * 80)
W = "F:\\\\farm\\\\"
image = bpy.data.images.new("img", 4, 4)
image.source = "FILE"
image.filepath = W + "tex\\\\a.png"
volume = bpy.data.volumes.new("vol")
volume.filepath = W + "cache\\\\smoke.vdb"
sound = bpy.data.sounds.load(WAV)
sound.filepath = W + "audio\\\\beat.wav"
clip = bpy.data.movieclips.load(PNG)
clip.filepath = W + "plates\\\\p_0001.png"
editor = scene.sequence_editor_create()
strips = getattr(editor, "strips", None) or editor.sequences
strip = strips.new_image("plate", PNG, 1, 1)
strip.directory = W + "plates\\\\"
scene.render.filepath = W + "renders\\\\frame_####"
scene.use_nodes = True
node = scene.node_tree.nodes.new("CompositorNodeOutputFile")
node.base_path = W + "passes\\\\"
mesh = bpy.data.meshes.new("domain")
domain = bpy.data.objects.new("domain", mesh)
scene.collection.objects.link(domain)
fluid = domain.modifiers.new("Fluid", "FLUID")
fluid.fluid_type = "DOMAIN"
fluid.domain_settings.cache_directory = W + "cache\\\\fluid"
before = {"image": image.filepath}
notes = dependencies.remap({"path_map": MAP})
print("PATHS " + json.dumps({
    "before": before["image"],
    "image": image.filepath, "volume": volume.filepath, "sound": sound.filepath,
    "clip": clip.filepath, "strip": strip.directory, "output": scene.render.filepath,
    "node": node.base_path, "fluid": fluid.domain_settings.cache_directory,
    "notes": len(notes),
}))
"""


@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_every_kind_of_path_blender_exposes_is_remapped(blender: str, tmp_path: Path) -> None:
    from buildcat.blender import SCRIPTS
    from buildcat.paths import PathMap

    png = tmp_path / "plate_0001.png"
    Image.new("RGB", (4, 4), (0, 0, 255)).save(png)
    resolved = (
        PathMap.from_json({"locations": {"root": {"windows": "F:\\farm"}}})
        .with_own_root("linux", "/srv/farm")
        .resolve("linux")
    )
    script = (
        f"SCRIPTS = {str(SCRIPTS)!r}\nWAV = {str(tmp_path / 'beat.wav')!r}\n"
        f"PNG = {str(png)!r}\nMAP = {resolved.to_json()!r}\n{EVERY_KIND}"
    )
    output = run_in_blender(blender, script)
    (line,) = [line for line in output.splitlines() if line.startswith("PATHS ")]
    found = json.loads(line.removeprefix("PATHS "))
    print(found)
    assert found.pop("before").lower().startswith("f:")  # as set: a Windows path
    assert found.pop("notes") == 8
    assert found == {
        "image": "/srv/farm/tex/a.png",
        "volume": "/srv/farm/cache/smoke.vdb",
        "sound": "/srv/farm/audio/beat.wav",
        "clip": "/srv/farm/plates/p_0001.png",
        "strip": "/srv/farm/plates/",
        "output": "/srv/farm/renders/frame_####",
        "node": "/srv/farm/passes/",
        "fluid": "/srv/farm/cache/fluid",
    }


#: shots/shared.blend: an image at an absolute path outside the root (TEXTURE).
SHARED = """
import bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
image = bpy.data.images.load(TEXTURE)
image.use_fake_user = True
bpy.ops.wm.save_as_mainfile(filepath=OUTPUT)
image.filepath = TEXTURE  # Blender made it relative (//../../textures/wood.png) as it saved
bpy.ops.wm.save_as_mainfile(filepath=OUTPUT, relative_remap=False)
"""


def test_a_file_at_another_location_of_the_map_is_one_every_worker_finds(
    farm: Farm, tmp_path: Path
) -> None:
    share = tmp_path / "textures"
    share.mkdir()
    Image.new("RGB", (4, 4), (0, 0, 255)).save(share / "wood.png")
    (farm.root / "shots").mkdir()
    build(BINARY or BPY, f"TEXTURE = {str(share / 'wood.png')!r}\n{SHARED}",
          farm.root / "shots" / "shared.blend")  # fmt: skip
    code, found = statuses(farm, "shots/shared.blend")
    assert code == 1
    assert found[str(share / "wood.png")] == ("outside the root", str(share / "wood.png"), None)
    # A shared location of the map: workers on other systems (or mounts) map it.
    farm_paths(farm, "add", "textures", "--linux", str(share), "--windows", "T:\\")
    code, found = statuses(farm, "shots/shared.blend")
    assert code == 0
    assert found[str(share / "wood.png")] == ("absolute", str(share / "wood.png"), "textures")
