"""Contact sheets of real renders (Pillow; EXR through ffmpeg), and the dashboard showing a
render's preview video and sheet in a real browser, served to its session only."""

from __future__ import annotations

import http.client
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from buildcat import imaging
from tests.blender_support import BINARY, needs_binary
from tests.conftest import Farm, wait_for
from tests.media_support import SIZE, build_colour_scene, colour_of


@pytest.fixture
def colour_farm(farm: Farm) -> Farm:
    build_colour_scene(BINARY or "bpy", farm.root / "shots" / "colours.blend")
    farm.start_worker("--blender", BINARY or "blender")
    return farm


def check_sheet(path: Path, frames: list[int], columns: int, width: int) -> None:
    """Thumbnails ``width`` wide, ``columns`` a row, in frame order, each with a label."""
    gap, label = imaging.SHEET_GAP, imaging.sheet_label_height()
    height = round(width * SIZE[1] / SIZE[0])
    rows = math.ceil(len(frames) / columns)
    with Image.open(path) as opened:
        sheet = opened.convert("RGB")
    assert sheet.size == (columns * (width + gap) + gap, rows * (height + label + gap) + gap)
    for index, frame in enumerate(frames):
        row, column = divmod(index, columns)
        x0, y0 = gap + column * (width + gap), gap + row * (height + label + gap)
        centre = sheet.getpixel((x0 + width // 2, y0 + height // 2))
        assert centre == pytest.approx(colour_of(frame), abs=3), (frame, centre)
        strip = sheet.crop((x0, y0 + height, x0 + width, y0 + height + label))
        assert len(strip.getcolors() or []) > 1  # the frame number is written there
    if len(frames) % columns:  # the cells after the last frame are empty
        row, column = divmod(len(frames), columns)
        x0, y0 = gap + column * (width + gap), gap + row * (height + label + gap)
        empty = sheet.crop((x0, y0, x0 + width, y0 + height + label))
        assert empty.getcolors() == [(width * (height + label), imaging.SHEET_BACKGROUND)]


@needs_binary
def test_farm_contact_sheet_of_a_render(colour_farm: Farm) -> None:
    farm = colour_farm
    client = farm.client()
    job = client.render("shots/colours.blend", "1,3-6", chunk=3)
    job.wait(timeout=300)
    made = farm.cli("contact-sheet", job.id, "--json")
    assert made.returncode == 0, made.stderr
    sheet = json.loads(made.stdout)
    assert sheet["path"] == "renders/colours/Scene/contact-sheet.png"
    assert sheet["frames"] == [1, 3, 4, 5, 6]
    assert (sheet["columns"], sheet["rows"]) == (3, 2)
    check_sheet(farm.root / sheet["path"], [1, 3, 4, 5, 6], columns=3, width=160)
    # Another place and layout; the CLI prints where it wrote.
    other = farm.cli(
        "contact-sheet", job.id, "-o", "sheets/s.png", "--columns", "5", "--width", "40"
    )
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == str(farm.root / "sheets" / "s.png")
    check_sheet(farm.root / "sheets" / "s.png", [1, 3, 4, 5, 6], columns=5, width=40)
    # Outside the root: one line, nothing written.
    refused = farm.cli("contact-sheet", job.id, "-o", "../outside.png")
    assert refused.returncode != 0
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (farm.root.parent / "outside.png").exists()


@needs_binary
def test_a_contact_sheet_of_exr_frames_is_tone_mapped(colour_farm: Farm) -> None:
    client = colour_farm.client()
    job = client.render("shots/colours.blend", "1-3", output="exr/f_####", format="OPEN_EXR")
    job.wait(timeout=300)
    sheet = job.contact_sheet(columns=3, width=33)
    assert sheet == {
        "path": "exr/contact-sheet.png", "frames": [1, 2, 3], "columns": 3, "rows": 1,
        "size": sheet["size"],
    }  # fmt: skip
    check_sheet(colour_farm.root / "exr" / "contact-sheet.png", [1, 2, 3], columns=3, width=33)


def _get(farm: Farm, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@needs_binary
def test_the_dashboard_plays_the_video_and_shows_the_sheet(
    colour_farm: Farm, browser: object, tmp_path: Path
) -> None:
    farm = colour_farm
    client = farm.client()
    job = client.render("shots/colours.blend", "1-4", preview_video=True)
    job.wait(timeout=300)
    sheet = client.contact_sheet(job)
    link = farm.cli("dashboard").stdout.strip()

    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(link)
    page.locator(f'tr[data-job="{job.id}"]').click()
    page.wait_for_function(
        "() => { const v = document.querySelector('#preview-video video');"
        " return v && v.readyState >= 1 && v.videoWidth > 0; }",
        timeout=60_000,
    )
    assert page.locator("#preview-video").is_visible()
    assert page.evaluate("document.querySelector('#preview-video video').videoWidth") == 34
    source = page.evaluate("document.querySelector('#preview-video video').currentSrc")
    assert f"/api/v1/jobs/{job.id}/media/video" in source
    loaded = page.request.get(source)  # the page's own session
    assert loaded.status == 200
    assert loaded.headers["content-type"] == "video/mp4"
    assert loaded.body() == (farm.root / "renders/colours/Scene/preview.mp4").read_bytes()
    page.wait_for_function(
        "() => { const i = document.querySelector('#contact-sheet img');"
        f" return i && i.complete && i.naturalWidth === {sheet['size'][0]}; }}",
        timeout=30_000,
    )
    assert page.locator("#contact-sheet").is_visible()
    screenshot = tmp_path / "dashboard-media.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000

    # Without the session: 401, for the file and for what the job has.
    path = source.split(str(farm.port), 1)[1]
    assert _get(farm, path)[0] == 401
    assert _get(farm, f"/api/v1/jobs/{job.id}/media")[0] == 401
    # The session reaches the job's own media names only.
    cookie = {c["name"]: c["value"] for c in page.context.cookies()}
    header = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookie.items())}
    assert _get(farm, path, header)[0] == 200
    assert _get(farm, f"/api/v1/jobs/{job.id}/media/..%2F..%2F.buildcat%2Fsecret", header)[0] in (
        404,
        401,
    )
    # A job whose record names the farm's secret as its video shows none.
    forged = client.submit_tasks(
        [{"payload": {"function": "builtins:len", "args": [[1]]}}],
        meta={"preview_video": ".buildcat/secret", "output": ".buildcat/f_####", "frames": "1"},
    )
    forged.wait(timeout=60)
    status, body = _get(farm, f"/api/v1/jobs/{forged.id}/media", header)
    assert status == 200
    assert json.loads(body) == {"video": None, "contact_sheet": None}
    assert _get(farm, f"/api/v1/jobs/{forged.id}/media/video", header)[0] == 404
    wait_for(lambda: page.locator(f'tr[data-job="{forged.id}"]').count() == 1, 30)
