"""Job types: a Python file in <root>/jobtypes/ declares settings and compiles them into
tasks. Real `farm` processes: listing (CLI, Python API, HTTP), submits through the CLI
and the API, refusals, reload on change, broken files, and the built-in render type."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import buildcat
from buildcat.jobs.blender import plan_render
from buildcat.jobtypes import JobPlan, SettingError, loading
from tests.conftest import Farm, wait_for

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples" / "jobtypes"

#: The job functions the test job types use: each stage writes a file; the report lists
#: the files it found, so a report that ran too early shows it.
STEPS = """
import time

from buildcat.jobs import context

def stage(name, seconds):
    time.sleep(seconds)  # the stages take a while, so a report that did not wait shows it
    path = context.current().path("out") / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(name)
    return name

def report(greeting):
    found = sorted(p.stem for p in context.current().path("out").glob("*.txt"))
    return {"greeting": greeting, "found": found}
"""

PIPELINE = '''
"""Stages, then a report that waits for all of them."""
from buildcat.jobtypes import Setting

SETTINGS = [
    Setting("count", "int", default=2, minimum=1, maximum=10, help="How many stages"),
    Setting("greeting", "choice", choices=["hello", "goodbye"], default="hello"),
    Setting("pause", "float", default=0.3, help="Seconds each stage takes"),
    Setting("who", "str", required=True, help="Whom the report greets"),
]

def compile(settings, job):
    stages = [
        job.python("steps.py:stage", f"stage{i}", settings.pause) for i in range(settings.count)
    ]
    job.python("steps.py:report", f"{settings.greeting} {settings.who}", depends=stages)
'''


def write_type(root: Path, name: str, source: str) -> Path:
    folder = root / "jobtypes"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.py"
    old = path.stat().st_mtime_ns if path.exists() else None
    path.write_text(textwrap.dedent(source))
    if old is not None and path.stat().st_mtime_ns == old:  # a coarse clock: move it on
        os.utime(path, ns=(old + 1_000_000, old + 1_000_000))
    return path


@pytest.fixture
def typed_farm(farm: Farm) -> Iterator[Farm]:
    (farm.root / "steps.py").write_text(STEPS)
    write_type(farm.root, "pipeline", PIPELINE)
    yield farm


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("farm: error: "), done.stderr
    return lines[0]


def test_a_job_type_file_is_listed_with_its_settings(typed_farm: Farm) -> None:
    shown = typed_farm.cli("job-types")
    assert shown.returncode == 0, shown.stderr
    assert "pipeline  (jobtypes/pipeline.py)  Stages, then a report" in shown.stdout
    assert "--set who=str [required]  Whom the report greets" in shown.stdout
    assert "--set greeting=hello|goodbye [default hello]" in shown.stdout
    assert "--set count=int [default 2, minimum 1, maximum 10]  How many stages" in shown.stdout
    assert "render  (built-in)" in shown.stdout

    helped = typed_farm.cli("submit", "pipeline", "--help")
    assert "Settings of pipeline (jobtypes/pipeline.py):" in helped.stdout
    assert "--set who=str [required]  Whom the report greets" in helped.stdout

    listed = json.loads(typed_farm.cli("job-types", "--json").stdout)
    by_name = {entry["name"]: entry for entry in listed}
    assert set(by_name) == {"render", "pipeline"}
    settings = {s["name"]: s for s in by_name["pipeline"]["settings"]}
    assert list(settings) == ["count", "greeting", "pause", "who"]
    assert settings["greeting"]["choices"] == ["hello", "goodbye"]
    assert settings["who"]["required"] is True and settings["count"]["default"] == 2

    client = typed_farm.client()
    assert client.job_types() == listed
    # The server lists what its root holds, for forms (dashboard, add-on).
    over_http = client.request("GET", "/job-types")["job_types"]
    assert over_http == listed == client.job_types(from_server=True)
    assert json.loads(typed_farm.cli("job-types", "--server", "--json").stdout) == listed


def test_submit_type_runs_its_tasks_after_their_dependencies(typed_farm: Farm) -> None:
    typed_farm.start_worker("--slots", "2")
    typed_farm.start_worker()
    done = typed_farm.cli(
        "submit", "pipeline", "--set", "count=4", "--set", "who=world", "--set",
        "greeting=goodbye", "--priority", "7", "--name", "shot 12 stages", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job = typed_farm.client().job(json.loads(done.stdout)["id"])
    job.wait(timeout=120)
    results = job.results()
    assert results[:4] == ["stage0", "stage1", "stage2", "stage3"]
    # The report ran only once every stage had written its file.
    assert results[4] == {
        "greeting": "goodbye world",
        "found": ["stage0", "stage1", "stage2", "stage3"],
    }
    assert [t["depends"] for t in job.tasks()] == [[], [], [], [], [0, 1, 2, 3]]
    status = job.status()
    assert status["name"] == "shot 12 stages"
    assert status["priority"] == 7
    assert status["meta"]["job_type"] == "pipeline"
    assert status["meta"]["settings"] == {
        "count": 4, "greeting": "goodbye", "pause": 0.3, "who": "world",
    }  # fmt: skip

    # The Python API: the same type, settings as keywords, --wait's counterpart.
    again = typed_farm.client().submit_type("pipeline", who="you", count=1, priority=2)
    assert again.results()[-1]["greeting"] == "hello you"
    assert again.status()["priority"] == 2

    # --after, like every submit: the job waits for the one named.
    after = typed_farm.cli(
        "submit", "pipeline", "--set", "who=later", "--set", "count=1", "--after", again.id,
        "--json",
    )  # fmt: skip
    assert after.returncode == 0, after.stderr
    later = typed_farm.client().job(json.loads(after.stdout)["id"])
    assert later.status()["after"] == [again.id]
    assert later.results()[-1]["greeting"] == "hello later"
    refused = one_line_error(
        typed_farm.cli("submit", "pipeline", "--set", "who=x", "--after", "deadbeef")
    )
    assert "no job 'deadbeef'" in refused


def test_bad_settings_are_refused_in_one_line_and_nothing_is_queued(typed_farm: Farm) -> None:
    client = typed_farm.client()
    before = len(client.jobs())
    cases = {
        ("--set", "who=x", "--set", "count=many"): "setting 'count' must be a whole number",
        ("--set", "who=x", "--set", "count=11"): "setting 'count' must be at most 10",
        ("--set", "who=x", "--set", "greeting=hi"): "must be one of hello, goodbye, not 'hi'",
        ("--set", "count=2",): "job type 'pipeline' needs setting 'who' (Whom the report",
        ("--set", "who=x", "--set", "colour=red"): "job type 'pipeline' has no setting 'colour'",
        ("--set", "who=x", "--set", "pause=soon"): "setting 'pause' must be a number",
        ("--set", "who=x", "--set", "who=y"): "--set who given twice",
        ("--set", "who"): "--set 'who' must look like NAME=VALUE",
    }  # fmt: skip
    for args, reason in cases.items():
        line = one_line_error(typed_farm.cli("submit", "pipeline", *args))
        assert reason in line, (args, line)
    line = one_line_error(typed_farm.cli("submit", "pipelin", "--set", "who=x"))
    assert "no submit command or job type 'pipelin'" in line
    assert "job types: render, pipeline" in line
    with pytest.raises(SettingError, match="has no setting 'colour'"):
        client.submit_type("pipeline", who="x", colour="red")
    with pytest.raises(SettingError, match="setting 'count' must be a whole number"):
        client.submit_type("pipeline", who="x", count=2.5)
    assert len(client.jobs()) == before


def test_an_edited_job_type_changes_the_next_submit_and_the_listing(typed_farm: Farm) -> None:
    typed_farm.start_worker()
    client = typed_farm.client()
    first = client.submit_type("pipeline", who="a", count=1, pause=0)
    assert len(first.results()) == 2
    assert [s["name"] for s in client.request("GET", "/job-types")["job_types"][1]["settings"]]

    write_type(
        typed_farm.root,
        "pipeline",
        PIPELINE.replace(
            "depends=stages)",
            "depends=stages)\n    job.python('steps.py:report', 'encore', depends=stages)",
        ).replace(
            'Setting("who", "str", required=True, help="Whom the report greets"),',
            'Setting("who", "str", default="nobody"),',
        ),
    )
    second = client.submit_type("pipeline", count=1, pause=0)
    assert [r["greeting"] if isinstance(r, dict) else r for r in second.results()] == [
        "stage0", "hello nobody", "encore",
    ]  # fmt: skip
    listed = {e["name"]: e for e in client.request("GET", "/job-types")["job_types"]}
    who = next(s for s in listed["pipeline"]["settings"] if s["name"] == "who")
    assert who["required"] is False and who["default"] == "nobody"
    shown = typed_farm.cli("job-types")
    assert "--set who=str [default nobody]" in shown.stdout


BROKEN = {
    "typo": "from buildcat.jobtypes import Setting\nSETTINGS = [Setting('a', 'int')\n",
    "raises": """
        from buildcat.jobtypes import Setting
        SETTINGS = [Setting("n", "int", default=1)]
        def compile(settings, job):
            return {}["no such key"]
    """,
    "spins": """
        def compile(settings, job):
            while True:
                pass
    """,
    "stalls": """
        import time
        while True:
            time.sleep(0.1)
    """,
    "nocompile": "SETTINGS = []\n",
    "render": "def compile(settings, job):\n    pass\n",  # the built-in's name
}


def test_a_broken_job_type_is_one_line_and_breaks_nothing_else(typed_farm: Farm) -> None:
    for name, source in BROKEN.items():
        write_type(typed_farm.root, name, source)
    typed_farm.start_worker()
    client = typed_farm.client()
    before = len(client.jobs())
    environment = {"BUILDCAT_JOBTYPE_TIMEOUT": "2"}
    reasons = {
        "typo": "job type 'typo' (jobtypes/typo.py) is broken: SyntaxError: ",
        "raises": "job type 'raises' (jobtypes/raises.py) is broken: KeyError: 'no such key'",
        "spins": "job type 'spins' (jobtypes/spins.py) is broken: compile took longer than 2 s",
        "stalls": "job type 'stalls' (jobtypes/stalls.py) is broken: loading took longer than",
        "nocompile": "is broken: it defines no compile(settings, job) function",
    }
    for name, reason in reasons.items():
        line = one_line_error(typed_farm.cli("submit", name, **environment))
        assert reason in line, line
    with pytest.raises(buildcat.FarmError, match=r"'raises' .* KeyError"):
        client.submit_type("raises")
    assert len(client.jobs()) == before

    # --check: every one that does not load, or fails planned with its defaults.
    checked = typed_farm.cli("job-types", "--check", **environment)
    assert checked.returncode == 1
    assert checked.stderr.strip() == "farm: error: 6 job type(s) broken"
    assert "'render' is the built-in job type's name; rename it" in checked.stdout
    assert 'return {}["no such key"]' in checked.stdout  # the traceback, with its line
    assert "KeyError: 'no such key'" in checked.stdout
    assert "SyntaxError" in checked.stdout
    assert "loading took longer than 5 s" in checked.stdout
    assert "compile took longer than 2 s" in checked.stdout
    one = typed_farm.cli("job-types", "--check", "raises", "--set", "n=3")
    assert one.returncode == 1 and 'return {}["no such key"]' in one.stdout
    assert one.stderr.strip().endswith("is broken: KeyError: 'no such key'")
    planned = typed_farm.cli("job-types", "--check", "pipeline", "--set", "who=x", "--json")
    assert [t.get("depends", []) for t in json.loads(planned.stdout)["tasks"]] == [[], [], [0, 1]]
    # The good ones still list, submit and run; the server kept serving throughout.
    listed = {e["name"]: e for e in client.request("GET", "/job-types")["job_types"]}
    assert "settings" in listed["pipeline"]
    render = [e for e in client.request("GET", "/job-types")["job_types"] if e["name"] == "render"]
    assert [e["source"] for e in render] == ["built-in", "jobtypes/render.py"]
    assert "settings" in render[0] and "rename it" in render[1]["error"]
    assert "KeyError" not in listed["raises"].get("error", "")  # loads: broken only at submit
    assert "SyntaxError" in listed["typo"]["error"] and "traceback" in listed["typo"]
    assert "loading took longer" in listed["stalls"]["error"]
    job = client.submit_type("pipeline", who="still here", count=1, pause=0)
    assert job.results()[-1]["greeting"] == "hello still here"
    assert client.ping()
    assert typed_farm.server is not None and typed_farm.server.poll() is None


def test_the_builtin_render_type_renders_what_submit_blender_does(
    farm: Farm, scene_file: Path
) -> None:
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "spin.blend")
    shown = farm.cli("job-types", "--json")
    render = {e["name"]: e for e in json.loads(shown.stdout)}["render"]
    names = [s["name"] for s in render["settings"]]
    for option in ("scene", "frames", "chunk", "output", "format", "engine", "samples",
                   "resolution", "camera", "tiles", "sample_split", "blender_version"):  # fmt: skip
        assert option in names
    farm.start_worker()
    by_type = farm.cli(
        "submit", "render", "--set", "scene=shots/spin.blend", "--set", "frames=1-2",
        "--set", "output=renders/typed/frame_####", "--wait", "--json",
    )  # fmt: skip
    assert by_type.returncode == 0, by_type.stderr
    typed = json.loads(by_type.stdout)
    assert typed["state"] == "done"
    for frame in (1, 2):
        assert (farm.root / "renders" / "typed" / f"frame_{frame:04d}.png").stat().st_size > 0
    by_command = farm.cli(
        "submit", "blender", "shots/spin.blend", "--frames", "1-2",
        "--output", "renders/typed/frame_####", "--wait", "--json",
    )  # fmt: skip
    assert by_command.returncode == 0, by_command.stderr
    client = farm.client()
    typed_job, plain_job = client.job(typed["id"]), client.job(json.loads(by_command.stdout)["id"])

    def shape(job: buildcat.Job) -> list[tuple[str, list[int]]]:
        return [(t["label"], t["depends"]) for t in job.tasks()]

    assert shape(typed_job) == shape(plain_job) == [("frames 1", []), ("frames 2", [])]
    typed_status, plain_status = typed_job.status(), plain_job.status()
    assert typed_status["requires"] == plain_status["requires"]
    for key in ("scene", "frames", "output", "format", "blend_version"):
        assert typed_status["meta"][key] == plain_status["meta"][key]
    # The plan the type makes is the one the planner makes, payload for payload.
    plan = client.plan_type("render", scene="shots/spin.blend", frames="1-2")
    assert plan["tasks"] == plan_render(
        "shots/spin.blend", [1, 2], output="renders/spin/Scene/frame_####", settings={}
    )
    # farm submit blender is the render type too (Client.render submits it).
    assert plain_job.status()["meta"]["job_type"] == "render"
    line = one_line_error(farm.cli("submit", "render", "--set", "scene=shots/none.blend"))
    assert "shots/none.blend does not exist under the farm root" in line


# ---- the worked examples of docs/job-types.md -------------------------------------------------


def example_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "jobtypes").mkdir(parents=True)
    for example in EXAMPLES.glob("*.py"):
        shutil.copy(example, root / "jobtypes" / example.name)
    return root


def test_the_render_denoise_video_example_compiles_to_its_graph(tmp_path: Path) -> None:
    root = example_root(tmp_path)
    plan = loading.compile_job(
        root, "render_denoise_video", {"scene": "shots/a.blend", "frames": "1-3", "fps": "12"}
    )
    tasks = plan["tasks"]
    assert plan["kind"] == "blender"
    kinds = [t["payload"].get("kind", plan["kind"]) for t in tasks]
    assert kinds == ["blender"] * 3 + ["command"] * 3 + ["command"]
    assert [t["payload"]["frames"] for t in tasks[:3]] == [[1], [2], [3]]
    # each frame's denoise waits for its render; the video for every denoise
    assert [t.get("depends") for t in tasks[3:6]] == [[0], [1], [2]]
    assert tasks[6]["depends"] == [3, 4, 5]
    assert "hqdn3d" in " ".join(tasks[3]["payload"]["argv"])
    video = tasks[6]["payload"]["argv"]
    assert "-framerate" in video and "12" in video and video[-1].endswith("preview.mp4")
    with pytest.raises(SettingError, match="needs setting 'scene'"):
        loading.compile_job(root, "render_denoise_video", {})


def test_the_bake_then_render_example_compiles_to_its_graph(tmp_path: Path) -> None:
    root = example_root(tmp_path)
    plan = loading.compile_job(
        root, "bake_then_render", {"scene": "shots/sim.blend", "frames": "1-4", "chunk": 2}
    )
    tasks = plan["tasks"]
    assert tasks[0]["payload"]["kind"] == "command"
    assert "ptcache.bake_all" in " ".join(tasks[0]["payload"]["argv"])
    assert [t["payload"]["frames"] for t in tasks[1:]] == [[1, 2], [3, 4]]
    assert [t["depends"] for t in tasks[1:]] == [[0], [0]]
    with pytest.raises(SettingError, match="setting 'chunk' must be at least 1"):
        loading.compile_job(root, "bake_then_render", {"scene": "s.blend", "chunk": 0})


def test_a_plan_refuses_a_dependency_on_a_later_task(tmp_path: Path) -> None:
    plan = JobPlan("t", tmp_path)
    first = plan.python("m:f")
    assert plan.python("m:g", depends=[first]) == 1
    with pytest.raises(buildcat.FarmError, match="only on tasks added before it"):
        plan.python("m:h", depends=[5])


def test_the_child_time_limit_holds_without_the_alarm(typed_farm: Farm) -> None:
    """A job type that swallows the alarm is killed by the client's own deadline."""
    write_type(
        typed_farm.root,
        "stubborn",
        """
        def compile(settings, job):
            while True:
                try:
                    while True:
                        pass
                except BaseException:
                    pass
        """,
    )
    line = one_line_error(
        typed_farm.cli("submit", "stubborn", BUILDCAT_JOBTYPE_TIMEOUT="0.5", timeout=120)
    )
    assert "job type 'stubborn' is broken: it ran past" in line
    wait_for(lambda: typed_farm.client().ping())


