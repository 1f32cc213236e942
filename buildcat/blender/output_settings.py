"""A render's image format: the scene's own output settings, read from the .blend without
Blender, and the rules Blender applies to the options that change them (farm side, pure)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from buildcat.errors import FarmError

log = logging.getLogger(__name__)

#: The formats a farm render may write, with the colour modes and depths Blender accepts
#: for each (measured in Blender 3.4 and 4.5: the same in both).
COLOR_MODES = {
    "PNG": ("BW", "RGB", "RGBA"),
    "JPEG": ("BW", "RGB"),
    "OPEN_EXR": ("BW", "RGB", "RGBA"),
    "OPEN_EXR_MULTILAYER": ("BW", "RGB", "RGBA"),
}
COLOR_DEPTHS = {
    "PNG": ("8", "16"),
    "JPEG": ("8",),
    "OPEN_EXR": ("16", "32"),
    "OPEN_EXR_MULTILAYER": ("16", "32"),
}
FORMATS = tuple(COLOR_MODES)
EXTENSIONS = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "OPEN_EXR": ".exr",
    "OPEN_EXR_MULTILAYER": ".exr",
}
#: Extensions an ``--output`` pattern may end in, and the formats that write each.
PATTERN_EXTENSIONS = {".png": ("PNG",), ".jpg": ("JPEG",), ".jpeg": ("JPEG",),
                      ".exr": ("OPEN_EXR", "OPEN_EXR_MULTILAYER")}  # fmt: skip

# DNA values of ImageFormatData (DNA_scene_types.h), as a .blend stores them.
_IMTYPES = {
    0: "TARGA", 1: "IRIS", 4: "JPEG", 7: "IRIZ", 14: "TARGA_RAW", 15: "AVI_RAW",
    16: "AVI_JPEG", 17: "PNG", 20: "BMP", 21: "HDR", 22: "TIFF", 23: "OPEN_EXR",
    24: "FFMPEG", 26: "CINEON", 27: "DPX", 28: "OPEN_EXR_MULTILAYER", 29: "DDS",
    30: "JPEG2000", 31: "H264", 32: "XVID", 33: "THEORA", 34: "PSD", 35: "WEBP",
}  # fmt: skip
MOVIE_FORMATS = ("AVI_RAW", "AVI_JPEG", "FFMPEG", "H264", "XVID", "THEORA")
_DEPTHS = {1: "1", 2: "8", 4: "10", 8: "12", 16: "16", 32: "24", 64: "32"}
_PLANES = {8: "BW", 24: "RGB", 32: "RGBA"}


@dataclass(slots=True, frozen=True)
class SceneOutput:
    """What a scene's Output Properties say it writes."""

    file_format: str
    color_mode: str
    color_depth: str
    quality: int


def read_scene_output(blend: Path, scene_name: str | None = None) -> SceneOutput | None:
    """The output settings of ``scene_name`` (default: the file's active scene), read with
    blender-asset-tracer; None when the file cannot be read that way (Blender reads it then)."""
    try:
        from blender_asset_tracer import blendfile

        bfile = blendfile.BlendFile(blend)
    except Exception as exc:  # not installed, or a .blend it does not know
        log.info("cannot read the output settings of %s without Blender: %s", blend, exc)
        return None
    try:
        scenes = {
            (block.id_name or b"SC")[2:].decode(): block
            for block in bfile.find_blocks_from_code(b"SC")
        }
        block = scenes.get(scene_name) if scene_name else None
        if block is None and not scene_name:
            globs = bfile.find_blocks_from_code(b"GLOB")
            current = globs[0].get(b"curscene") if globs else 0
            block = bfile.dereference_pointer(current) if current else None
            if block is None and len(scenes) == 1:
                block = next(iter(scenes.values()))
        if block is None:
            return None
        imtype = block.get((b"r", b"im_format", b"imtype"))
        return SceneOutput(
            file_format=_IMTYPES.get(imtype, f"format {imtype}"),
            color_mode=_PLANES.get(block.get((b"r", b"im_format", b"planes")), "RGB"),
            color_depth=_DEPTHS.get(block.get((b"r", b"im_format", b"depth")), "8"),
            quality=int(block.get((b"r", b"im_format", b"quality"))),
        )
    except Exception as exc:
        log.info("cannot read the output settings of %s without Blender: %s", blend, exc)
        return None
    finally:
        bfile.close()


def split_extension(pattern: str) -> tuple[str, str]:
    """``shots/a_####.png`` -> (``shots/a_####``, ``.png``); ('', '') for no image extension."""
    match = re.search(r"\.[A-Za-z]+$", pattern)
    if match and match[0].lower() in PATTERN_EXTENSIONS:
        return pattern[: match.start()], match[0].lower()
    return pattern, ""


def check_options(
    file_format: str | None,
    color_mode: str | None,
    color_depth: str | None,
    scene: SceneOutput | None,
) -> str | None:
    """Check the output options against what Blender accepts, given the scene's own output
    (None: unknown); return the format the frames will be in (None: unknown). Raises
    FarmError with one line."""
    if file_format is not None and file_format not in FORMATS:
        raise FarmError(f"format must be one of {', '.join(FORMATS)}, not {file_format!r}")
    if color_mode is not None and color_mode not in ("BW", "RGB", "RGBA"):
        raise FarmError(f"colour mode must be BW, RGB or RGBA, not {color_mode!r}")
    if color_depth is not None and color_depth not in ("8", "16", "32"):
        raise FarmError(f"colour depth must be 8, 16 or 32, not {color_depth!r}")
    effective = file_format or (scene.file_format if scene else None)
    if file_format is None and effective in MOVIE_FORMATS:
        raise FarmError(
            f"the scene writes a movie ({effective}); a farm renders frames: give --format "
            "PNG, JPEG, OPEN_EXR or OPEN_EXR_MULTILAYER, then make the video from the frames"
        )
    if effective is None:
        return None
    if effective not in FORMATS:
        if color_mode is None and color_depth is None:
            return effective  # the scene's own image format, written as it is
        raise FarmError(
            f"the scene writes {effective}; --color-mode and --color-depth work with "
            f"{', '.join(FORMATS)}: give --format too"
        )
    whose = "" if file_format else " (the scene's format)"
    if color_mode is not None and color_mode not in COLOR_MODES[effective]:
        raise FarmError(
            f"{effective}{whose} has no colour mode {color_mode}: "
            f"use {' or '.join(COLOR_MODES[effective])}"
        )
    if color_depth is not None and color_depth not in COLOR_DEPTHS[effective]:
        raise FarmError(
            f"{effective}{whose} has no colour depth {color_depth}: "
            f"use {' or '.join(COLOR_DEPTHS[effective])}"
        )
    return effective
