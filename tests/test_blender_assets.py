"""Files a .blend depends on: `farm check`, the submit's refusal, the worker's check before
rendering, and a warm Blender that reloads when a library or a texture changed."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from buildcat.blender import BPY
from tests.blender_support import BINARY, BOTH_BLENDERS, needs_binary, warm_blenders
from tests.conftest import Farm, wait_for
from tests.test_blendfile import build

ORANGE, GREEN = (1.0, 0.3, 0.0), (0.0, 0.8, 0.1)
BLUE, RED = (0, 0, 255), (255, 0, 0)

#: shots/lib/props.blend: a plane "Prop" glowing in COLOR; its material also holds the
#: library's own texture (//tex/lib_paint.png, beside the library), unconnected.
LIBRARY = """
import bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.wm.save_as_mainfile(filepath=OUTPUT)
material = bpy.data.materials.new("PropGlow")
material.use_nodes = True
nodes = material.node_tree.nodes
nodes.clear()
emission = nodes.new("ShaderNodeEmission")
emission.inputs[0].default_value = (*COLOR, 1.0)
output = nodes.new("ShaderNodeOutputMaterial")
material.node_tree.links.new(emission.outputs[0], output.inputs[0])
nodes.new("ShaderNodeTexImage").image = bpy.data.images.load("//tex/lib_paint.png")
mesh = bpy.data.meshes.new("Prop")
mesh.from_pydata([(0.2, -1, 0), (1.8, -1, 0), (1.8, 1, 0), (0.2, 1, 0)], [], [(0, 1, 2, 3)])
mesh.materials.append(material)
bpy.context.scene.collection.objects.link(bpy.data.objects.new("Prop", mesh))
bpy.ops.wm.save_as_mainfile(filepath=OUTPUT)
"""

#: shots/linked.blend: the library's Prop linked on the right, a plane showing the texture
#: //tex/paint.png on the left, an orthographic camera above; Cycles 32x32, 4 samples.
LINKED = """
import bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.wm.save_as_mainfile(filepath=OUTPUT)
scene = bpy.context.scene
with bpy.data.libraries.load("//lib/props.blend", link=True, relative=True) as (source, target):
    target.objects = ["Prop"]
for obj in target.objects:
    scene.collection.objects.link(obj)
material = bpy.data.materials.new("Paint")
material.use_nodes = True
nodes = material.node_tree.nodes
nodes.clear()
texture = nodes.new("ShaderNodeTexImage")
texture.image = bpy.data.images.load("//tex/paint.png")
emission = nodes.new("ShaderNodeEmission")
output = nodes.new("ShaderNodeOutputMaterial")
material.node_tree.links.new(texture.outputs[0], emission.inputs[0])
material.node_tree.links.new(emission.outputs[0], output.inputs[0])
mesh = bpy.data.meshes.new("Board")
mesh.from_pydata([(-1.8, -1, 0), (-0.2, -1, 0), (-0.2, 1, 0), (-1.8, 1, 0)], [], [(0, 1, 2, 3)])
mesh.materials.append(material)
scene.collection.objects.link(bpy.data.objects.new("Board", mesh))
camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
camera.data.type = "ORTHO"
camera.data.ortho_scale = 4.0
camera.location = (0, 0, 5)
scene.collection.objects.link(camera)
scene.camera = camera
scene.render.engine = "CYCLES"
scene.cycles.samples = 4
scene.cycles.use_denoising = False
scene.render.resolution_x = scene.render.resolution_y = 32
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = "PNG"
scene.render.image_settings.color_mode = "RGB"
scene.render.image_settings.color_depth = "8"
scene.view_settings.view_transform = "Standard"
scene.frame_start = scene.frame_end = 1
bpy.ops.wm.save_as_mainfile(filepath=OUTPUT)
"""

#: shots/check.blend: linked.blend and more: an absolute path inside the root, a file
#: outside it, a missing image, a missing volume, a sound (kept by fake users).
EXTRAS = """
import bpy
bpy.ops.wm.open_mainfile(filepath=SOURCE)
for path in (INSIDE, OUTSIDE_FILE, "//tex/nothere.png"):
    image = bpy.data.images.new(path.rsplit("/", 1)[-1], 4, 4)
    image.source = "FILE"
    image.filepath = path
    image.use_fake_user = True