SIMULATION_SCENE = """
import bpy, sys
scene = bpy.context.scene
scene.frame_start, scene.frame_end = 1, 4
scene.render.engine = "BLENDER_WORKBENCH"
scene.render.resolution_x = scene.render.resolution_y = 32
scene.render.image_settings.file_format = "PNG"
cube = bpy.data.objects["Cube"]
cube.modifiers.new("sim", "PARTICLE_SYSTEM")
cube.particle_systems[0].settings.count = 50
cube.particle_systems[0].settings.frame_end = 3
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[-1])
"""

BAKED = (
    "import bpy; print('BAKED', [p.point_cache.is_baked for o in bpy.data.objects "
    "for p in o.particle_systems])"
)


def test_the_bake_then_render_example_bakes_then_renders_in_blender(farm: Farm) -> None:
    blender = shutil.which("blender")
    if blender is None:
        pytest.skip("no Blender binary on PATH")
    (farm.root / "shots").mkdir()
    scene = farm.root / "shots" / "sim.blend"
    made = subprocess.run(
        [blender, "-b", "--factory-startup", "--python-exit-code", "1",
         "--python-expr", SIMULATION_SCENE, "--", str(scene)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0 and scene.is_file(), made.stdout + made.stderr
    (farm.root / "jobtypes").mkdir()
    shutil.copy(EXAMPLES / "bake_then_render.py", farm.root / "jobtypes")
    farm.start_worker()
    done = farm.cli(
        "submit", "bake_then_render", "--set", "scene=shots/sim.blend", "--set", "frames=1-4",
        "--set", "chunk=2", "--wait", "--json", timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    job = farm.client().job(json.loads(done.stdout)["state"] and json.loads(done.stdout)["id"])
    tasks = job.tasks()
    assert [t["depends"] for t in tasks] == [[], [0], [0]]
    assert all(t["state"] == "done" for t in tasks)
    assert "baked" in farm.client().log(tasks[0]["id"])
    for frame in range(1, 5):
        assert (farm.root / "renders" / "sim" / f"frame_{frame:04d}.png").stat().st_size > 0
    # The bake is in the file the render tasks read.
    checked = subprocess.run(
        [blender, "-b", str(scene), "--python-expr", BAKED],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "BAKED [True]" in checked.stdout, checked.stdout


def test_the_render_denoise_video_example_makes_a_video(farm: Farm, scene_file: Path) -> None:
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        pytest.skip("no ffmpeg on PATH")
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "spin.blend")
    (farm.root / "jobtypes").mkdir()
    shutil.copy(EXAMPLES / "render_denoise_video.py", farm.root / "jobtypes")
    farm.start_worker()
    done = farm.cli(
        "submit", "render_denoise_video", "--set", "scene=shots/spin.blend",
        "--set", "frames=1-3", "--set", "fps=12", "--wait", "--json", timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    folder = farm.root / "renders" / "spin"
    for frame in (1, 2, 3):
        assert (folder / f"denoised_{frame:04d}.png").stat().st_size > 0
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames,width,height,r_frame_rate,pix_fmt", "-of", "json",
         str(folder / "preview.mp4")],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    (stream,) = json.loads(probe.stdout)["streams"]
    assert stream["nb_read_frames"] == "3"
    assert (stream["width"], stream["height"]) == (64, 64)
    assert stream["r_frame_rate"] == "12/1" and stream["pix_fmt"] == "yuv420p"


def test_job_type_code_never_runs_in_the_server_process(typed_farm: Farm) -> None:
    """The server lists job types through a child: a file's import-time code (here it
    notes the process it runs in) never runs in the server."""
    write_type(
        typed_farm.root,
        "nosy",
        """
        import os, pathlib
        with open(pathlib.Path(__file__).parents[1] / "pids.txt", "a") as notes:
            notes.write(f"{os.getpid()}\\n")
        def compile(settings, job):
            job.python("steps.py:stage", "nosy", 0)
        """,
    )
    client = typed_farm.client()
    listed = {e["name"] for e in client.request("GET", "/job-types")["job_types"]}
    assert "nosy" in listed
    pids = {int(line) for line in (typed_farm.root / "pids.txt").read_text().split()}
    assert typed_farm.server is not None
    assert pids and typed_farm.server.pid not in pids
