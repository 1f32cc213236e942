"""The demo job: a Mandelbrot image rendered in tiles by the workers, assembled into a PNG."""

from __future__ import annotations

import os
import time
from typing import Any

from PIL import Image

from buildcat import imaging
from buildcat.jobs import context


def render_tile(
    output: str, x0: int, y0: int, tile_w: int, tile_h: int, width: int, height: int
) -> dict[str, Any]:
    """Render one tile of the image into ``output`` (raw RGB, root-relative)."""
    started = time.perf_counter()
    context.progress(0.0, f"tile at {x0},{y0}")
    rgb = imaging.mandelbrot_rgb(width, height, x0, y0, tile_w, tile_h)
    path = context.path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(rgb)
    os.replace(temporary, path)
    return {
        "tile": output,
        "worker": context.current().worker_name,
        "seconds": round(time.perf_counter() - started, 3),
    }


def assemble(output: str, tiles: list[list[Any]], width: int, height: int) -> dict[str, Any]:
    """Paste the tiles (``[path, x0, y0, w, h]`` each) into one PNG at ``output``."""
    canvas = Image.new("RGB", (width, height))
    for tile_path, x0, y0, tile_w, tile_h in tiles:
        rgb = context.path(tile_path).read_bytes()
        if len(rgb) != tile_w * tile_h * 3:
            raise ValueError(f"tile {tile_path} is {len(rgb)} bytes, not {tile_w * tile_h * 3}")
        canvas.paste(imaging.rgb_image(tile_w, tile_h, rgb), (x0, y0))
    path = context.path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    imaging.save_image(canvas, path)
    return {"image": output, "width": width, "height": height}


def tasks(
    width: int = 480, height: int = 320, columns: int = 4, rows: int = 4, folder: str = "demo"
) -> list[dict[str, Any]]:
    """The task list of the demo job: one task per tile, then one that assembles them."""
    specs: list[dict[str, Any]] = []
    tiles: list[list[Any]] = []
    for row in range(rows):
        for column in range(columns):
            x0, x1 = width * column // columns, width * (column + 1) // columns
            y0, y1 = height * row // rows, height * (row + 1) // rows
            output = f"{folder}/tiles/tile_{row:02d}_{column:02d}.rgb"
            tiles.append([output, x0, y0, x1 - x0, y1 - y0])
            specs.append(
                {
                    "payload": {
                        "function": "buildcat.jobs.demo:render_tile",
                        "args": [output, x0, y0, x1 - x0, y1 - y0, width, height],
                        "label": f"tile {row},{column}",
                    }
                }
            )
    specs.append(
        {
            "payload": {
                "function": "buildcat.jobs.demo:assemble",
                "args": [f"{folder}/mandelbrot.png", tiles, width, height],
                "label": "assemble",
            },
            "depends": list(range(len(tiles))),
        }
    )
    return specs
