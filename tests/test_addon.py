"""The Blender add-on, in real Blender (the Debian 3.4 binary and the bpy 4.5 module):
it loads, the panel's properties are set, the Submit operator sends the open file to a
real farm on loopback and the frames land; the refusals say why; `farm addon install`
leaves it enabled in a fresh Blender; the server plans job types for it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import buildcat
from buildcat.blender import BPY
from buildcat.imaging import read_rgb
from tests.blender_support import BINARY, BOTH_BLENDERS, needs_binary, needs_bpy
from tests.conftest import Farm, secret_header, unused_port

ADDON_SOURCE = Path(buildcat.__file__).parent / "addon"
RESULT = "ADDON-RESULT:"


def farm_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buildcat", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("addon") / "buildcat_farm.zip"
    done = farm_cli("addon", "zip", "-o", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(path)
    return path


@pytest.fixture(scope="module")
def addon_path(addon_zip: Path) -> Path:
    """A folder holding ``buildcat_farm/``, as Blender's add-on folder would."""
    folder = addon_zip.parent / "scripts"
    with zipfile.ZipFile(addon_zip) as archive:
        archive.extractall(folder)
    return folder


PRELUDE = """
import json, os, sys, time
import bpy
sys.path.insert(0, {addon!r})
import buildcat_farm
from buildcat_farm import submitting
buildcat_farm.register()
if {blend!r} and bpy.data.filepath != {blend!r}:
    bpy.ops.wm.open_mainfile(filepath={blend!r})
props = bpy.context.scene.buildcat

def submit():
    try:
        bpy.ops.buildcat.submit()
    except RuntimeError as exc:  # an operator's ERROR report, raised to its caller
        return str(exc)
    return ""

def result(**values):
    print({marker!r} + json.dumps(values), flush=True)
"""


