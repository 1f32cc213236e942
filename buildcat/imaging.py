"""Images with Pillow: saving whole files, reading render frames (EXR through ffmpeg),
contact sheets, and the demo's Mandelbrot tiles.

The Mandelbrot tiles are 8-bit RGB ``bytes``, row by row from the top, three a pixel.
"""

from __future__ import annotations

import io
import math
import os
import secrets
import subprocess
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from buildcat import platform
from buildcat.errors import FarmError

#: A render's contact sheet, beside its frames.
SHEET_NAME = "contact-sheet.png"
SHEET_BACKGROUND = (32, 32, 32)
SHEET_TEXT = (230, 230, 230)
#: Pixels between thumbnails, and around them.
SHEET_GAP = 4
THUMBNAIL_WIDTH = 160
_MAX_SIDE = 2**31 - 1


def _check_size(width: int, height: int) -> None:
    if not (1 <= width <= _MAX_SIDE and 1 <= height <= _MAX_SIDE):
        raise ValueError(f"bad image size {width}x{height}: each side must be 1 to {_MAX_SIDE}")


def save_image(image: Image.Image, path: str | os.PathLike[str], file_format: str = "PNG") -> None:
    """Write ``image`` at ``path``, whole: under a temporary name in the same folder, then
    renamed over ``path``, so a reader on another host sees the old file or the new one."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open rather than tempfile: mode 0o666 under the umask, so other hosts can read it.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | platform.OPEN_FLAGS  # Windows: binary
        descriptor = os.open(temporary, flags, 0o666)
        with os.fdopen(descriptor, "wb") as stream:
            image.save(stream, format=file_format)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def rgb_image(width: int, height: int, rgb: bytes | bytearray) -> Image.Image:
    """A Pillow image of 8-bit RGB bytes (``width * height * 3``, rows from the top)."""
    _check_size(width, height)
    if len(rgb) != width * height * 3:
        raise ValueError(
            f"{len(rgb)} bytes of pixels for a {width}x{height} RGB image,"
            f" which needs {width * height * 3}"
        )
    return Image.frombytes("RGB", (width, height), bytes(rgb))


def read_rgb(path: str | os.PathLike[str]) -> tuple[int, int, bytes]:
    """``(width, height, rgb)`` of an image file Pillow reads, as 8-bit RGB (alpha dropped)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    return rgb.width, rgb.height, rgb.tobytes()


def open_frame(path: Path, ffmpeg: str | None = None) -> Image.Image:
    """A render frame as an 8-bit RGB image, alpha composited over black. EXR (linear
    light, which Pillow cannot read) is decoded by ffmpeg with the sRGB curve applied."""
    if path.suffix.lower() == ".exr":
        return _exr_frame(path, ffmpeg)
    with Image.open(path) as image:
        image.load()
        if "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            return Image.alpha_composite(black, rgba).convert("RGB")
        return image.convert("RGB")


def _exr_frame(path: Path, ffmpeg: str | None) -> Image.Image:
    from buildcat.ffmpeg import exr_to_srgb, find_ffmpeg

    program = ffmpeg or find_ffmpeg()
    decode, filters = exr_to_srgb(program)
    done = subprocess.run(
        [program, "-hide_banner", "-nostdin", "-loglevel", "error", *decode, "-i", str(path),
         "-vf", f"{filters}format=rgb24", "-frames:v", "1", "-f", "image2pipe",
         "-c:v", "png", "-"],
        capture_output=True, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if done.returncode != 0 or not done.stdout:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        raise FarmError(f"ffmpeg could not read {path}: {said[-1] if said else 'no image'}")
    with Image.open(io.BytesIO(done.stdout)) as image:
        return image.convert("RGB")


def contact_sheet(
    frames: list[tuple[int, Path]],
    columns: int | None = None,
    width: int = THUMBNAIL_WIDTH,
    ffmpeg: str | None = None,
) -> Image.Image:
    """Thumbnails of ``frames`` (``(number, file)``, in order), ``width`` pixels wide, in a
    grid row by row, each with its frame number below it, on a dark background. The
    thumbnails take the first frame's shape; ``columns`` defaults to a square-ish grid."""
    if not frames:
        raise FarmError("a contact sheet needs at least one frame")
    if width < 8:
        raise FarmError(f"thumbnail width {width}: give at least 8 pixels")
    columns = sheet_columns(len(frames), columns)
    rows = -(-len(frames) // columns)
    font = ImageFont.load_default()
    first = open_frame(frames[0][1], ffmpeg)
    height = max(1, round(width * first.height / first.width))
    label = sheet_label_height(font)
    cell_w, cell_h = width + SHEET_GAP, height + label + SHEET_GAP
    sheet = Image.new("RGB", (columns * cell_w + SHEET_GAP, rows * cell_h + SHEET_GAP),
                      SHEET_BACKGROUND)  # fmt: skip
    draw = ImageDraw.Draw(sheet)
    for index, (number, path) in enumerate(frames):
        image = first if index == 0 else open_frame(path, ffmpeg)
        row, column = divmod(index, columns)
        x0, y0 = SHEET_GAP + column * cell_w, SHEET_GAP + row * cell_h
        sheet.paste(image.resize((width, height), Image.Resampling.LANCZOS), (x0, y0))
        draw.text((x0 + 2, y0 + height + 1), str(number), fill=SHEET_TEXT, font=font)
    return sheet


def sheet_columns(count: int, columns: int | None = None) -> int:
    """How many thumbnails a row of a sheet of ``count`` holds: ``columns`` (at most
    ``count``), else a square-ish grid."""
    return max(1, min(columns or math.ceil(math.sqrt(count)), count))


def sheet_label_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None) -> int:
    """The strip under each thumbnail that holds its frame number."""
    font = font or ImageFont.load_default()
    return int(font.getbbox("0123456789")[3]) + 4


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
