"""The single executable (``packaging/build.py``, PyInstaller): built once per session
from this checkout, copied into a folder of its own and run from a working folder where
no virtual environment is on PATH. A server, two workers and every client command are
the executable; its tasks run in its embedded Python (or, with ``--python``, in another);
Blender renders through it; the dashboard it serves opens in a real browser.

``BUILDCAT_BINARY=PATH`` runs these tests on an executable built beforehand."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

import buildcat
from buildcat import bundle
from tests.blender_support import needs_binary
from tests.conftest import Farm, wait_for

CHECKOUT = Path(__file__).resolve().parents[1]
#: Building takes about a minute on 2 cores; the tests themselves a few seconds each.
pytestmark = pytest.mark.timeout(1200)

#: A job function under the root that uses the standard library widely and reports the
#: interpreter it ran in.
STEPS = """
import csv, decimal, io, sqlite3, statistics, sys, zipfile
import xml.etree.ElementTree as ET
from email.mime.text import MIMEText

def survey(values):
    db = sqlite3.connect(":memory:")
    db.execute("create table t (v real)")
    db.executemany("insert into t values (?)", [(v,) for v in values])
    (total,) = db.execute("select sum(v) from t").fetchone()
    rows = list(csv.reader(io.StringIO("a,b\\n1,2\\n")))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.txt", "x")
    return {
        "sum": total,
        "median": statistics.median(values),
        "exact": str(decimal.Decimal("0.1") * 3),
        "xml": ET.fromstring("<a><b>hi</b></a>").find("b").text,
        "csv": rows,
        "mail": MIMEText("body")["Content-Type"],
        "zipped": len(buffer.getvalue()) > 0,
        "python": sys.executable,
        "frozen": bool(getattr(sys, "frozen", False)),
    }

def numpy_version():
    import numpy  # the studio's package: not in the executable
    return {"numpy": numpy.__version__, "python": sys.executable}
"""


@pytest.fixture(scope="session")
def executable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-file executable: built here from this checkout, or BUILDCAT_BINARY."""
    given = os.environ.get("BUILDCAT_BINARY")
    if given:
        path = Path(given)
        assert path.is_file(), f"BUILDCAT_BINARY={given} is not a file"
        return path
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, str(CHECKOUT / "packaging" / "build.py"), "--dist", str(dist)],
        capture_output=True, text=True, timeout=1100, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "built " in done.stdout and " MiB in " in done.stdout
    return dist / "farm"


@pytest.fixture
def copied(executable: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The executable copied into a folder of its own, and an environment whose PATH
    holds that folder and the system's (Blender) but no virtual environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    farm = bin_dir / "farm"
    shutil.copy2(executable, farm)
    dropped = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "FARM_TOKEN")
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    env["PATH"] = os.pathsep.join([str(bin_dir), "/usr/local/bin", "/usr/bin", "/bin"])
    for name in ("python", "python3", "pytest"):
        found = shutil.which(name, path=env["PATH"])
        assert found is None or not found.startswith(sys.prefix), f"{found} is this venv's"
    return farm, env


@pytest.fixture
def binary_farm(copied: tuple[Path, dict[str, str]], tmp_path: Path) -> Iterator[Farm]:
    """A farm whose server, workers and CLI are the copied executable, started from an
    empty working folder."""
    program, env = copied
    work = tmp_path / "elsewhere"
    work.mkdir()
    root = tmp_path / "root"
    (root / "studio").mkdir(parents=True)
    (root / "studio" / "steps.py").write_text(STEPS)
    previous = Path.cwd()
    os.chdir(work)  # the processes start here, not in the checkout
    farm = Farm(root=root, logs=tmp_path / "logs", program=(str(program),), env=env)
    try:
        farm.start_server()
        yield farm
    finally:
        farm.stop()
        os.chdir(previous)


