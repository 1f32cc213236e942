"""PNG writing and reading, the mandelbrot tiles and pasting them into a canvas."""

from __future__ import annotations

import os
import random
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildcat.imaging import (
    PNG_SIGNATURE,
    decode_png,
    encode_png,
    mandelbrot_rgb,
    paste,
    read_png,
    write_png,
)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _paeth(left: int, up: int, upper_left: int) -> int:
    estimate = left + up - upper_left
    to_left, to_up = abs(estimate - left), abs(estimate - up)
    to_upper_left = abs(estimate - upper_left)
    if to_left <= to_up and to_left <= to_upper_left:
        return left
    return up if to_up <= to_upper_left else upper_left


def _filter_row(kind: int, line: bytes, previous: bytes, bpp: int) -> bytes:
    """Encode one row with PNG filter ``kind``, written independently of the decoder."""
    out = bytearray()
    for i, value in enumerate(line):
        left = line[i - bpp] if i >= bpp else 0
        up = previous[i]
        upper_left = previous[i - bpp] if i >= bpp else 0
        predictor = [0, left, up, (left + up) // 2, _paeth(left, up, upper_left)][kind]
        out.append((value - predictor) % 256)
    return bytes([kind]) + bytes(out)


def _png(
    width: int,
    height: int,
    pixels: bytes,
    *,
    colour_type: int = 2,
    bit_depth: int = 8,
    interlace: int = 0,
    filters: list[int] | None = None,
    idat_pieces: int = 1,
    extra_chunks: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A PNG built by hand, with a chosen filter for each row and the data split in pieces."""
    bpp = {2: 3, 6: 4}.get(colour_type, 3)
    stride = width * bpp
    rows = filters or [0] * height
    raw = bytearray()
    previous = bytes(stride)
    for row in range(height):
        line = pixels[row * stride : (row + 1) * stride]
        raw += _filter_row(rows[row], line, previous, bpp)
        previous = line
    compressed = zlib.compress(bytes(raw))
    size = -(-len(compressed) // idat_pieces)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace)
    chunks = [PNG_SIGNATURE, _chunk(b"IHDR", header)]
    chunks += [_chunk(kind, data) for kind, data in extra_chunks]
    chunks += [
        _chunk(b"IDAT", compressed[start : start + size])
        for start in range(0, len(compressed), size)
    ]
    chunks.append(_chunk(b"IEND", b""))
    return b"".join(chunks)


def _random_bytes(count: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(count)


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    rgb = _random_bytes(37 * 23 * 3, seed=1)
    path = tmp_path / "image.png"
    write_png(path, 37, 23, rgb)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert read_png(path) == (37, 23, rgb)
    assert read_png(str(path)) == (37, 23, rgb)


@settings(max_examples=40)
@given(st.integers(1, 9), st.integers(1, 9), st.data())
def test_encode_then_decode_round_trips(width: int, height: int, data: st.DataObject) -> None:
    rgb = data.draw(st.binary(min_size=width * height * 3, max_size=width * height * 3))
    assert decode_png(encode_png(width, height, rgb)) == (width, height, rgb)


def test_write_png_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "frame.png"
    write_png(path, 2, 1, b"\x01\x02\x03\x04\x05\x06")
    write_png(path, 1, 1, b"\xff\x00\x80")
    assert read_png(path) == (1, 1, b"\xff\x00\x80")
    assert os.listdir(tmp_path) == ["frame.png"]


def test_write_png_refuses_the_wrong_number_of_bytes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs 12"):
        write_png(tmp_path / "bad.png", 2, 2, b"\x00" * 11)
    with pytest.raises(ValueError, match="bad image size 0x2"):
        write_png(tmp_path / "bad.png", 0, 2, b"")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("colour_type", [2, 6])
def test_read_png_undoes_all_five_filters(tmp_path: Path, colour_type: int) -> None:
    width, height = 11, 10
    bpp = 3 if colour_type == 2 else 4
    pixels = _random_bytes(width * height * bpp, seed=colour_type)
    filters = [0, 1, 2, 3, 4, 4, 3, 2, 1, 0]
    path = tmp_path / "filters.png"
    path.write_bytes(
        _png(width, height, pixels, colour_type=colour_type, filters=filters, idat_pieces=3)
    )
    expected = bytearray(width * height * 3)
    for channel in range(3):
        expected[channel::3] = pixels[channel::bpp]
    assert read_png(path) == (width, height, bytes(expected))


def test_read_png_skips_ancillary_chunks(tmp_path: Path) -> None:
    rgb = _random_bytes(4 * 3 * 3, seed=3)
    path = tmp_path / "text.png"
    path.write_bytes(_png(4, 3, rgb, extra_chunks=((b"tEXt", b"Software\x00Blender"),)))
    assert read_png(path) == (4, 3, rgb)


def test_read_png_rejects_a_non_png_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n")
    with pytest.raises(ValueError, match=r"notes\.png: not a PNG file"):
        read_png(path)


def test_read_png_rejects_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="not a PNG file"):
        read_png(path)


def _rgb_png(bit_depth: int = 8, interlace: int = 0) -> bytes:
    return _png(3, 2, bytes(range(18)), bit_depth=bit_depth, interlace=interlace)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_rgb_png(bit_depth=16), "16-bit; only 8-bit"),
        (_png(3, 2, bytes(6), colour_type=0), "greyscale; only RGB and RGBA"),
        (_png(3, 2, bytes(6), colour_type=3), "palette; only RGB and RGBA"),
        (_rgb_png(interlace=1), "interlaced"),
        (_rgb_png()[:-12], "no IEND chunk"),
        (_rgb_png()[:40], "truncated PNG"),
        (PNG_SIGNATURE, "no IHDR chunk"),
        (_rgb_png()[:30] + b"\x00" + _rgb_png()[31:], "bad CRC in chunk b'IHDR'"),
        (PNG_SIGNATURE + _chunk(b"IDAT", b"") + _chunk(b"IEND", b""), "not IHDR"),
        (_png(3, 2, bytes(range(18)), extra_chunks=((b"ZZZZ", b""),)), "unknown critical chunk"),
    ],
)
def test_read_png_explains_what_it_cannot_read(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "odd.png"
    path.write_bytes(data)
    with pytest.raises(ValueError) as caught:
        read_png(path)
    message = str(caught.value)
    assert reason in message
    assert str(path) in message
    assert "\n" not in message


def test_read_png_rejects_an_unknown_filter_type() -> None:
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    data = b"".join(
        [
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(b"\x05\x01\x02\x03")),
            _chunk(b"IEND", b""),
        ]
    )
    with pytest.raises(ValueError, match="unknown filter type 5"):
        decode_png(data)


@pytest.mark.parametrize(
    ("image_data", "reason"),
    [
        (b"\x00\x01\x02", "expected 4"),
        (b"\x00\x01\x02\x03\x04", "expected 4"),
    ],
)
def test_read_png_rejects_the_wrong_amount_of_image_data(image_data: bytes, reason: str) -> None:
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    data = b"".join(
        [
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(image_data)),
            _chunk(b"IEND", b""),
        ]
    )
    with pytest.raises(ValueError, match=reason):
        decode_png(data)


def test_read_png_rejects_data_that_does_not_inflate() -> None:
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    data = b"".join(
        [
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", b"not zlib at all"),
            _chunk(b"IEND", b""),
        ]
    )
    with pytest.raises(ValueError, match="damaged PNG"):
        decode_png(data)


def test_mandelbrot_tiles_pasted_together_equal_the_whole_image() -> None:
    width, height = 97, 61
    whole = mandelbrot_rgb(width, height, 0, 0, width, height)
    assert len(whole) == width * height * 3
    canvas = bytearray(width * height * 3)
    columns, rows = 4, 3
    for row in range(rows):
        for column in range(columns):
            x0, x1 = width * column // columns, width * (column + 1) // columns
            y0, y1 = height * row // rows, height * (row + 1) // rows
            tile = mandelbrot_rgb(width, height, x0, y0, x1 - x0, y1 - y0)
            assert len(tile) == (x1 - x0) * (y1 - y0) * 3
            paste(canvas, width, tile, x0, y0, x1 - x0, y1 - y0)
    assert bytes(canvas) == whole


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


def test_paste_copies_rows_into_place() -> None:
    canvas = bytearray(4 * 3 * 3)
    tile = bytes(range(1, 13))  # 2x2 pixels
    paste(canvas, 4, tile, 1, 1, 2, 2)
    row_bytes = 4 * 3
    assert canvas[:row_bytes] == bytes(row_bytes)
    assert canvas[row_bytes : 2 * row_bytes] == b"\x00" * 3 + tile[:6] + b"\x00" * 3
    assert canvas[2 * row_bytes : 3 * row_bytes] == b"\x00" * 3 + tile[6:] + b"\x00" * 3


@pytest.mark.parametrize(
    ("tile", "x0", "y0", "tile_w", "tile_h", "reason"),
    [
        (bytes(12), 3, 0, 2, 2, "runs outside the 4x3 canvas"),
        (bytes(12), 0, 2, 2, 2, "runs outside the 4x3 canvas"),
        (bytes(12), -1, 0, 2, 2, "runs outside the 4x3 canvas"),
        (bytes(11), 0, 0, 2, 2, "not a 2x2 RGB image"),
    ],
)
def test_paste_refuses_what_does_not_fit(
    tile: bytes, x0: int, y0: int, tile_w: int, tile_h: int, reason: str
) -> None:
    canvas = bytearray(4 * 3 * 3)
    with pytest.raises(ValueError, match=reason):
        paste(canvas, 4, tile, x0, y0, tile_w, tile_h)
    assert canvas == bytearray(4 * 3 * 3)
