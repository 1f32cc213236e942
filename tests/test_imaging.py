"""Images with Pillow: whole-file saving, render frames (alpha over black, EXR through
ffmpeg), the mandelbrot tiles, and the demo assembling them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy
import OpenEXR
import pytest
from PIL import Image

from buildcat import imaging
from buildcat.errors import FarmError
from buildcat.imaging import mandelbrot_rgb, open_frame, read_rgb, rgb_image, save_image


def test_save_image_writes_the_whole_file_under_its_name_only(tmp_path: Path) -> None:
    rgb = os.urandom(37 * 23 * 3)
    path = tmp_path / "image.png"
    save_image(rgb_image(37, 23, rgb), path)
    assert read_rgb(path) == (37, 23, rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["image.png"]  # no temporary left
    with pytest.raises(ValueError, match="needs 6"):
        rgb_image(2, 1, b"12345")


def test_save_image_leaves_nothing_when_it_fails(tmp_path: Path) -> None:
    with pytest.raises((OSError, KeyError, ValueError)):
        save_image(rgb_image(2, 2, bytes(12)), tmp_path / "image.png", file_format="NOPE")
    assert list(tmp_path.iterdir()) == []


def test_frames_with_alpha_are_composited_over_black(tmp_path: Path) -> None:
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (4, 2), (200, 100, 50, 128)).save(path)
    frame = open_frame(path)
    assert frame.mode == "RGB"
    assert frame.getpixel((0, 0)) == pytest.approx((100, 50, 25), abs=1)
    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (4, 2), (10, 200, 30)).save(plain, quality=100)
    assert open_frame(plain).getpixel((1, 1)) == pytest.approx((10, 200, 30), abs=3)


def test_exr_frames_are_read_with_the_srgb_curve(tmp_path: Path) -> None:
    path = tmp_path / "linear.exr"
    pixels = numpy.zeros((3, 5, 3), dtype=numpy.float32)
    pixels[:] = (0.2140, 0.0, 1.0)  # linear light; in sRGB (128, 0, 255)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {"RGB": pixels}).write(str(path))
    frame = open_frame(path)
    assert frame.size == (5, 3)
    assert frame.getpixel((2, 1)) == pytest.approx((128, 0, 255), abs=2)
    with pytest.raises(FarmError, match="ffmpeg could not read"):
        broken = tmp_path / "broken.exr"
        broken.write_bytes(b"not an exr")
        open_frame(broken)


def test_a_contact_sheet_lays_frames_out_row_by_row(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (90, 90, 0)]
    frames = []
    for number, colour in zip([3, 5, 7, 9, 11], colours, strict=True):
        path = tmp_path / f"f_{number:04d}.png"
        Image.new("RGB", (40, 20), colour).save(path)
        frames.append((number, path))
    sheet = imaging.contact_sheet(frames, columns=2, width=60)
    gap, label = imaging.SHEET_GAP, imaging.sheet_label_height()
    assert sheet.size == (2 * (60 + gap) + gap, 3 * (30 + label + gap) + gap)
    for index, colour in enumerate(colours):
        row, column = divmod(index, 2)
        centre = (gap + column * (60 + gap) + 30, gap + row * (30 + label + gap) + 15)
        assert sheet.getpixel(centre) == colour
    # Each label strip holds text (its frame number), the empty sixth cell none.
    strip = sheet.crop((gap, gap + 30, gap + 60, gap + 30 + label))
    assert len(strip.getcolors() or []) > 1
    assert imaging.sheet_columns(5) == 3  # square-ish by default
    with pytest.raises(FarmError, match="at least one frame"):
        imaging.contact_sheet([])


def test_mandelbrot_tiles_pasted_together_equal_the_whole_image() -> None:
    width, height = 97, 61
    whole = mandelbrot_rgb(width, height, 0, 0, width, height)
    assert len(whole) == width * height * 3
    canvas = Image.new("RGB", (width, height))
    columns, rows = 4, 3
    for row in range(rows):
        for column in range(columns):
            x0, x1 = width * column // columns, width * (column + 1) // columns
            y0, y1 = height * row // rows, height * (row + 1) // rows
            tile = mandelbrot_rgb(width, height, x0, y0, x1 - x0, y1 - y0)
            assert len(tile) == (x1 - x0) * (y1 - y0) * 3
            canvas.paste(rgb_image(x1 - x0, y1 - y0, tile), (x0, y0))
    assert canvas.tobytes() == whole


def test_mandelbrot_looks_like_a_mandelbrot() -> None:
    width, height = 64, 48
    rgb = mandelbrot_rgb(width, height, 0, 0, width, height)
    pixels = {rgb[i : i + 3] for i in range(0, len(rgb), 3)}
    assert len(pixels) > 20

    def pixel(x: int, y: int) -> bytes:
        start = (y * width + x) * 3
        return rgb[start : start + 3]

    # The centre of the view, -0.6+0j, lies inside the set (black); a corner escapes.
    assert pixel(width // 2, height // 2) == b"\x00\x00\x00"
    assert pixel(0, 0) != b"\x00\x00\x00"
    assert pixel(10, 5) == pixel(10, height - 1 - 5)  # symmetric about the real axis


@pytest.mark.parametrize(
    ("x0", "y0", "tile_w", "tile_h"),
    [(-1, 0, 2, 2), (0, 0, 0, 2), (9, 0, 2, 2), (0, 7, 2, 2)],
)
def test_mandelbrot_refuses_a_tile_outside_the_view(
    x0: int, y0: int, tile_w: int, tile_h: int
) -> None:
    with pytest.raises(ValueError, match="tile"):
        mandelbrot_rgb(10, 8, x0, y0, tile_w, tile_h)