def run_addon(
    blender: str,
    script: str,
    addon: Path,
    blend: Path | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``script`` in a real Blender with the add-on registered (and ``blend`` open);
    what it passed to ``result(...)``."""
    code = PRELUDE.format(addon=str(addon), blend=str(blend or ""), marker=RESULT)
    code += textwrap.dedent(script)
    if blender == BPY:
        # bpy 4.5 can hang at interpreter exit, after its leak report (a bpy bug:
        # blender/script_support.py leave_the_bpy_module): leave once all is printed.
        code += "\nsys.stdout.flush(); sys.stderr.flush(); os._exit(0)\n"
        command = [sys.executable, "-c", code]
    else:
        command = [blender, "-b", *([str(blend)] if blend else []), "--factory-startup",
                   "--python-exit-code", "1", "--python-expr", code]  # fmt: skip
    environment = {**os.environ, **(env or {})}
    for name in ("FARM_HOST", "FARM_PORT", "BUILDCAT_ROOT", "FARM_TOKEN"):
        if name not in (env or {}):
            environment.pop(name, None)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=environment, timeout=100, check=False
        )
    except subprocess.TimeoutExpired as exc:
        shown = [str(part or "") for part in (exc.stdout, exc.stderr)]
        pytest.fail(f"Blender did not finish: {''.join(shown)[-4000:]}")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    assert lines, output[-4000:]
    return dict(json.loads(lines[-1][len(RESULT) :]))


@pytest.fixture
def shot_farm(farm: Farm, scene_file: Path) -> Iterator[Farm]:
    (farm.root / "shots").mkdir()
    (farm.root / "shots" / "spin.blend").write_bytes(scene_file.read_bytes())
    yield farm


# ---- submitting from Blender -------------------------------------------------------------


@pytest.mark.parametrize("blender", BOTH_BLENDERS)
def test_submit_from_the_panel_renders_the_frames(
    shot_farm: Farm, addon_path: Path, blender: str
) -> None:
    # The worker runs the same Blender: the file is saved again by the one submitting.
    shot_farm.start_worker("--blender", blender)
    shot_farm.wait_workers(1)
    result = run_addon(
        blender,
        f"""
        scene = bpy.context.scene
        scene.frame_start, scene.frame_end = 2, 4
        scene.render.filepath = "//frames/spin_"
        props.host = "127.0.0.1:{shot_farm.port}"
        props.chunk = 2
        props.priority = 5
        props.requires = "blender"
        bpy.ops.buildcat.refresh()  # reads the job types: the render type's fields
        fields = {{item.name: item for item in props.settings}}
        fields["samples"].text = "2"
        fields["resolution"].text = "32x24"
        error = submit()
        following = bpy.app.timers.is_registered(submitting._tick)
        deadline = time.monotonic() + 240
        while submitting.poll(scene) and time.monotonic() < deadline:
            time.sleep(0.3)
        result(error=error, job=props.job_id, state=props.job_state,
               progress=props.job_progress, frames=props.job_frames,
               following=following, message=props.message,
               fields=sorted(fields), dirty=bpy.data.is_dirty)
        """,
        addon_path,
        blend=shot_farm.root / "shots" / "spin.blend",
    )
    assert result["error"] == ""
    assert result["following"], "the panel polls the job from Blender's timers"
    assert result["state"] == "done", result
    assert result["progress"] == pytest.approx(1.0)
    assert result["frames"] == "3/3"
    assert f"submitted job {result['job']}: 2 task(s)" in result["message"]
    assert {"samples", "resolution", "engine", "format", "tiles"} <= set(result["fields"])
    assert "frames" not in result["fields"]  # the panel's own field, not repeated
    for frame in (2, 3, 4):
        png = shot_farm.root / "shots" / "frames" / f"spin_{frame:04d}.png"
        assert png.is_file(), sorted(p.name for p in png.parent.glob("*"))
        width, height, _ = read_rgb(png)
        assert (width, height) == (32, 24)
    assert not (shot_farm.root / "shots" / "frames" / "spin_0001.png").exists()
    job = shot_farm.client().job(result["job"]).status()
    assert job["kind"] == "blender"
    assert job["priority"] == 5
    assert "blender" in job["requires"]
    assert job["meta"]["scene"] == "shots/spin.blend"
    assert job["meta"]["frames"] == "2-4"
    assert job["meta"]["submitted_from"] == "blender"


@needs_binary
def test_the_refusals_say_why(farm: Farm, addon_path: Path, tmp_path: Path) -> None:
    assert BINARY is not None
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    result = run_addon(
        BINARY,
        f"""
        errors = {{}}
        props.host = "127.0.0.1:{farm.port}"
        errors["unsaved"] = submit()
        bpy.ops.wm.save_as_mainfile(filepath={str(outside / "away.blend")!r})
        errors["no root"] = submit()
        props.root = {str(farm.root)!r}
        errors["outside"] = submit()
        props.root = ""
        os.makedirs({str(farm.root / "shots")!r}, exist_ok=True)
        bpy.ops.wm.save_as_mainfile(filepath={str(farm.root / "shots" / "lost.blend")!r})
        image = bpy.data.images.new("wood", 4, 4)
        image.filepath_raw = {str(outside / "wood.png")!r}
        image.file_format = "PNG"
        image.save()
        image.source = "FILE"
        errors["outside texture"] = submit()
        image.filepath = "//textures/missing.png"
        errors["missing texture"] = submit()
        bpy.data.images.remove(image)
        props.host = "127.0.0.1:{unused_port(avoid={farm.port})}"
        errors["no server"] = submit()
        props.host = ""
        # A root with the secret but no server record (this farm's server keeps its own).
        os.makedirs({str(tmp_path / "quiet" / ".buildcat")!r})
        with open({str(farm.root / ".buildcat" / "secret")!r}, "rb") as source:
            secret = source.read()
        with open({str(tmp_path / "quiet" / ".buildcat" / "secret")!r}, "wb") as copy:
            copy.write(secret)
        os.chmod({str(tmp_path / "quiet" / ".buildcat" / "secret")!r}, 0o600)
        bpy.ops.wm.save_as_mainfile(filepath={str(tmp_path / "quiet" / "lost.blend")!r})
        errors["no record"] = submit()
        result(errors=errors, message=props.message)
        """,
        addon_path,
    )
    errors = result["errors"]
    assert "save the .blend under the farm root first" in errors["unsaved"]
    assert "no farm root above" in errors["no root"]
    assert "lies outside the farm root" in errors["outside"]
    assert "wood.png (outside the root, image wood)" in errors["outside texture"]
    assert "//textures/missing.png (missing, image wood)" in errors["missing texture"]
    assert "Make Paths Relative" in errors["missing texture"]
    assert "cannot reach the farm server at http://127.0.0.1:" in errors["no server"]
    assert "no farm server recorded in" in errors["no record"]
    assert result["message"] == errors["no record"].removeprefix("Error: ").strip()
    assert farm.client().jobs() == []  # nothing was submitted


@needs_binary
def test_make_paths_relative(farm: Farm, addon_path: Path) -> None:
    assert BINARY is not None
    (farm.root / "textures").mkdir()
    (farm.root / "shots").mkdir()
    result = run_addon(
        BINARY,
        f"""
        bpy.ops.wm.save_as_mainfile(filepath={str(farm.root / "shots" / "tex.blend")!r})
        image = bpy.data.images.new("wood", 4, 4)
        image.filepath_raw = {str(farm.root / "textures" / "wood.png")!r}
        image.file_format = "PNG"
        image.save()
        image.source = "FILE"
        before = image.filepath
        bpy.ops.buildcat.make_paths_relative()
        result(before=before, after=image.filepath, message=props.message)
        """,
        addon_path,
    )
    assert result["before"] == str(farm.root / "textures" / "wood.png")
    assert result["after"] == "//../textures/wood.png"


# ---- finding the farm ---------------------------------------------------------------------


def write_record(root: Path, port: int, addresses: list[str], stopped: bool = False) -> None:
    """The server's record in the root, as `farm server` writes it (discovery through the
    root): written by hand here, pointing at the test's real server."""
    record = {
        "version": 1, "farm": "test", "farm_id": "x", "addresses": addresses, "port": port,
        "scheme": "http", "tls_fingerprint": None, "host": "here", "pid": os.getpid(),
        "started_at": 0.0, "beat_at": 0.0, "stopped": stopped,
    }  # fmt: skip
    (root / ".buildcat" / "server.json").write_text(json.dumps(record))


