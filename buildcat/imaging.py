"""Tiny image helpers on the standard library only: RGB PNG files, a mandelbrot tile, pasting.

Images are 8-bit RGB ``bytes``, row by row from the top, three bytes a pixel.
"""

from __future__ import annotations

import math
import os
import secrets
import struct
import zlib
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_COLOUR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale with alpha", 6: "RGBA"}
_CHANNELS = {2: 3, 6: 4}
_MAX_SIDE = 2**31 - 1


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _check_size(width: int, height: int) -> None:
    if not (1 <= width <= _MAX_SIDE and 1 <= height <= _MAX_SIDE):
        raise ValueError(f"bad image size {width}x{height}: each side must be 1 to {_MAX_SIDE}")


def encode_png(width: int, height: int, rgb: bytes | bytearray) -> bytes:
    """Return the bytes of an 8-bit RGB PNG of ``rgb`` (``width * height * 3`` bytes)."""
    _check_size(width, height)
    stride = width * 3
    if len(rgb) != stride * height:
        raise ValueError(
            f"{len(rgb)} bytes of pixels for a {width}x{height} RGB image,"
            f" which needs {stride * height}"
        )
    view = memoryview(rgb)
    # Filter type 0 on every row: simple, and zlib does well enough on rendered tiles.
    raw = b"".join(b"\x00" + view[row * stride : (row + 1) * stride] for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        [
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw, 6)),
            _chunk(b"IEND", b""),
        ]
    )


def write_png(
    path: str | os.PathLike[str], width: int, height: int, rgb: bytes | bytearray
) -> None:
    """Write ``rgb`` as an 8-bit RGB PNG at ``path``, atomically.

    The file is written under a temporary name in the same folder and then renamed over
    ``path``, so a reader on another host sees either the old file or the whole new one.
    """
    data = encode_png(width, height, rgb)
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open rather than tempfile: mode 0o666 under the umask, so other hosts can read it.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _unfilter(data: bytes, width: int, height: int, bpp: int) -> bytearray:
    """Undo PNG's per-row filters (types 0 to 4) and return the bare pixel bytes."""
    stride = width * bpp
    pixels = bytearray(stride * height)
    previous = bytearray(stride)
    # Byte-wise addition mod 256 on whole rows at once, for the Up filter.
    low7 = int.from_bytes(b"\x7f" * stride, "big")
    high1 = int.from_bytes(b"\x80" * stride, "big")
    for row in range(height):
        start = row * (stride + 1)
        filter_type = data[start]
        line = bytearray(data[start + 1 : start + 1 + stride])
        if filter_type == 0:
            pass
        elif filter_type == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif filter_type == 2:
            if row:
                a = int.from_bytes(line, "big")
                b = int.from_bytes(previous, "big")
                total = ((a & low7) + (b & low7)) ^ ((a ^ b) & high1)
                line = bytearray(total.to_bytes(stride, "big"))
        elif filter_type == 3:
            for i in range(bpp):
                line[i] = (line[i] + (previous[i] >> 1)) & 0xFF
            for i in range(bpp, stride):
                line[i] = (line[i] + ((line[i - bpp] + previous[i]) >> 1)) & 0xFF
        elif filter_type == 4:
            for i in range(bpp):
                line[i] = (line[i] + previous[i]) & 0xFF
            for i in range(bpp, stride):
                left = line[i - bpp]
                up = previous[i]
                upper_left = previous[i - bpp]
                estimate = left + up - upper_left
                to_left = abs(estimate - left)
                to_up = abs(estimate - up)
                to_upper_left = abs(estimate - upper_left)
                if to_left <= to_up and to_left <= to_upper_left:
                    predictor = left
                elif to_up <= to_upper_left:
                    predictor = up
                else:
                    predictor = upper_left
                line[i] = (line[i] + predictor) & 0xFF
        else:
            raise ValueError(f"bad PNG: row {row} has unknown filter type {filter_type}")
        pixels[row * stride : (row + 1) * stride] = line
        previous = line
    return pixels