volume = bpy.data.volumes.new("smoke")
volume.filepath = "//cache/smoke.vdb"
volume.use_fake_user = True
bpy.data.sounds.load("//audio/beat.wav").use_fake_user = True
bpy.ops.wm.save_as_mainfile(filepath=OUTPUT)
"""


def write_png(path: Path, rgb: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), rgb).save(path)


def build_library(blender: str, shots: Path, color: tuple[float, float, float]) -> None:
    build(blender, f"COLOR = {color!r}\n{LIBRARY}", shots / "lib" / "props.blend")


def build_linked(blender: str, shots: Path) -> Path:
    """shots/linked.blend with its library and both textures; returns its path."""
    write_png(shots / "tex" / "paint.png", BLUE)
    write_png(shots / "lib" / "tex" / "lib_paint.png", (255, 255, 255))
    build_library(blender, shots, ORANGE)
    build(blender, LINKED, shots / "linked.blend")
    return shots / "linked.blend"


def plain_render(blender: str, blend: Path, out: Path) -> np.ndarray:
    """Frame 1 as Blender alone renders it: `blender -b FILE -f 1`, or bpy doing the same."""
    out.mkdir(parents=True)
    if blender == BPY:
        script = (
            "import bpy\n"
            f"bpy.ops.wm.open_mainfile(filepath={str(blend)!r})\n"
            "scene = bpy.context.scene\n"
            "scene.frame_set(1)\n"
            f"scene.render.filepath = {str(out / 'frame_0001.png')!r}\n"
            "bpy.ops.render.render(write_still=True)\n"
        )
        command = [sys.executable, "-c", script]
    else:
        command = [blender, "-b", str(blend), "-o", str(out / "frame_####"), "-F", "PNG",
                   "-x", "1", "-f", "1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return pixels(out / "frame_0001.png")


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def check(farm: Farm, *args: str) -> subprocess.CompletedProcess[str]:
    return farm.cli("check", *args)


def submit(farm: Farm, scene: str, *args: str) -> subprocess.CompletedProcess[str]:
    return farm.cli(
        "submit", "blender", scene, "--frames", "1", "--max-attempts", "1", "--json", *args
    )


def job_of(farm: Farm, submitted: subprocess.CompletedProcess[str]) -> str:
    assert submitted.returncode == 0, submitted.stderr
    return str(json.loads(submitted.stdout)["id"])


# ---- farm check and the submit's refusal ------------------------------------------------------


@pytest.fixture
def check_scene(farm: Farm, tmp_path: Path) -> Path:
    shots = farm.root / "shots"
    blender = BINARY or BPY
    build_linked(blender, shots)
    inside = farm.root / "shared" / "abs.png"
    outside = tmp_path / "elsewhere" / "out.png"
    write_png(inside, RED)
    write_png(outside, RED)
    (shots / "audio").mkdir()
    with wave.open(str(shots / "audio" / "beat.wav"), "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(8000)
        sound.writeframes(b"\0\0" * 800)
    script = (
        f"SOURCE = {str(shots / 'linked.blend')!r}\nINSIDE = {str(inside)!r}\n"
        f"OUTSIDE_FILE = {str(outside)!r}\n{EXTRAS}"
    )
    build(blender, script, shots / "check.blend")
    return outside


def test_farm_check_lists_every_file_through_libraries(farm: Farm, check_scene: Path) -> None:
    done = check(farm, "shots/check.blend", "--json")
    assert done.returncode == 1  # something is missing or outside the root
    report = json.loads(done.stdout)
    found = {(a["kind"], a["path"], a["used_by"]): a["status"] for a in report["assets"]}
    inside = str(farm.root / "shared" / "abs.png")
    assert found == {
        ("library", "//lib/props.blend", "shots/check.blend"): "relative",
        ("image", "//tex/lib_paint.png", "shots/lib/props.blend"): "relative",  # the library's
        ("image", "//tex/paint.png", "shots/check.blend"): "relative",
        ("image", inside, "shots/check.blend"): "absolute",
        ("image", str(check_scene), "shots/check.blend"): "outside the root",
        ("image", "//tex/nothere.png", "shots/check.blend"): "missing",
        ("volume", "//cache/smoke.vdb", "shots/check.blend"): "missing",
        ("sound", "//audio/beat.wav", "shots/check.blend"): "relative",
    }
    assert report["problems"] == 3
    text = check(farm, "shots/check.blend")
    assert text.returncode == 1
    assert "shots/check.blend: 8 files: 4 relative, 1 absolute, 1 outside the root, 2 missing" in (
        text.stdout
    )
    assert text.stderr == "farm: error: 3 file(s) missing or outside the root\n"
    fine = check(farm, "shots/linked.blend")
    assert fine.returncode == 0, fine.stderr
    assert fine.stdout.strip().endswith("shots/linked.blend: 3 files: 3 relative")
    gone = check(farm, "shots/nothing.blend")
    assert gone.returncode != 0 and gone.stderr.count("\n") == 1


def test_submit_refuses_missing_files_and_files_outside_the_root(
    farm: Farm, check_scene: Path
) -> None:
    refused = submit(farm, "shots/check.blend")
    assert refused.returncode != 0
    line = refused.stderr.strip()
    assert line.count("\n") == 0 and "--allow-missing" in line
    for named in ("//tex/nothere.png (missing", "//cache/smoke.vdb (missing",
                  f"{check_scene} (outside the root"):  # fmt: skip
        assert named in line
    assert "paint.png (" not in line and "abs.png" not in line  # those a worker finds
    assert farm.client().jobs() == []
    allowed = submit(farm, "shots/check.blend", "--allow-missing")
    job = farm.client().job(job_of(farm, allowed))
    assert job.tasks()[0]["state"] == "queued"


# ---- the worker's check before rendering ------------------------------------------------------

WORKER_BLENDERS = [
    *BOTH_BLENDERS,
    pytest.param(BINARY or "blender", id="binary-3.4-per-task", marks=needs_binary),
]


@pytest.mark.parametrize("blender", WORKER_BLENDERS)
def test_a_texture_gone_after_submit_fails_the_task_naming_it(
    blender: str, farm: Farm, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    if request.node.callspec.id.endswith("per-task"):
        monkeypatch.setenv("BUILDCAT_BLENDER_WARM", "0")  # override.py runs before -f
    shots = farm.root / "shots"
    build_linked(blender, shots)
    before = submit(farm, "shots/linked.blend", "--output", "lost/frame_####")
    (shots / "tex" / "paint.png").unlink()  # after the submit's check
    refused = submit(farm, "shots/linked.blend", "--output", "refused/frame_####")
    assert refused.returncode != 0 and "//tex/paint.png (missing, image" in refused.stderr
    allowed = submit(farm, "shots/linked.blend", "--output", "allowed/frame_####",
                     "--allow-missing")  # fmt: skip
    farm.start_worker("--blender", blender)
    client = farm.client()
    lost, rendered = client.job(job_of(farm, before)), client.job(job_of(farm, allowed))
    wait_for(lambda: lost.status()["state"] == "failed", timeout=300, interval=0.2)
    (task,) = lost.tasks()
    # Before: "done", exit 0, the board magenta (52 % of the frame).
    assert task["attempts"] == 1
    assert "missing files: //tex/paint.png (image 'paint.png', looked for " in task["error"]
    assert str(shots / "tex" / "paint.png") in task["error"]
    assert not list((farm.root / "lost").glob("frame_*"))
    rendered.wait(timeout=300)  # allowed: rendered anyway, the board magenta
    frame = pixels(farm.root / "allowed" / "frame_0001.png")
    magenta = (frame[..., 0] > 200) & (frame[..., 1] < 40) & (frame[..., 2] > 200)
    print(f"allowed: {magenta.mean():.0%} of the frame magenta")
    board = frame[8:24, 2:12]
    assert (board[..., 0] > 200).all() and (board[..., 2] > 200).all()  # magenta
    assert (board[..., 1] < 40).all()


# ---- a warm Blender never renders stale data -------------------------------------------------


@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_a_warm_blender_reloads_an_edited_library_and_texture(
    blender: str, farm: Farm, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BUILDCAT_BLENDER_IDLE_SECONDS", "600")  # stays warm between the jobs
    shots = farm.root / "shots"
    scene = build_linked(blender, shots)
    worker = farm.start_worker("--blender", blender)
    client = farm.client()
    first = client.job(job_of(farm, submit(farm, "shots/linked.blend", "--output", "a/f_####")))
    first.wait(timeout=300)
    (warm,) = warm_blenders(worker)
    np.testing.assert_array_equal(
        pixels(farm.root / "a" / "f_0001.png"), plain_render(blender, scene, tmp_path / "p1")
    )
    build_library(blender, shots, GREEN)  # the linked prop: orange to green
    write_png(shots / "tex" / "paint.png", RED)  # the board: blue to red
    second = client.job(job_of(farm, submit(farm, "shots/linked.blend", "--output", "b/f_####")))
    second.wait(timeout=300)
    assert warm_blenders(worker) == [warm]  # the same Blender rendered both jobs
    farm_frame = pixels(farm.root / "b" / "f_0001.png")
    plain = plain_render(blender, scene, tmp_path / "p2")
    difference = int(np.abs(farm_frame - plain).max())
    print(f"warm second job against a plain render of the edited files: max {difference}")
    assert difference == 0  # before: the old orange and blue, off by up to 255
    board, prop = farm_frame[8:24, 2:12], farm_frame[8:24, 20:30]
    assert (board[..., 0] > 200).all() and (board[..., 2] < 40).all()  # red
    assert (prop[..., 1] > 100).all() and (prop[..., 0] < 40).all()  # green
