"""A render's image format: the rules Blender applies to the options that change a
scene's own output settings (read by blendfile.py). Farm side, pure."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from buildcat.errors import FarmError

if TYPE_CHECKING:
    from buildcat.blender.blendfile import OutputSettings

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
    scene: OutputSettings | None,
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
