"""A sample split delivers what it promises: N parts of a Cycles frame, merged, are as good
as one render with all the samples, measured against a many-sample reference."""

from __future__ import annotations

from pathlib import Path

import numpy
import OpenEXR
import pytest
from PIL import Image

from tests.blender_support import BOTH_BLENDERS
from tests.conftest import Farm
from tests.test_blender_formats import build_scene

#: A noisy little scene: a sphere on a plane under a small area light, 64 samples, written
#: as 8-bit RGB PNG, adaptive sampling on (Cycles' default).
NOISY = """
scene.cycles.samples = 64
scene.render.resolution_x = scene.render.resolution_y = 48
bpy.data.objects["Sun"].data.energy = 0.5
bpy.ops.object.light_add(type="AREA", location=(2, -2, 4))
bpy.context.object.data.energy = 400
bpy.context.object.data.size = 0.5
image.file_format = "PNG"
image.color_mode = "RGB"
image.color_depth = "8"
"""
PARTS = 4
REFERENCE_SAMPLES = 1024


def linear(path: Path) -> numpy.ndarray:
    channels = OpenEXR.File(str(path), separate_channels=True).channels()
    return numpy.stack([channels[c].pixels for c in "RGB"], axis=-1).astype(numpy.float64)


def display(path: Path) -> numpy.ndarray:
    return numpy.asarray(Image.open(path).convert("RGB"), dtype=numpy.float64)


def rmse(image: numpy.ndarray, reference: numpy.ndarray) -> float:
    return float(numpy.sqrt(numpy.mean((image - reference) ** 2)))


@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_a_split_frame_is_as_good_as_one_render_with_all_the_samples(
    farm: Farm, blender: str
) -> None:
    build_scene(blender, farm.root / "shots" / "noisy.blend", NOISY)
    farm.start_worker("--blender", blender, "--slots", "2")
    farm.wait_workers(1)
    client = farm.client()
    scene = "shots/noisy.blend"
    exr = {"format": "OPEN_EXR"}  # float: the error in linear light
    jobs = {
        "split.exr": client.render(scene, "1", sample_split=PARTS, output="split_e/f_#", **exr),
        "full.exr": client.render(scene, "1", output="full_e/f_#", **exr),
        "ref.exr": client.render(scene, "1", samples=REFERENCE_SAMPLES, output="ref_e/f_#", **exr),
        # The scene's own 8-bit PNG, as an artist would look at it.
        "split.png": client.render(scene, "1", sample_split=PARTS, output="split_p/f_#"),
        "full.png": client.render(scene, "1", output="full_p/f_#"),
        "ref.png": client.render(scene, "1", samples=REFERENCE_SAMPLES, output="ref_p/f_#"),
    }
    paths = {}
    for name, job in jobs.items():
        job.wait(timeout=600)
        paths[name] = farm.root / job.results()[-1]["outputs"][0]
    assert paths["split.png"].name == "f_1.png"  # written in the scene's format

    reference = linear(paths["ref.exr"])
    split = rmse(linear(paths["split.exr"]), reference)
    full = rmse(linear(paths["full.exr"]), reference)
    reference_png = display(paths["ref.png"])
    split_png = rmse(display(paths["split.png"]), reference_png)
    full_png = rmse(display(paths["full.png"]), reference_png)
    # The parts are stretches of the full render's one sample sequence: merged, they are
    # that render, not merely as noisy as it.
    apart = rmse(linear(paths["split.exr"]), linear(paths["full.exr"]))
    figures = (
        f"RMSE against {REFERENCE_SAMPLES} samples: linear split {split:.5f} full {full:.5f}; "
        f"8-bit PNG split {split_png:.3f} full {full_png:.3f}; split against full {apart:.6f}"
    )
    print(figures)
    assert split <= 1.15 * full, figures
    assert split_png <= 1.15 * full_png, figures
    assert apart < 0.05 * full, figures
