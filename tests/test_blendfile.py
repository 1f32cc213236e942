"""Reading a .blend without Blender (buildcat/blender/blendfile.py) and what a render
submit does with it: the named scene's range, its cameras, its output, the default output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from buildcat.blender import BPY, blendfile, find_blender
from tests.blender_support import BINARY, BOTH_BLENDERS, needs_binary, needs_bpy, run_in_blender
from tests.conftest import Farm

#: Three scenes: Main (1-10, EXR 32-bit DWAA, cameras CamA and CamB, CamB in a child
#: collection), Alt (20-25 step 2, JPEG BW quality 77, the active one) and Movie (FFMPEG).
SCENES = """
import bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
main = bpy.data.scenes[0]
main.name = "Main"
main.frame_start, main.frame_end = 1, 10
main.render.resolution_x, main.render.resolution_y = 48, 32
main.render.resolution_percentage = 50
cam = bpy.data.objects.new("CamA", bpy.data.cameras.new("CamA"))
main.collection.objects.link(cam)
main.camera = cam
sub = bpy.data.collections.new("Sub")
main.collection.children.link(sub)
sub.objects.link(bpy.data.objects.new("CamB", bpy.data.cameras.new("CamB")))
sub.objects.link(bpy.data.objects.new("NotACamera", None))
image = main.render.image_settings
image.file_format, image.color_depth, image.exr_codec = "OPEN_EXR", "32", "DWAA"
alt = bpy.data.scenes.new("Alt")
alt.frame_start, alt.frame_end, alt.frame_step = 20, 25, 2
alt.render.resolution_x, alt.render.resolution_y = 16, 16
alt.render.image_settings.file_format = "JPEG"
alt.render.image_settings.quality = 77
alt.render.image_settings.color_mode = "BW"
movie = bpy.data.scenes.new("Movie")
movie.render.image_settings.file_format = "FFMPEG"
for scene in bpy.data.scenes:
    scene.render.engine = "BLENDER_WORKBENCH"
bpy.context.window.scene = alt
bpy.ops.wm.save_as_mainfile(filepath=OUTPUT.replace(".blend", "-zstd.blend"), compress=True)
bpy.ops.wm.save_as_mainfile(filepath=OUTPUT)
"""


def build(blender: str, script: str, output: Path) -> None:
    """Run a scene-building script in a real Blender (binary or bpy module); it saves OUTPUT."""
    run_in_blender(blender, f"OUTPUT = {str(output)!r}\n{script}")
    assert output.is_file()


@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_the_reader_sees_what_blender_sees(blender: str, tmp_path: Path) -> None:
    path = tmp_path / "scenes.blend"
    build(blender, SCENES, path)
    info = blendfile.read_with_bat(path)
    assert info.active == "Alt"
    assert [s.name for s in info.scenes] == ["Alt", "Main", "Movie"]
    main, alt = info.scene("Main"), info.scene()
    assert alt.name == "Alt" and alt.frames == "20-25:2"
    assert main.frames == "1-10:1"
    assert main.resolution == (48, 32) and main.resolution_percentage == 50
    assert main.camera == "CamA" and main.cameras == ("CamA", "CamB")
    assert main.output == blendfile.OutputSettings("OPEN_EXR", "RGBA", "32", "DWAA", 90)
    assert (alt.output.file_format, alt.output.color_mode, alt.output.quality) == ("JPEG", "BW", 77)
    assert info.scene("Movie").output.is_movie
    # The same answers as the Blender that saved the file, asked through its Python API.
    install = find_blender(blender)
    assert blendfile.read_with_blender(path, blender=install).scenes == info.scenes
    with pytest.raises(blendfile.FarmError, match=r"no scene named 'Nope'.*'Alt', 'Main'"):
        info.scene("Nope")
    compressed = tmp_path / "scenes-zstd.blend"
    assert compressed.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # zstd, as Blender compresses
    assert blendfile.read_with_bat(compressed) == info


def test_a_file_bat_cannot_read_is_read_by_the_newest_local_blender(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if BINARY is None and find_blender(BPY) is None:
        pytest.skip("no Blender installed")
    path = tmp_path / "scenes.blend"
    build(BINARY or BPY, SCENES, path)

    def unreadable(path: object) -> None:
        raise ValueError("a .blend this blender-asset-tracer does not understand")

    monkeypatch.setattr(blendfile, "read_with_bat", unreadable)
    info = blendfile.read_blend(path)
    newest = blendfile.newest_local_blender()
    assert info.read_with == newest.describe()
    assert info.active == "Alt" and info.scene("Main").frames == "1-10:1"


def _submit(farm: Farm, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return farm.cli("submit", "blender", "shots/scenes.blend", "--json", *args, **env)


@pytest.fixture
def scenes_farm(farm: Farm) -> Farm:
    (farm.root / "shots").mkdir()
    build(BINARY or BPY, SCENES, farm.root / "shots" / "scenes.blend")
    return farm


def _meta(farm: Farm, submitted: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert submitted.returncode == 0, submitted.stderr
    job = farm.client().job(json.loads(submitted.stdout)["id"])
    return dict(job.status()["meta"])


@needs_binary
def test_without_frames_the_named_scene_gives_the_range(scenes_farm: Farm) -> None:
    named = _meta(scenes_farm, _submit(scenes_farm, "--scene", "Main"))
    active = _meta(scenes_farm, _submit(scenes_farm, "--format", "PNG"))
    assert named["frames"] == "1-10:1"  # before: 20-25:2, the active scene's
    assert active["frames"] == "20-25:2"
    # The default output names the scene, so two scenes of one file never share frames.
    assert named["output"] == "renders/scenes/Main/frame_####"
    assert active["output"] == "renders/scenes/Alt/frame_####"


#: A `blender` that answers --version like Debian's 3.4.1 and crashes on anything else,
#: as Blender 3.4.1 crashed reading a 4.5 file (issue 13: exit code -11).
CRASHING_BLENDER = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "Blender 3.4.1"; exit 0; fi
kill -SEGV $$
"""