@needs_bpy
def test_the_farm_is_found_through_the_root(
    shot_farm: Farm, addon_path: Path, tmp_path: Path
) -> None:
    # 127.0.0.2 is loopback too, but the server listens on 127.0.0.1 only: refused, next.
    write_record(shot_farm.root, shot_farm.port, ["127.0.0.2", "127.0.0.1"])
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    result = run_addon(
        BPY,
        """
        bpy.ops.buildcat.refresh()
        found = (props.farm_name, props.farm_address, props.message)
        bpy.ops.buildcat.open_dashboard()
        result(found=found, job_types=[t["name"] for t in submitting.properties.JOB_TYPES])
        """,
        addon_path,
        blend=shot_farm.root / "shots" / "spin.blend",
        env={"BROWSER": str(browser)},
    )
    name, address, message = result["found"]
    assert address == f"http://127.0.0.1:{shot_farm.port}"
    assert name and message == f"farm {name} at {address}"
    assert "render" in result["job_types"]
    # The dashboard link the operator opened logs a browser in.
    url = opened.read_text().strip()
    assert url.startswith(f"{address}/login?key=")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.build_opener(NoRedirect).open(url, timeout=30)
    answer.value.close()
    assert answer.value.code == 303
    assert "buildcat_dashboard" in answer.value.headers["Set-Cookie"]

    write_record(shot_farm.root, shot_farm.port, ["127.0.0.1"], stopped=True)
    result = run_addon(
        BPY,
        """
        try:
            bpy.ops.buildcat.refresh()
            result(error="")
        except RuntimeError as exc:
            result(error=str(exc))
        """,
        addon_path,
        blend=shot_farm.root / "shots" / "spin.blend",
    )
    assert "has stopped" in result["error"]


