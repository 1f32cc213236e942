"""`farm submit command`: shell-command templates run per chunk of frames by real workers."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import buildcat
from buildcat.errors import FarmError
from buildcat.jobs import command, script
from tests.blender_support import descendants, gone
from tests.conftest import Farm, wait_for
from tests.test_refusals import call, job_ids


def worker(farm: Farm, *extra: str) -> None:
    farm.start_worker("--no-blender", *extra)


def one_line_error(done: object) -> str:
    """The stderr of a refused CLI call: one line, no traceback, non-zero exit."""
    assert done.returncode != 0, done.stdout  # type: ignore[attr-defined]
    err = done.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return str(err)


# ---- the template rules (pure) ----------------------------------------------------------------


def test_variables_parse_in_both_forms_and_a_dollar_is_doubled() -> None:
    pieces = command.parse_template("a$FRAME-${END}$$x")
    assert pieces == [
        ("text", "a"),
        ("var", "FRAME"),
        ("text", "-"),
        ("var", "END"),
        ("text", "$x"),
    ]
    for bad, why in [
        ("echo $HOME", "unknown variable $HOME"),
        ("echo ${frame}", "unknown variable ${frame}"),
        ("echo $(date)", "not a variable"),
        ("echo $1", "not a variable"),
    ]:
        with pytest.raises(FarmError, match=why.replace("$", r"\$").replace("{", r"\{")):
            command.parse_template(bad)


def test_text_variables_reach_the_shell_as_quoted_references_and_frames_as_digits() -> None:
    pieces = command.parse_template("""cp $ROOT/a "$OUTDIR/f_$FRAME" '$JOB' $FRAMES""")
    text = command.shell_command(pieces, command.frame_values([3, 5]))
    assert text == (
        'cp "${BUILDCAT_ROOT}"/a "${BUILDCAT_OUTDIR}/f_3" \'\'"${BUILDCAT_JOB_ID}"\'\' 3,5'
    )


def test_step_is_the_spacing_of_an_evenly_spaced_chunk_only() -> None:
    assert command.frame_values([1, 3, 5])["STEP"] == "2"
    assert command.frame_values([7])["STEP"] == "1"
    assert "STEP" not in command.frame_values([1, 2, 5])
    with pytest.raises(FarmError, match="not evenly spaced"):
        command.validate_payload({"template": "r -j $STEP", "frames": [1, 2, 5]})


@pytest.mark.parametrize(
    ("regex", "line", "fraction"),
    [
        (r"(\d+)%", "render 40% done", 0.4),
        (r"(\d+)/(\d+)", "frame 3/4", 0.75),
        (r"at (?P<fraction>[\d.]+)", "at 0.2", 0.2),
        (r"(?P<total>\d+) total, (?P<done>\d+) done", "8 total, 2 done", 0.25),
        (r"(\d+)/(\d+)", "no numbers", None),
    ],
)
def test_progress_regex_groups(regex: str, line: str, fraction: float | None) -> None:
    assert command.ProgressRegex(regex).read(line) == fraction


# ---- on a real farm ---------------------------------------------------------------------------


def test_variables_are_filled_in_per_chunk(farm: Farm) -> None:
    worker(farm)
    template = (
        "echo $START $END $STEP $FRAMES $TASK $JOB ${FRAME} > $OUTDIR/f_$FRAME.txt; "
        "pwd > $OUTDIR/cwd_$FRAME.txt"
    )
    done = farm.cli(
        "submit", "command", template, "--frames", "1-6:1", "--chunk", "3",
        "--outdir", "out", "--wait", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["id"]
    out = farm.root / "out"
    assert sorted(p.name for p in out.glob("f_*.txt")) == ["f_1.txt", "f_4.txt"]
    assert (out / "f_1.txt").read_text().split() == [
        "1",
        "3",
        "1",
        "1,2,3",
        f"{job_id}.0",
        job_id,
        "1",
    ]
    assert (out / "f_4.txt").read_text().split() == [
        "4",
        "6",
        "1",
        "4,5,6",
        f"{job_id}.1",
        job_id,
        "4",
    ]
    # The worker's root is the working directory.
    assert Path((out / "cwd_4.txt").read_text().strip()) == farm.root.resolve()
    assert [t["label"] for t in farm.client().job(job_id).tasks()] == ["1-3", "4-6"]


def test_the_exit_code_decides_and_the_output_is_the_task_log(farm: Farm) -> None:
    worker(farm)
    good = farm.cli(
        "submit", "command", "echo hello from $FRAME; echo x > $OUTDIR/a.txt", "--frames", "7",
        "--wait",
    )  # fmt: skip
    assert good.returncode == 0, good.stderr
    job_id = good.stdout.split()[0]
    assert (farm.root / "commands" / job_id / "a.txt").read_text() == "x\n"  # the default $OUTDIR
    logs = farm.cli("logs", job_id)
    assert logs.returncode == 0, logs.stderr
    assert "hello from 7" in logs.stdout
    bad = farm.cli(
        "submit", "command", "echo about to fail $FRAME >&2; exit 3", "--frames", "2",
        "--max-attempts", "1", "--json",
    )  # fmt: skip
    assert bad.returncode == 0, bad.stderr
    bad_id = json.loads(bad.stdout)["id"]
    waited = farm.cli("wait", bad_id)
    assert waited.returncode != 0
    [task] = farm.client().job(bad_id).tasks()
    assert task["state"] == "failed"
    assert "exited with code 3" in task["error"]
    assert "about to fail 2" in task["error"]  # its last output, stderr included
    assert "about to fail 2" in farm.cli("logs", bad_id).stdout


def test_matching_lines_become_progress_seen_in_status(farm: Farm) -> None:
    worker(farm)
    client = farm.client()
    job = client.command(
        "echo step 1/4; while [ ! -e gates/go ]; do sleep 0.05; done; echo step 4/4",
        progress_regex=r"step (\d+)/(\d+)",
    )
    [task] = wait_for(lambda: [t for t in job.tasks() if t["progress"] == 0.25], timeout=60)
    assert task["progress_message"] == "step 1/4"
    (farm.root / "gates").mkdir(exist_ok=True)
    (farm.root / "gates" / "go").write_text("go")
    assert job.wait(60)["state"] == "done"


def test_a_missing_output_fails_the_task(farm: Farm) -> None:
    worker(farm)
    client = farm.client()
    # Frames 1 and 2 in one task; it writes only frame 1.
    job = client.command(
        "touch $OUTDIR/f_0001.png", "1-2", chunk=2, outdir="shots",
        outputs=["$OUTDIR/f_####.png"], max_attempts=1,
    )  # fmt: skip
    with pytest.raises(
        buildcat.JobFailed, match=r"did not write 1 of its 2 output\(s\): shots/f_0002"
    ):
        job.wait(60)
    (farm.root / "out").mkdir()
    whole = client.command(
        "touch out/a_$FRAME.txt", "1-3", outputs=["out/a_$FRAME.txt"], max_attempts=1
    )
    assert whole.wait(60)["state"] == "done"
    assert [r["outputs"] for r in whole.results()] == [
        ["out/a_1.txt"],
        ["out/a_2.txt"],
        ["out/a_3.txt"],
    ]


def test_an_unknown_variable_is_refused_at_submit_by_cli_and_http(farm: Farm) -> None:
    refused = farm.cli("submit", "command", "echo $HOME $FRAME", "--frames", "1-3")
    assert "unknown variable $HOME" in one_line_error(refused)
    no_frames = farm.cli("submit", "command", "echo $FRAME")
    assert "$FRAME needs frames" in one_line_error(no_frames)
    assert "--chunk needs --frames" in one_line_error(
        farm.cli("submit", "command", "ls", "--chunk", "2")
    )
    status, reply = call(
        farm, "POST", "/jobs",
        {"kind": "command", "tasks": [{"payload": {"template": "echo ${NOPE}", "frames": [1]}}]},
    )  # fmt: skip
    assert status == 400
    assert "unknown variable ${NOPE}" in reply["error"]
    # A frame is an integer: text where a frame goes is refused, so it cannot reach a shell.
    status, reply = call(
        farm, "POST", "/jobs",
        {"kind": "command", "tasks": [{"payload": {"template": "echo $FRAME",
                                                   "frames": ["1; touch INJECTED"]}}]},
    )  # fmt: skip
    assert status == 400
    assert "'frames' must be a list of integers" in reply["error"]
    assert job_ids(farm) == []


@pytest.fixture
def odd_farm(tmp_path: Path) -> Iterator[Farm]:
    """A farm whose root path holds what a shell would read as syntax."""
    root = tmp_path / """it's a root; touch INJECTED $(touch INJECTED) "q" `touch INJECTED`"""
    root.mkdir()
    farm = Farm(root=root, logs=tmp_path / "logs")
    farm.start_server()
    try:
        yield farm
    finally:
        farm.stop()