def test_the_executable_says_which_build_it_is_and_uses_the_compiled_parts(
    copied: tuple[Path, dict[str, str]],
) -> None:
    program, env = copied
    done = subprocess.run([str(program), "--version"], capture_output=True, text=True,
                          env=env, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"farm {buildcat.__version__}"
    assert lines[1].startswith("single executable (one file, commit ")
    assert "linux-x86_64" in lines[1] and "embedded Python 3." in lines[1]
    for label in bundle.SPEEDUPS:  # each compiled part, not its pure-Python fallback
        assert f"{label} yes" in lines[2], lines[2]
    # As python: -m, -c and a script file run in the embedded interpreter.
    script = program.parent / "hello.py"
    script.write_text("import sys; print('script', sys.argv[1:], getattr(sys, 'frozen', 0))")
    ran = subprocess.run([str(program), str(script), "a", "b"], capture_output=True,
                         text=True, env=env, timeout=120, check=False)  # fmt: skip
    assert ran.stdout.strip() == "script ['a', 'b'] True", ran.stderr
    code = subprocess.run([str(program), "-c", "import sys; print(sys.argv)", "x"],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert code.stdout.strip() == "['-c', 'x']", code.stderr
    # The Blender add-on it carries: the same files as the package's.
    addon = subprocess.run([str(program), "addon", "zip", "-o", str(program.parent / "a.zip")],
                           capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert addon.returncode == 0, addon.stderr
    with zipfile.ZipFile(program.parent / "a.zip") as archive:
        names = sorted(archive.namelist())
    package = CHECKOUT / "buildcat" / "addon"
    expected = sorted(f"buildcat_farm/{p.name}" for p in package.iterdir() if p.is_file())
    assert names == expected
    bad = subprocess.run([str(program), "no-such-command"], capture_output=True, text=True,
                         env=env, timeout=120, check=False)  # fmt: skip
    assert bad.returncode != 0 and "no-such-command" in bad.stderr


@needs_binary
def test_a_farm_runs_from_the_executable_alone(
    binary_farm: Farm, scene_file: Path, browser: object
) -> None:
    farm = binary_farm
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "spin.blend")
    (farm.root / "jobtypes").mkdir()
    shutil.copy(CHECKOUT / "docs" / "examples" / "jobtypes" / "bake_then_render.py",
                farm.root / "jobtypes")  # fmt: skip
    farm.start_worker("--slots", "1")
    farm.start_worker("--slots", "1")
    farm.wait_workers(2, timeout=120)
    # A Python job: a module under the root, run in the executable's own interpreter.
    submitted = farm.cli("submit", "python", "studio.steps:survey", "[1.5, 2.5, 4]", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)["id"]
    results = farm.cli("results", job, "--json", timeout=120)
    assert results.returncode == 0, results.stderr
    (result,) = json.loads(results.stdout)
    assert result["sum"] == 8.0 and result["median"] == 2.5 and result["exact"] == "0.3"
    assert result["xml"] == "hi" and result["csv"] == [["a", "b"], ["1", "2"]]
    assert result["mail"].startswith("text/plain") and result["zipped"] is True
    assert result["frozen"] is True and result["python"] == farm.program[0]
    # A Blender render through it, with the Blender on PATH.
    render = farm.cli("submit", "blender", "shots/spin.blend", "--frames", "1-2",
                      "--output", "out/f_####", "--resolution", "32x32", "--samples", "1",
                      "--preview-video", "--json")  # fmt: skip
    assert render.returncode == 0, render.stderr
    render_id = json.loads(render.stdout)["id"]
    waited = farm.cli("wait", render_id, timeout=300)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    for frame in (1, 2):
        with Image.open(farm.root / "out" / f"f_{frame:04d}.png") as image:
            assert image.size == (32, 32)
    # Its preview video, made with the ffmpeg on PATH.
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames",
         "-of", "csv=p=0", str(farm.root / "out" / "preview.mp4")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert probe.stdout.strip() == "2", probe.stderr
    # The job types in the root, listed by the server (its own child: the executable).
    types = farm.cli("job-types", "--server", "--json")
    assert types.returncode == 0, types.stderr
    assert "bake_then_render" in {t["name"] for t in json.loads(types.stdout)}
    # The dashboard it serves, in a real browser, through the link `farm dashboard` prints.
    link = farm.cli("dashboard")
    assert link.returncode == 0, link.stderr
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(link.stdout.strip())
    page.locator(f'tr[data-job="{render_id}"]').wait_for(timeout=30_000)
    page.close()


def test_only_python_command_lines_are_run_as_python(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text("")
    for args in (["-m", "buildcat.worker.child"], ["-I", "-m", "x"], ["-X", "dev", "-c", "1"],
                 ["-u", str(script), "a"], [str(script)]):  # fmt: skip
        assert bundle.python_invocation(args), args
    for args in ([], ["server"], ["submit", "python", str(script)], ["-h"], ["--version"],
                 [str(tmp_path / "missing.py")], ["-X"]):  # fmt: skip
        assert not bundle.python_invocation(args), args


def test_a_pure_python_fallback_is_named_by_farm_version() -> None:
    fallbacks = {"AIOHTTP_NO_EXTENSIONS": "1", "MSGPACK_PUREPYTHON": "1"}
    done = subprocess.run([sys.executable, "-m", "buildcat", "--version"], capture_output=True,
                          text=True, env={**os.environ, **fallbacks}, timeout=120)  # fmt: skip
    assert "aiohttp's C HTTP parser NO" in done.stdout and "msgpack's C extension NO" in done.stdout
    assert "installed with pip" in done.stdout
    assert "zeroconf's compiled DNS yes" in done.stdout


def test_a_worker_runs_tasks_in_the_python_it_is_given(binary_farm: Farm) -> None:
    farm = binary_farm
    venv_python = Path(sys.executable)  # has buildcat of this version, and numpy
    farm.start_worker("--no-blender", "--tags", "studio", "--python", str(venv_python))
    farm.start_worker("--no-blender", "--tags", "plain")
    farm.wait_workers(2, timeout=120)
    # In the executable's own Python there is no numpy: the task says so.
    plain = farm.cli("submit", "python", "studio.steps:numpy_version", "--requires", "plain",
                     "--max-attempts", "1", "--json")  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    failed = farm.cli("wait", json.loads(plain.stdout)["id"], timeout=120)
    assert failed.returncode != 0 and "No module named 'numpy'" in failed.stderr, failed
    submitted = farm.cli("submit", "python", "studio.steps:numpy_version", "--requires",
                         "studio", "--json")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    results = farm.cli("results", json.loads(submitted.stdout)["id"], "--json", timeout=120)
    assert results.returncode == 0, results.stderr
    (result,) = json.loads(results.stdout)
    import numpy

    assert result == {"numpy": numpy.__version__, "python": str(venv_python)}
    # A Python without buildcat (a bare virtual environment's folder) is refused at
    # start, in one line, before the worker joins; so is a path that is no Python.
    bare = farm.root.parent / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True,
                   timeout=120)  # fmt: skip
    refused = farm.cli("worker", "--name", "bare", "--python", str(bare))
    assert refused.returncode != 0
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "buildcat does not import there" in refused.stderr
    missing = farm.cli("worker", "--name", "missing", "--python", "/no/such/python")
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1
    assert "no Python program there" in missing.stderr
    names = {w["name"] for w in farm.client().workers()}
    assert len(names) == 2 and "bare" not in names and "missing" not in names


def test_sigterm_to_the_executables_process_group_drains_its_worker(binary_farm: Farm) -> None:
    """The one-file bootloader passes a signal on to the Python it started, which got
    it from the group too: the worker must take the two as one, and drain."""
    farm = binary_farm
    shutil.copy(Path(__file__).parent / "farm_jobs.py", farm.root / "farm_jobs.py")
    worker = subprocess.Popen(
        [*farm.program, "worker", "--host", "127.0.0.1", "--port", str(farm.port),
         "--root", str(farm.root), "--name", "service", "--no-blender"],
        stdout=farm._log("service"), stderr=subprocess.STDOUT, env=farm.env,
        start_new_session=True,
    )  # fmt: skip
    farm.workers.append(worker)
    client = farm.client()
    gate = farm.gate("draining")
    job = client.map("farm_jobs:gated", ["draining", "draining"], max_attempts=1)
    gate.wait_started(timeout=120)
    os.killpg(worker.pid, signal.SIGTERM)  # systemd's default: every process in the group
    wait_for(lambda: "draining: signal received" in farm.log_text("service"))
    gate.open()
    assert worker.wait(timeout=60) == 0
    assert "stopping now" not in farm.log_text("service")
    tasks = job.tasks()
    assert [task["state"] for task in tasks] == ["done", "queued"]
    assert tasks[0]["failures"] == 0 and tasks[1]["attempts"] == 0