# ---- any job type ---------------------------------------------------------------------------

STAMP = '''
"""Writes one note per frame of a scene: a job type the panel has never heard of."""
from buildcat.jobtypes import Setting

LABEL = "Stamp frames"
SETTINGS = [
    Setting("scene", "path", required=True),
    Setting("frames", "frames", required=True),
    Setting("note", "str", required=True, help="What each note says"),
    Setting("shout", "bool", default=False),
    Setting("ink", "choice", choices=["red", "blue"], default="red"),
    Setting("copies", "int", default=1, minimum=1),
]

def compile(settings, job):
    note = settings.note.upper() if settings.shout else settings.note
    for frame in __import__("buildcat").frames.parse_frames(settings.frames):
        job.python("stamp_steps.py:stamp", frame, f"{note} {settings.ink} x{settings.copies}")
'''

STAMP_STEPS = """
from buildcat.jobs import context

def stamp(frame, text):
    path = context.current().path("stamps") / f"{frame}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
"""


@needs_bpy
def test_a_job_type_of_the_root_gets_its_fields(shot_farm: Farm, addon_path: Path) -> None:
    (shot_farm.root / "jobtypes").mkdir()
    (shot_farm.root / "jobtypes" / "stamp.py").write_text(STAMP)
    (shot_farm.root / "stamp_steps.py").write_text(STAMP_STEPS)
    shot_farm.start_worker("--no-blender")
    result = run_addon(
        BPY,
        f"""
        scene = bpy.context.scene
        scene.frame_start, scene.frame_end = 1, 2
        props.host = "127.0.0.1:{shot_farm.port}"
        bpy.ops.buildcat.refresh()
        props.job_type = "stamp"
        fields = {{item.name: item for item in props.settings}}
        kinds = {{name: item.kind for name, item in fields.items()}}
        missing = submit()
        fields["note"].text = "hello"
        fields["shout"].flag = True
        fields["ink"].choice = "blue"
        fields["copies"].text = "zero"
        bad_int = submit()
        fields["copies"].text = "0"
        below = submit()
        fields["copies"].text = "3"
        error = submit()
        deadline = time.monotonic() + 120
        while submitting.poll(scene) and time.monotonic() < deadline:
            time.sleep(0.2)
        result(kinds=kinds, missing=missing, bad_int=bad_int, below=below, error=error,
               state=props.job_state)
        """,
        addon_path,
        blend=shot_farm.root / "shots" / "spin.blend",
    )
    assert result["kinds"] == {"note": "str", "shout": "bool", "ink": "choice", "copies": "int"}
    assert "note" in result["missing"]  # the job type's own refusal, from the server
    assert "Copies: 'zero' is not a whole number" in result["bad_int"]
    assert "copies" in result["below"]
    assert result["error"] == ""
    assert result["state"] == "done"
    for frame in (1, 2):
        assert (shot_farm.root / "stamps" / f"{frame}.txt").read_text() == "HELLO blue x3"


# ---- the plan route the add-on submits through ---------------------------------------------