@needs_binary
@needs_bpy
def test_a_newer_file_without_frames_needs_no_blender_that_opens_it(
    scenes_farm: Farm, tmp_path: Path
) -> None:
    """A 4.5 file, and the local `blender` is a 3.4 that crashes on it: the range is read
    from the file, without starting that Blender."""
    build(BPY, SCENES, scenes_farm.root / "shots" / "scenes.blend")
    crashing = tmp_path / "blender"
    crashing.write_text(CRASHING_BLENDER)
    crashing.chmod(0o755)
    meta = _meta(scenes_farm, _submit(scenes_farm, "--scene", "Main", BLENDER=str(crashing)))
    # Before: "Blender 3.4.1 (binary .../blender) could not read ... (exit code -11)".
    assert meta["frames"] == "1-10:1"
    assert meta["blend_version"] == "4.5"


@needs_binary
def test_a_scene_or_camera_the_file_lacks_is_refused_naming_those_it_has(
    scenes_farm: Farm,
) -> None:
    scene = _submit(scenes_farm, "--scene", "Nope", "--frames", "1")
    camera = _submit(scenes_farm, "--scene", "Main", "--camera", "CamZ", "--frames", "1")
    not_a_camera = _submit(scenes_farm, "--scene", "Main", "--camera", "NotACamera")
    assert scene.returncode != 0
    assert "no scene named 'Nope' in this file (scenes: 'Alt', 'Main', 'Movie')" in scene.stderr
    assert camera.returncode != 0 and not_a_camera.returncode != 0
    assert "no camera named 'CamZ' in scene 'Main' (cameras: 'CamA', 'CamB')" in camera.stderr
    assert "no camera named 'NotACamera'" in not_a_camera.stderr
    assert all(text.stderr.count("\n") == 1 for text in (scene, camera, not_a_camera))
    assert scenes_farm.client().jobs() == []
    # A camera in a child collection of the scene is one of its cameras.
    assert _meta(scenes_farm, _submit(scenes_farm, "--scene", "Main", "--camera", "CamB"))


@needs_binary
def test_a_movie_output_is_refused_unless_a_format_is_given(scenes_farm: Farm) -> None:
    refused = _submit(scenes_farm, "--scene", "Movie", "--frames", "1-3")
    assert refused.returncode != 0
    assert "scene 'Movie' writes a movie (FFMPEG): render frames (PNG/EXR), then make a video" in (
        refused.stderr
    )
    assert scenes_farm.client().jobs() == []
    meta = _meta(scenes_farm, _submit(scenes_farm, "--scene", "Movie", "--frames", "1-3",
                                      "--format", "PNG"))  # fmt: skip
    assert meta["format"] == "PNG"


def test_the_default_output_names_the_scene_safely() -> None:
    from buildcat.jobs.blender import default_output

    assert default_output("shots/a.blend", "Main") == "renders/a/Main/frame_####"
    assert default_output("shots/a.blend", "Shot #1/b") == "renders/a/Shot _1_b/frame_####"
    assert default_output("a.blend", "..") == "renders/a/_/frame_####"


def test_farm_check_needs_no_server(tmp_path: Path) -> None:
    if shutil.which("blender") is None and find_blender(BPY) is None:
        pytest.skip("no Blender installed")
    path = tmp_path / "plain.blend"
    build(BINARY or BPY, SCENES, path)
    done = subprocess.run(
        [sys.executable, "-m", "buildcat", "check", "plain.blend", "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "plain.blend: 0 files"