def decode_png(data: bytes, name: str = "PNG") -> tuple[int, int, bytes]:
    """Return ``(width, height, rgb)`` from the bytes of an 8-bit RGB or RGBA PNG.

    Alpha is dropped. Anything else (other bit depths or colour types, interlacing,
    damaged or truncated data) raises ValueError naming ``name`` and the reason.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{name}: not a PNG file")
    position = len(PNG_SIGNATURE)
    header: tuple[int, ...] | None = None
    compressed: list[bytes] = []
    ended = False
    while position < len(data):
        if position + 8 > len(data):
            raise ValueError(f"{name}: truncated PNG (partial chunk header)")
        length, kind = struct.unpack_from(">I4s", data, position)
        body_start = position + 8
        body_end = body_start + length
        if body_end + 4 > len(data):
            raise ValueError(f"{name}: truncated PNG (chunk {kind!r} runs past the end)")
        body = data[body_start:body_end]
        (crc,) = struct.unpack_from(">I", data, body_end)
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"{name}: damaged PNG (bad CRC in chunk {kind!r})")
        position = body_end + 4
        if header is None and kind != b"IHDR":
            raise ValueError(f"{name}: bad PNG (first chunk is {kind!r}, not IHDR)")
        if kind == b"IHDR":
            if header is not None or length != 13:
                raise ValueError(f"{name}: bad PNG (malformed IHDR chunk)")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            ended = True
            break
        elif kind != b"PLTE" and not kind[0] & 0x20:
            # An upper-case first letter marks a critical chunk: one we cannot skip.
            raise ValueError(f"{name}: unsupported PNG (unknown critical chunk {kind!r})")
    if header is None:
        raise ValueError(f"{name}: truncated PNG (no IHDR chunk)")
    if not ended:
        raise ValueError(f"{name}: truncated PNG (no IEND chunk)")
    width, height, bit_depth, colour_type, compression, filter_method, interlace = header
    _check_size(width, height)
    if colour_type not in _CHANNELS:
        kind_name = _COLOUR_TYPES.get(colour_type, f"colour type {colour_type}")
        raise ValueError(f"{name}: unsupported PNG ({kind_name}; only RGB and RGBA are read)")
    if bit_depth != 8:
        raise ValueError(f"{name}: unsupported PNG ({bit_depth}-bit; only 8-bit is read)")
    if compression != 0 or filter_method != 0:
        raise ValueError(f"{name}: bad PNG (unknown compression or filter method)")
    if interlace != 0:
        raise ValueError(f"{name}: unsupported PNG (interlaced; only non-interlaced is read)")
    bpp = _CHANNELS[colour_type]
    expected = height * (width * bpp + 1)
    decompressor = zlib.decompressobj()
    try:
        # max_length bounds memory if the stream would inflate to more than it should.
        raw = decompressor.decompress(b"".join(compressed), expected + 1)
    except zlib.error as error:
        raise ValueError(f"{name}: damaged PNG (image data: {error})") from None
    if len(raw) != expected:
        raise ValueError(
            f"{name}: damaged PNG (image data is {len(raw)} bytes, expected {expected})"
        )
    pixels = _unfilter(raw, width, height, bpp)
    if bpp == 4:
        rgb = bytearray(width * height * 3)
        rgb[0::3] = pixels[0::4]
        rgb[1::3] = pixels[1::4]
        rgb[2::3] = pixels[2::4]
        pixels = rgb
    return width, height, bytes(pixels)


def read_png(path: str | os.PathLike[str]) -> tuple[int, int, bytes]:
    """Return ``(width, height, rgb)`` of the 8-bit RGB or RGBA, non-interlaced PNG at ``path``.

    Alpha is dropped. Anything else raises ValueError with the path and the reason.
    """
    return decode_png(Path(path).read_bytes(), os.fspath(path))


def _gradient(size: int) -> list[bytes]:
    """A cyclic deep-blue, white, orange, black palette as ``size`` RGB triples."""
    stops: list[tuple[float, tuple[int, int, int]]] = [
        (0.0, (0, 7, 100)),
        (0.16, (32, 107, 203)),
        (0.42, (237, 255, 255)),
        (0.6425, (255, 170, 0)),
        (0.8575, (0, 2, 0)),
        (1.0, (0, 7, 100)),
    ]
    colours: list[bytes] = []
    for index in range(size):
        position = index / size
        segment = next(n for n in range(len(stops) - 1) if position <= stops[n + 1][0])
        (left, left_colour), (right, right_colour) = stops[segment], stops[segment + 1]
        weight = (position - left) / (right - left)
        colours.append(
            bytes(
                round(a + (b - a) * weight) for a, b in zip(left_colour, right_colour, strict=True)
            )
        )
    return colours


_PALETTE = _gradient(1024)
_ITERATIONS_PER_CYCLE = 32.0
_CENTRE = (-0.6, 0.0)
_VIEW = (3.2, 2.4)  # the smallest span of the plane, across and up, the view shows


def mandelbrot_rgb(
    width: int,
    height: int,
    x0: int,
    y0: int,
    tile_w: int,
    tile_h: int,
    max_iter: int = 64,
) -> bytes:
    """Return the RGB bytes of tile ``[x0, x0+tile_w) x [y0, y0+tile_h)`` of a mandelbrot view.

    The whole view is ``width x height`` pixels centred on -0.6+0j. Every pixel depends
    only on its own position, so tiles pasted together equal the image computed at once.
    """
    _check_size(width, height)
    if not (tile_w >= 1 and tile_h >= 1 and x0 >= 0 and y0 >= 0):
        raise ValueError(f"bad tile {tile_w}x{tile_h} at ({x0}, {y0})")
    if x0 + tile_w > width or y0 + tile_h > height:
        raise ValueError(
            f"tile {tile_w}x{tile_h} at ({x0}, {y0}) runs outside the {width}x{height} view"
        )
    if max_iter < 1:
        raise ValueError(f"bad max_iter {max_iter}: must be at least 1")
    scale = max(_VIEW[0] / width, _VIEW[1] / height)
    columns = [_CENTRE[0] + (px + 0.5 - width / 2) * scale for px in range(x0, x0 + tile_w)]
    palette = _PALETTE
    palette_size = len(palette)
    cycle = palette_size / _ITERATIONS_PER_CYCLE
    inside = b"\x00\x00\x00"
    log2 = math.log(2.0)
    log = math.log
    out = bytearray()
    for py in range(y0, y0 + tile_h):
        ci = _CENTRE[1] + (height / 2 - py - 0.5) * scale
        ci2 = ci * ci
        for cr in columns:
            # Skip the main cardioid and the period-2 bulb: they never escape.
            shifted = cr - 0.25
            q = shifted * shifted + ci2
            if q * (q + shifted) <= 0.25 * ci2 or (cr + 1.0) ** 2 + ci2 <= 0.0625:
                out += inside
                continue
            zr = zi = zr2 = zi2 = 0.0
            iteration = 0
            while iteration < max_iter and zr2 + zi2 <= 256.0:
                zi = 2.0 * zr * zi + ci
                zr = zr2 - zi2 + cr
                zr2 = zr * zr
                zi2 = zi * zi
                iteration += 1
            if zr2 + zi2 <= 256.0:
                out += inside
                continue
            # Continuous escape count, so colours blend instead of banding.
            smooth = iteration + 1 - log(0.5 * log(zr2 + zi2)) / log2
            out += palette[int(max(smooth, 0.0) * cycle) % palette_size]
    return bytes(out)


def paste(
    canvas: bytearray,
    canvas_w: int,
    tile: bytes | bytearray,
    x0: int,
    y0: int,
    tile_w: int,
    tile_h: int,
) -> None:
    """Copy the RGB rows of ``tile`` (``tile_w x tile_h``) into ``canvas`` at ``(x0, y0)``."""
    if canvas_w < 1 or len(canvas) % (canvas_w * 3):
        raise ValueError(f"canvas of {len(canvas)} bytes is not RGB rows {canvas_w} pixels wide")
    canvas_h = len(canvas) // (canvas_w * 3)
    if tile_w < 1 or tile_h < 1 or len(tile) != tile_w * tile_h * 3:
        raise ValueError(f"tile of {len(tile)} bytes is not a {tile_w}x{tile_h} RGB image")
    if x0 < 0 or y0 < 0 or x0 + tile_w > canvas_w or y0 + tile_h > canvas_h:
        raise ValueError(
            f"tile {tile_w}x{tile_h} at ({x0}, {y0}) runs outside the {canvas_w}x{canvas_h} canvas"
        )
    row_bytes = tile_w * 3
    source = memoryview(tile)
    for row in range(tile_h):
        start = ((y0 + row) * canvas_w + x0) * 3
        canvas[start : start + row_bytes] = source[row * row_bytes : (row + 1) * row_bytes]


def contact_sheet(
    images: list[tuple[int, int, bytes]], columns: int, gap: int = 2
) -> tuple[int, int, bytes]:
    """Lay equally sized RGB images out in a grid (row by row) on a dark background."""
    if not images:
        raise ValueError("a contact sheet needs at least one image")
    width, height = images[0][0], images[0][1]
    if any((w, h) != (width, height) for w, h, _ in images):
        raise ValueError("contact sheet images must all be the same size")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    sheet_w = columns * width + (columns + 1) * gap
    sheet_h = rows * height + (rows + 1) * gap
    canvas = bytearray(b"\x20\x20\x20" * (sheet_w * sheet_h))
    for index, (_, _, rgb) in enumerate(images):
        row, column = divmod(index, columns)
        x0 = gap + column * (width + gap)
        y0 = gap + row * (height + gap)
        paste(canvas, sheet_w, rgb, x0, y0, width, height)
    return sheet_w, sheet_h, bytes(canvas)