def test_a_root_path_full_of_shell_syntax_is_one_word_wherever_it_stands(
    odd_farm: Farm, tmp_path: Path
) -> None:
    worker(odd_farm)
    client = odd_farm.client()
    job = client.command(
        """printf '%s\\n' $ROOT "$ROOT" '$ROOT' "x$OUTDIR" > $OUTDIR/roots.txt""",
        outdir="out",
    )
    assert job.wait(60)["state"] == "done"
    root = str(odd_farm.root.resolve())
    lines = (odd_farm.root / "out" / "roots.txt").read_text().splitlines()
    assert lines == [root, root, root, f"x{root}/out"]
    # The argv form: no shell at all, and the root stays one argument.
    argv = client.command("printf <%s> $FRAME $ROOT", "5", argv=True, outdir="out", max_attempts=1)
    assert argv.wait(60)["state"] == "done"
    log = client.log(f"{argv.id}.0")
    assert f"<5><{root}>" in log
    assert not list(tmp_path.rglob("INJECTED")), "the root's text ran as shell syntax"


def test_the_argv_form_runs_no_shell(farm: Farm) -> None:
    worker(farm)
    done = farm.cli(
        "submit", "command", "--argv", "printf [%s] $FRAMES 'two words' ; $$HOME",
        "--frames", "1-2", "--chunk", "2", "--wait", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["id"]
    log = farm.client().log(f"{job_id}.0")
    assert "[1,2][two words][;][$HOME]" in log  # ';' and $HOME reach printf as they are


def test_a_program_is_told_the_root_as_its_working_directory(farm: Farm) -> None:
    # Blender (no shell) resolves a relative .blend against $PWD, not the real directory:
    # `blender -b shots/a.blend` in a command failed while PWD was the worker's own.
    worker(farm)
    job = farm.client().command(["env"], max_attempts=1)
    job.wait(timeout=120)
    variables = dict(line.split("=", 1) for line in farm.client().log(f"{job.id}.0").splitlines()
                     if "=" in line)  # fmt: skip
    assert Path(variables["PWD"]).resolve() == farm.root.resolve()


def test_a_cancel_ends_the_commands_whole_process_group(farm: Farm) -> None:
    # The worker's own last resort (killing the task process) comes only after 300 s.
    process = farm.start_worker("--no-blender", "--cancel-grace", "300")
    client = farm.client()
    job = client.command(
        "trap 'echo got TE\"\"RM; exit 1' TERM; sleep 1000 & sleep 1000 & wait", max_attempts=1
    )

    def sleeps() -> list[int]:
        return [p for p, line in descendants(process.pid).items() if line == "sleep 1000"]

    started = wait_for(lambda: len(sleeps()) == 2 and sleeps(), timeout=60)
    [child] = [p for p, line in descendants(process.pid).items() if "buildcat.worker.child" in line]
    job.cancel()
    wait_for(lambda: all(gone(pid) for pid in started), timeout=60)
    assert not gone(child), "the task process itself was killed, not the command's group"
    assert wait_for(lambda: job.status()["state"] == "cancelled")
    log = wait_for(lambda: "process group" in (text := client.log(f"{job.id}.0")) and text)
    assert "got TERM" in log  # the shell was asked to stop (SIGTERM), and said so
    assert "cancelled: ended /bin/sh and its process group (SIGTERM)" in log
    # Nothing was left for the task process's own sweep to find.
    assert "left running" not in log


def test_what_a_command_leaves_running_ends_with_it(farm: Farm) -> None:
    process = farm.start_worker("--no-blender")
    client = farm.client()
    # The background sleep keeps the output pipe open after the shell has exited.
    job = client.command("sleep 1000 & echo started", max_attempts=1)
    assert job.wait(60)["state"] == "done"
    assert not [p for p, line in descendants(process.pid).items() if line == "sleep 1000"]
    log = client.log(f"{job.id}.0")
    assert "started" in log
    assert "ended what /bin/sh left running in its process group (SIGTERM)" in log


def test_a_timeout_stops_the_command_and_fails_the_attempt(farm: Farm) -> None:
    process = farm.start_worker("--no-blender", "--cancel-grace", "300")
    job = farm.client().command("sleep 1000", timeout=1.0, max_attempts=1)
    with pytest.raises(buildcat.JobFailed, match="timed out"):
        job.wait(60)
    wait_for(lambda: not [p for p, c in descendants(process.pid).items() if c == "sleep 1000"])


def test_a_program_that_cannot_start_fails_its_task(farm: Farm) -> None:
    worker(farm)
    job = farm.client().command("no-such-program-here $FRAME", "1", argv=True, max_attempts=1)
    with pytest.raises(buildcat.JobFailed, match="cannot start no-such-program-here"):
        job.wait(60)


def test_a_command_task_in_a_job_of_another_kind(farm: Farm) -> None:
    worker(farm)
    (farm.root / "lib.py").write_text(
        "import buildcat\n\ndef read(path):\n    return buildcat.path(path).read_text()\n"
    )
    job = farm.client().submit_tasks(
        [
            {"payload": {"kind": "command", "template": "echo $FRAME > mixed.txt", "frames": [9]}},
            {"payload": {"function": "lib.py:read", "args": ["mixed.txt"]}, "depends": [0]},
        ]
    )
    assert job.wait(60)["state"] == "done"
    assert job.results()[1] == "9\n"


_TEXT = st.text(alphabet=st.sampled_from("$${}AFRMESTOUDIJB_#/.'\"\\ (a1-,"), max_size=30)
_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    _TEXT,
    st.lists(st.one_of(st.integers(-5, 5), _TEXT), max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["template", "argv", "frames", "outdir", "outputs", "progress_regex"]),
        _VALUE,
    )
)
def test_any_command_payload_is_taken_or_refused_with_a_farm_error(payload: dict) -> None:
    try:
        command.validate_payload(payload)
    except FarmError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["script", "args", "python"]), _VALUE))
def test_any_script_payload_is_taken_or_refused_with_a_farm_error(payload: dict) -> None:
    try:
        script.validate_payload(payload)
    except FarmError as exc:
        assert "\n" not in str(exc)


def test_a_brenda_style_blender_command_renders_every_frame(farm: Farm, scene_file: Path) -> None:
    if shutil.which("blender") is None:
        pytest.skip("no blender command")
    (farm.root / "shots").mkdir()
    shutil.copy(scene_file, farm.root / "shots" / "spin.blend")
    worker(farm)
    done = farm.cli(
        "submit", "command",
        "blender -b shots/spin.blend -F PNG -x 1 -o $OUTDIR/frame_#### -s $START -e $END "
        "-j $STEP -a",
        "--frames", "1-5:2", "--chunk", "3", "--outdir", "renders/spin",
        "--outputs", "$OUTDIR/frame_####.png", "--progress-regex", r"Sample (\d+)/(\d+)",
        "--max-attempts", "1", "--wait", "--json",
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    written = sorted(p.name for p in (farm.root / "renders" / "spin").glob("*.png"))
    assert written == ["frame_0001.png", "frame_0003.png", "frame_0005.png"]