def post(farm: Farm, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{farm.port}/api/v1{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_the_server_plans_a_job_type(shot_farm: Farm) -> None:
    member = secret_header(shot_farm.root)
    status, plan = post(
        shot_farm,
        "/job-types/render/plan",
        {"settings": {"scene": "shots/spin.blend", "frames": "1-4", "chunk": 2}},
        member,
    )
    assert status == 200, plan
    assert plan["kind"] == "blender"
    assert [t["payload"]["frames"] for t in plan["tasks"]] == [[1, 2], [3, 4]]
    assert plan["meta"]["scene"] == "shots/spin.blend"
    assert any(r.startswith("blender>=") for r in plan["requires"])
    # What `farm submit` refuses, the plan refuses the same way: one line, a 400.
    status, reply = post(
        shot_farm, "/job-types/render/plan", {"settings": {"scene": "shots/none.blend"}}, member
    )
    assert status == 400
    assert "shots/none.blend does not exist under the farm root" in reply["error"]
    status, reply = post(shot_farm, "/job-types/nothing/plan", {"settings": {}}, member)
    assert status == 400 and "nothing" in reply["error"]
    status, reply = post(shot_farm, "/job-types/render/plan", {"settings": [1]}, member)
    assert status == 400 and "'settings' must be a map" in reply["error"]
    status, _ = post(shot_farm, "/job-types/render/plan", {"settings": {}})
    assert status == 401
    assert shot_farm.client().jobs() == []  # planning queues nothing


# ---- installing -------------------------------------------------------------------------------


def test_the_zip_holds_an_add_on_and_an_extension(addon_zip: Path) -> None:
    with zipfile.ZipFile(addon_zip) as archive:
        names = set(archive.namelist())
        manifest = tomllib.loads(archive.read("buildcat_farm/blender_manifest.toml").decode())
        sources = {name: archive.read(name).decode() for name in names if name.endswith(".py")}
    assert {"buildcat_farm/__init__.py", "buildcat_farm/farm.py"} <= names
    assert manifest["id"] == "buildcat_farm"
    assert manifest["version"] == buildcat.__version__
    bl_info = next(
        ast.literal_eval(node.value)
        for node in ast.parse(sources["buildcat_farm/__init__.py"]).body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "bl_info"
    )
    assert ".".join(map(str, bl_info["version"])) == buildcat.__version__
    # Blender's Python has none of buildcat's dependencies: standard library and bpy only.
    for name, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                assert top == "bpy" or top in sys.stdlib_module_names, f"{name}: {module}"


@needs_binary
def test_install_enables_it_in_blender_3(tmp_path: Path) -> None:
    users = {
        "BLENDER_USER_CONFIG": str(tmp_path / "config"),
        "BLENDER_USER_SCRIPTS": str(tmp_path / "scripts"),
    }
    done = farm_cli("addon", "install", "--blender", "blender", env=users)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "installed and enabled buildcat_farm in Blender 3.4" in done.stdout
    assert (tmp_path / "scripts" / "addons" / "buildcat_farm" / "__init__.py").is_file()
    check = subprocess.run(
        ["blender", "-b", "--python-exit-code", "1", "--python-expr",
         "import bpy, sys; print('ENABLED', 'buildcat_farm' in bpy.context.preferences.addons,"
         " hasattr(bpy.types, 'BUILDCAT_PT_farm'), hasattr(bpy.types.Scene, 'buildcat'))"],
        capture_output=True, text=True, env={**os.environ, **users}, timeout=120, check=False,
    )  # fmt: skip
    assert "ENABLED True True True" in check.stdout, check.stdout + check.stderr


@needs_bpy
def test_install_enables_it_as_an_extension_in_blender_4(tmp_path: Path) -> None:
    users = {"BLENDER_USER_RESOURCES": str(tmp_path / "blender")}
    done = farm_cli("addon", "install", "--blender", "bpy", env=users)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "installed and enabled bl_ext.user_default.buildcat_farm in Blender 4.5" in done.stdout
    extension = tmp_path / "blender" / "extensions" / "user_default" / "buildcat_farm"
    assert (extension / "blender_manifest.toml").is_file()
    # The bpy module starts with factory preferences: a fresh one reads the user's.
    check = subprocess.run(
        [sys.executable, "-c",
         "import bpy; bpy.ops.wm.read_userpref(); print('ENABLED',"
         " 'bl_ext.user_default.buildcat_farm' in bpy.context.preferences.addons,"
         " hasattr(bpy.types, 'BUILDCAT_PT_farm'))"],
        capture_output=True, text=True, env={**os.environ, **users}, timeout=120, check=False,
    )  # fmt: skip
    assert "ENABLED True True" in check.stdout, check.stdout + check.stderr


def test_install_refuses_a_blender_that_is_not_there() -> None:
    done = farm_cli("addon", "install", "--blender", "/no/such/blender")
    assert done.returncode != 0
    assert (
        done.stderr.strip().splitlines()[-1] == "farm: error: Blender '/no/such/blender' not found"
    )
