"""`farm submit script`: Python files under the root run with their arguments by real workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import buildcat
from tests.conftest import Farm, wait_for
from tests.test_refusals import call, job_ids

#: Writes what it was run with to out/<name>.json: its argv, working folder and Python.
RECORD = """\
import json, os, sys
name = sys.argv[sys.argv.index("--name") + 1] if "--name" in sys.argv else "run"
os.makedirs("out", exist_ok=True)
with open(f"out/{name}.json", "w") as handle:
    json.dump({"argv": sys.argv, "cwd": os.getcwd(), "prefix": sys.prefix,
               "executable": sys.executable}, handle)
print(f"recorded {name}")
"""


@pytest.fixture
def script_farm(farm: Farm) -> Farm:
    tools = farm.root / "tools"
    tools.mkdir()
    (tools / "record.py").write_text(RECORD)
    farm.start_worker("--no-blender")
    return farm


def recorded(farm: Farm, name: str = "run") -> dict[str, object]:
    return dict(json.loads((farm.root / "out" / f"{name}.json").read_text()))


def test_a_script_runs_with_its_arguments_as_sys_argv(script_farm: Farm) -> None:
    done = script_farm.cli(
        "submit", "script", "tools/record.py", "--wait", "--json",
        "--", "--lr", "0.1", "--epochs", "3",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = recorded(script_farm)
    assert seen["argv"] == ["tools/record.py", "--lr", "0.1", "--epochs", "3"]
    assert Path(str(seen["cwd"])) == script_farm.root.resolve()
    job_id = json.loads(done.stdout)["id"]
    logs = script_farm.cli("logs", job_id)
    assert "recorded run" in logs.stdout


def test_the_exit_code_decides(script_farm: Farm) -> None:
    (script_farm.root / "tools" / "fail.py").write_text(
        "import sys\nprint('going down')\nraise SystemExit(int(sys.argv[1]))\n"
    )
    (script_farm.root / "tools" / "crash.py").write_text("raise ValueError('bad input file')\n")
    client = script_farm.client()
    with pytest.raises(buildcat.JobFailed, match="exited with code 4") as failed:
        client.script("tools/fail.py", ["4"], max_attempts=1).wait(60)
    assert "going down" in failed.value.error
    with pytest.raises(buildcat.JobFailed, match="ValueError: bad input file"):
        client.script("tools/crash.py", max_attempts=1).wait(60)
    assert client.script("tools/fail.py", ["0"]).wait(60)["state"] == "done"


def test_python_chooses_a_virtualenv_on_the_worker(script_farm: Farm, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    client = script_farm.client()
    job = client.script("tools/record.py", ["--name", "venv"], python=str(venv))
    assert job.wait(60)["state"] == "done"
    seen = recorded(script_farm, "venv")
    assert Path(str(seen["prefix"])) == venv
    assert seen["executable"] == str(venv / "bin" / "python")
    # The interpreter itself, from the CLI.
    done = script_farm.cli(
        "submit", "script", "tools/record.py", "--python", str(venv / "bin" / "python"),
        "--wait", "--", "--name", "venv-python",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Path(str(recorded(script_farm, "venv-python")["prefix"])) == venv
    # A virtualenv kept on the root, named relative to it (its python is a symlink out).
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(script_farm.root / "envs" / "a")],
        check=True,
    )
    shared = client.script("tools/record.py", ["--name", "shared"], python="envs/a/bin/python")
    assert shared.wait(60)["state"] == "done"
    assert Path(str(recorded(script_farm, "shared")["prefix"])) == script_farm.root / "envs" / "a"
    # Without --python: the worker's own interpreter.
    assert client.script("tools/record.py", ["--name", "own"]).wait(60)["state"] == "done"
    assert Path(str(recorded(script_farm, "own")["prefix"])) != venv
    missing = client.script("tools/record.py", python=str(tmp_path / "nope"), max_attempts=1)
    with pytest.raises(buildcat.JobFailed, match="no Python there"):
        missing.wait(60)


def test_buildcat_progress_in_a_script_is_seen_in_status(script_farm: Farm) -> None:
    (script_farm.root / "tools" / "train.py").write_text(
        "import os, time, buildcat\n"
        "buildcat.progress(0.5, 'epoch 1 of 2')\n"
        "while not os.path.exists('gates/go'):\n"
        "    time.sleep(0.05)\n"
        "buildcat.progress(1.0, 'epoch 2 of 2')\n"
    )
    job = script_farm.client().script("tools/train.py")
    [task] = wait_for(lambda: [t for t in job.tasks() if t["progress"] == 0.5], timeout=60)
    assert task["progress_message"] == "epoch 1 of 2"
    (script_farm.root / "gates").mkdir()
    (script_farm.root / "gates" / "go").write_text("go")
    assert job.wait(60)["state"] == "done"


def test_map_makes_one_task_per_argument_set(script_farm: Farm) -> None:
    done = script_farm.cli(
        "submit", "script", "tools/record.py",
        "--map", "--lr 0.1 --name a", "--map", "--lr 0.2 --name b", "--map=--lr 0.3 --name c",
        "--wait", "--json", "--", "--epochs", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["id"]
    tasks = script_farm.client().job(job_id).tasks()
    assert [t["label"] for t in tasks] == [
        "--lr 0.1 --name a",
        "--lr 0.2 --name b",
        "--lr 0.3 --name c",
    ]
    for name, lr in [("a", "0.1"), ("b", "0.2"), ("c", "0.3")]:
        argv = recorded(script_farm, name)["argv"]
        assert argv == ["tools/record.py", "--epochs", "2", "--lr", lr, "--name", name]
    # The Python API: argument lists as they are.
    job = script_farm.client().script("tools/record.py", map=[["--name", "x y"], "--name z"])
    assert job.wait(60)["state"] == "done"
    assert recorded(script_farm, "x y")["argv"] == ["tools/record.py", "--name", "x y"]


def test_a_file_outside_the_root_is_refused_at_submit(script_farm: Farm, tmp_path: Path) -> None:
    outside = tmp_path / "evil.py"
    outside.write_text("print('should never run')\n")
    for path in ("../evil.py", str(outside), "tools/missing.py"):
        done = script_farm.cli("submit", "script", path)
        assert done.returncode != 0
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    status, reply = call(
        script_farm,
        "POST",
        "/jobs",
        {"kind": "script", "tasks": [{"payload": {"script": "../evil.py"}}]},
    )
    assert status == 400
    assert "escapes the farm root" in reply["error"]
    assert job_ids(script_farm) == []
