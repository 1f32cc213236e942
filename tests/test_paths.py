"""The path map's rules, case by case: Windows paths by Windows rules on any system (drives,
UNC shares, either slash, any case, long paths), POSIX paths exactly, Blender's ``//``
relative paths left alone, and the classes of fixes in Flamenco's history. Pure Python:
runs on every system. Then `farm paths` editing the map in a real root."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import buildcat
from buildcat import paths
from buildcat.errors import FarmError
from buildcat.jobs import command
from buildcat.paths import LOCAL, MAPPED, NO_PATH, RELATIVE, UNMAPPED, PathMap, PathMapError
from tests.conftest import Farm

#: The farm of the docs: the root is /srv/farm on this Linux worker, F:\farm or
#: \\aurora\farm on Windows, /Volumes/Farm on a Mac; textures and a cache share besides.
FARM = PathMap.from_json(
    {
        "locations": {
            "root": {
                "windows": ["F:\\farm", "\\\\Aurora\\Farm"],
                "macos": "/Volumes/Farm",
                "linux": "/mnt/farm",
            },
            "textures": {"linux": "/mnt/tex", "windows": "T:\\", "macos": "/Volumes/Textures"},
            "texture_library": {"linux": "/mnt/texture", "windows": "U:\\lib"},
            "cache": {"linux": "/mnt/cache/", "windows": "//nas/cache/"},
        }
    }
)
LINUX = FARM.with_own_root("linux", "/srv/farm").resolve("linux")
WINDOWS = FARM.with_own_root("windows", "F:\\farm").resolve("windows")
MACOS = FARM.with_own_root("macos", "/Volumes/Farm").resolve("macos")

CASES = [
    # (written in a .blend, read on, kind, the path there, location)
    # drive letters, either slash, mixed, any case
    ("F:\\farm\\tex\\wood.png", LINUX, MAPPED, "/srv/farm/tex/wood.png", "root"),
    ("F:/farm/tex/wood.png", LINUX, MAPPED, "/srv/farm/tex/wood.png", "root"),
    ("F:/farm\\tex/wood.png", LINUX, MAPPED, "/srv/farm/tex/wood.png", "root"),
    ("f:\\FARM\\Tex\\Wood.PNG", LINUX, MAPPED, "/srv/farm/Tex/Wood.PNG", "root"),
    ("F:\\farm\\", LINUX, MAPPED, "/srv/farm/", "root"),  # a folder stays a folder
    ("/mnt/farm/plates/", WINDOWS, MAPPED, "F:\\farm\\plates\\", "root"),
    ("T:\\", LINUX, MAPPED, "/mnt/tex/", "textures"),
    # UNC shares, backslashes or forward slashes, any case; a share's root
    ("\\\\aurora\\farm\\shots\\a.blend", LINUX, MAPPED, "/srv/farm/shots/a.blend", "root"),
    ("\\\\AURORA\\FARM\\shots\\a.blend", MACOS, MAPPED, "/Volumes/Farm/shots/a.blend", "root"),
    ("\\\\nas\\cache\\sim\\0001.vdb", LINUX, MAPPED, "/mnt/cache/sim/0001.vdb", "cache"),
    # a share as Blender on Linux reads it from a Windows file: slashes after the first two
    ("\\\\aurora/farm/shots/a.blend", LINUX, MAPPED, "/srv/farm/shots/a.blend", "root"),
    # \\?\ long paths are the paths they spell
    ("\\\\?\\F:\\farm\\tex\\wood.png", LINUX, MAPPED, "/srv/farm/tex/wood.png", "root"),
    ("\\\\?\\UNC\\aurora\\farm\\x.png", LINUX, MAPPED, "/srv/farm/x.png", "root"),
    # a drive that is a location by itself (T:\)
    ("T:\\wood\\oak.png", LINUX, MAPPED, "/mnt/tex/wood/oak.png", "textures"),
    ("t:/wood/oak.png", MACOS, MAPPED, "/Volumes/Textures/wood/oak.png", "textures"),
    # two-way: Linux and macOS paths read on Windows, and each other
    ("/mnt/farm/tex/wood.png", WINDOWS, MAPPED, "F:\\farm\\tex\\wood.png", "root"),
    ("/srv/farm/tex/wood.png", WINDOWS, UNMAPPED, "/srv/farm/tex/wood.png", None),
    ("/Volumes/Textures/oak.png", WINDOWS, MAPPED, "T:\\oak.png", "textures"),
    ("/Volumes/Textures/oak.png", LINUX, MAPPED, "/mnt/tex/oak.png", "textures"),
    ("/mnt/cache/a/b.abc", WINDOWS, MAPPED, "\\\\nas\\cache\\a\\b.abc", "cache"),
    ("/mnt/farm/x.png", LINUX, MAPPED, "/srv/farm/x.png", "root"),  # another Linux mount
    # a prefix as text is not a prefix as a path
    ("/mnt/texture/oak.png", WINDOWS, MAPPED, "U:\\lib\\oak.png", "texture_library"),
    ("/mnt/tex/oak.png", WINDOWS, MAPPED, "T:\\oak.png", "textures"),
    ("/mnt/textures/oak.png", WINDOWS, UNMAPPED, "/mnt/textures/oak.png", None),
    ("F:\\farmhouse\\x.png", LINUX, UNMAPPED, "F:\\farmhouse\\x.png", None),
    # POSIX is case-sensitive
    ("/Volumes/farm/x.png", LINUX, UNMAPPED, "/Volumes/farm/x.png", None),
    # a location with no path on the system that reads it
    ("U:\\lib\\oak.png", MACOS, NO_PATH, "U:\\lib\\oak.png", "texture_library"),
    # already this system's own: left as it is
    ("/srv/farm/tex/wood.png", LINUX, LOCAL, "/srv/farm/tex/wood.png", "root"),
    ("f:/farm/tex/wood.png", WINDOWS, LOCAL, "F:\\farm\\tex\\wood.png", "root"),
    # .. resolved first, as each system would: no way out of a location by text
    ("F:\\farm\\..\\secret\\x.png", LINUX, UNMAPPED, "F:\\farm\\..\\secret\\x.png", None),
    ("/mnt/farm/../etc/passwd", WINDOWS, UNMAPPED, "/mnt/farm/../etc/passwd", None),
    ("F:\\farm\\a\\..\\b.png", LINUX, MAPPED, "/srv/farm/b.png", "root"),
    # Blender's // is relative to the .blend, never a share; its Windows backslashes
    # become this system's separators
    ("//tex/wood.png", LINUX, RELATIVE, "//tex/wood.png", None),
    ("//tex\\wood.png", LINUX, RELATIVE, "//tex/wood.png", None),
    ("//tex\\wood.png", WINDOWS, RELATIVE, "//tex\\wood.png", None),
    ("//aurora/farm/x.png", LINUX, RELATIVE, "//aurora/farm/x.png", None),
    # Windows paths that are not absolute anywhere: cannot be mapped
    ("F:tex\\wood.png", LINUX, UNMAPPED, "F:tex\\wood.png", None),
    ("\\tex\\wood.png", LINUX, UNMAPPED, "\\tex\\wood.png", None),
    ("\\\\aurora", LINUX, UNMAPPED, "\\\\aurora", None),
    # absolute under no location at all
    (
        "C:\\Users\\ann\\Desktop\\wood.png",
        LINUX,
        UNMAPPED,
        "C:\\Users\\ann\\Desktop\\wood.png",
        None,
    ),
    ("/home/ann/wood.png", MACOS, UNMAPPED, "/home/ann/wood.png", None),
]


@pytest.mark.parametrize(("written", "system", "kind", "path", "location"), CASES)
def test_a_path_written_on_one_system_means_the_same_file_on_another(
    written: str, system: paths.Resolved, kind: str, path: str, location: str | None
) -> None:
    mapped = system.map(written, blender=True)
    assert (mapped.kind, mapped.path, mapped.location) == (kind, path, location)
    assert mapped.changed == (path != written and kind in (MAPPED, RELATIVE))


def test_a_farm_with_no_map_still_knows_its_root() -> None:
    only_root = PathMap().with_own_root("linux", "/srv/farm").resolve("linux")
    assert only_root.map("/srv/farm/a.png").kind == LOCAL
    assert only_root.map("F:\\farm\\a.png").kind == UNMAPPED  # nobody said where F: is
    assert only_root.location_path("root") == "/srv/farm"
    assert only_root.location_path("textures") is None


def test_the_longest_location_wins() -> None:
    nested = (
        PathMap.from_json(
            {
                "locations": {
                    "root": {"windows": "F:\\farm"},
                    "shots": {"windows": "F:\\farm\\shots", "linux": "/mnt/shots"},
                }
            }
        )
        .with_own_root("linux", "/srv/farm")
        .resolve("linux")
    )
    assert nested.map("F:\\farm\\shots\\a.blend").path == "/mnt/shots/a.blend"
    assert nested.map("F:\\farm\\other\\a.blend").path == "/srv/farm/other/a.blend"


def test_the_first_of_several_paths_is_where_paths_map_to() -> None:
    assert WINDOWS.map("/Volumes/Farm/x.png").path == "F:\\farm\\x.png"
    # this machine's own root comes first, whatever the map lists for its system
    other = FARM.with_own_root("windows", "\\\\aurora\\farm").resolve("windows")
    assert other.map("F:\\farm\\x.png").path == "\\\\aurora\\farm\\x.png"
    assert other.map("F:\\farm\\x.png").kind == MAPPED


@pytest.mark.parametrize(
    ("system", "given", "message"),
    [
        ("windows", "farm", "not an absolute Windows path"),
        ("windows", "F:farm", "not an absolute Windows path"),
        ("windows", "\\farm", "not an absolute Windows path"),
        ("windows", "/mnt/farm", "not an absolute Windows path"),
        ("windows", "\\\\server", "not an absolute Windows path"),
        ("linux", "F:\\farm", "not an absolute linux path"),
        ("linux", "mnt/farm", "not an absolute linux path"),
        ("macos", "//Volumes/Farm", "not an absolute macos path"),
        ("linux", "/mnt/\x00farm", "not an absolute linux path"),
        ("beos", "/boot", "unknown system"),
    ],
)
def test_location_paths_must_be_absolute_on_their_system(
    system: str, given: str, message: str
) -> None:
    with pytest.raises(PathMapError, match=message):
        paths.check_location_path(system, given)


def test_location_paths_are_kept_normalised() -> None:
    assert paths.check_location_path("windows", "//nas/cache/") == "\\\\nas\\cache"
    assert paths.check_location_path("windows", "t:/") == "t:\\"
    assert paths.check_location_path("windows", "F:/farm/") == "F:\\farm"
    assert paths.check_location_path("linux", "/mnt/tex//a/") == "/mnt/tex/a"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"locations": {"Textures": {"linux": "/t"}}}, "lowercase letters"),
        ({"locations": {"tex": {}}}, "names no path"),
        ({"locations": {"tex": {"amiga": "/t"}}}, "unknown system 'amiga'"),
        ({"locations": {"tex": {"linux": 7}}}, "must be text"),
        ({"locations": {"a": {"windows": "T:\\"}, "b": {"windows": "t:/"}}}, "both 'a' and 'b'"),
        ({"locations": {"a": {"linux": "/x"}, "b": {"macos": "/x/"}}}, "both 'a' and 'b'"),
        ({"version": 2, "locations": {}}, "version 2"),
        ([], "expected"),
    ],
)
def test_a_bad_map_is_refused_with_one_line(data: object, message: str) -> None:
    with pytest.raises(PathMapError, match=message) as raised:
        PathMap.from_json(data)
    assert "\n" not in str(raised.value)


def test_the_root_of_this_machine_may_not_be_another_locations_path() -> None:
    with pytest.raises(PathMapError, match="both"):
        FARM.with_own_root("linux", "/mnt/tex")


def test_the_map_survives_its_file_and_the_wire(tmp_path: Path) -> None:
    assert paths.load(tmp_path) == PathMap()
    written = paths.save(tmp_path, FARM)
    assert written == str(tmp_path / ".buildcat" / "paths.json")
    assert paths.load(tmp_path) == FARM
    assert json.loads(Path(written).read_text())["locations"]["textures"] == {
        "linux": "/mnt/tex",
        "windows": "T:\\",
        "macos": "/Volumes/Textures",
    }
    assert paths.Resolved.from_json(json.loads(json.dumps(LINUX.to_json()))) == LINUX
    Path(written).write_text("{not json")
    with pytest.raises(PathMapError, match="not valid JSON"):
        paths.load(tmp_path)


def test_the_pure_rules_load_without_the_package() -> None:
    """The scripts inside Blender load paths.py by its path, with no buildcat to import."""
    script = (
        "import importlib.util, sys\n"
        "sys.modules['buildcat'] = None\n"  # any import of the package fails
        f"spec = importlib.util.spec_from_file_location('buildcat_paths', {paths.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['buildcat_paths'] = module\n"
        "spec.loader.exec_module(module)\n"
        "rules = module.Resolved.from_json(" + repr(LINUX.to_json()) + ")\n"
        "print(rules.map('F:\\\\farm\\\\a.png', blender=True).path)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "/srv/farm/a.png"


@pytest.mark.parametrize(
    ("platform", "system"),
    [
        ("linux", "linux"),
        ("win32", "windows"),
        ("cygwin", "windows"),
        ("darwin", "macos"),
        ("freebsd14", "linux"),
    ],
)
def test_this_system(platform: str, system: str) -> None:
    assert paths.this_system(platform) == system


_PART = st.text(alphabet="abcXYZ09_-. ", min_size=1, max_size=8).filter(
    lambda part: part.strip(" .") == part and part not in (".", "..")
)


@given(st.lists(_PART, min_size=1, max_size=5), st.sampled_from(["\\", "/"]))
def test_every_path_under_a_location_goes_there_and_back(parts: list[str], slash: str) -> None:
    """Windows -> Linux -> Windows gives the same path back, whatever the slashes."""
    written = "F:" + slash + slash.join(["farm", *parts])
    on_linux = LINUX.map(written)
    assert on_linux.kind == MAPPED
    assert on_linux.path == "/srv/farm/" + "/".join(parts)
    back = (
        FARM.with_own_root("windows", "F:\\farm")
        .resolve("windows")
        .map(on_linux.path.replace("/srv/farm", "/mnt/farm", 1))
    )
    assert back.path == "F:\\farm\\" + "\\".join(parts)


# ---- farm paths -------------------------------------------------------------------------------


def farm_paths(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BUILDCAT_ROOT": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "buildcat", "paths", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_farm_paths_edits_the_map_in_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    added = farm_paths(
        root,
        "add",
        "textures",
        "--linux",
        "/mnt/textures",
        "--windows",
        "T:\\",
        "--macos",
        "/Volumes/Textures",
    )
    assert added.returncode == 0, added.stderr
    root_added = farm_paths(
        root, "add", "root", "--windows", "F:\\farm", "--windows", "//aurora/farm"
    )
    assert root_added.returncode == 0, root_added.stderr
    saved = json.loads((root / ".buildcat" / "paths.json").read_text())
    assert saved["locations"] == {
        "root": {"windows": ["F:\\farm", "\\\\aurora\\farm"]},
        "textures": {"linux": "/mnt/textures", "windows": "T:\\", "macos": "/Volumes/Textures"},
    }
    listed = farm_paths(root, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "LINUX", "WINDOWS", "MACOS"]
    assert lines[1].split()[0] == "root" and f"{root} (this machine)" in lines[1]
    assert "\\\\aurora\\farm" in lines[1]
    assert lines[2].split() == ["textures", "/mnt/textures", "T:\\", "/Volumes/Textures"]
    as_json = json.loads(farm_paths(root, "list", "--json").stdout)
    assert as_json["locations"]["textures"]["windows"] == "T:\\"

    checked = farm_paths(root, "check", "F:\\farm\\tex\\wood.png", "--json")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout) == {
        "path": "F:\\farm\\tex\\wood.png",
        "location": "root",
        "systems": {
            "linux": f"{root}/tex/wood.png",
            "windows": "F:\\farm\\tex\\wood.png",
            "macos": None,
        },
    }
    text = farm_paths(root, "check", "t:/oak/bark.png")
    assert text.returncode == 0, text.stderr
    assert "under textures" in text.stdout
    assert "linux    /mnt/textures/oak/bark.png" in text.stdout
    assert "windows  T:\\oak\\bark.png" in text.stdout
    assert "macos    /Volumes/Textures/oak/bark.png" in text.stdout
    nowhere = farm_paths(root, "check", "C:\\Users\\ann\\wood.png")
    assert nowhere.returncode == 1
    assert nowhere.stderr == (
        "farm: error: C:\\Users\\ann\\wood.png is under no location of the path map: "
        "no other system can find it (farm paths add NAME --windows ...)\n"
    )
    relative = farm_paths(root, "check", "tex/wood.png")
    assert relative.returncode == 0 and "relative to the farm root" in relative.stdout

    twice = farm_paths(root, "add", "textures", "--linux", "/mnt/t2")
    assert twice.returncode == 2
    assert twice.stderr.startswith("farm: error: there is already a location 'textures'")
    replaced = farm_paths(root, "add", "textures", "--linux", "/mnt/t2", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    removed = farm_paths(root, "remove", "textures")
    assert removed.returncode == 0, removed.stderr
    assert list(json.loads((root / ".buildcat" / "paths.json").read_text())["locations"]) == [
        "root"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "tex", "--windows", "T:"), "not an absolute Windows path"),
        (("add", "tex", "--linux", "T:\\"), "not an absolute linux path"),
        (("add", "tex"), "give at least one of --linux, --windows, --macos"),
        (("add", "Tex", "--linux", "/t"), "lowercase letters"),
        (("add", "tex", "--linux", "/srv"), "is a path of both"),
        (("remove", "nothing"), "no location named 'nothing'"),
        (("remove", "root"), "the root is always a location"),
    ],
)
def test_farm_paths_refuses_bad_edits_with_one_line_and_changes_nothing(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert farm_paths(root, "add", "shared", "--linux", "/srv").returncode == 0
    before = (root / ".buildcat" / "paths.json").read_text()
    refused = farm_paths(root, *args)
    assert refused.returncode != 0
    assert refused.stderr.startswith("farm: error: ") and refused.stderr.count("\n") == 1
    assert message in refused.stderr
    assert (root / ".buildcat" / "paths.json").read_text() == before


# ---- command templates: ${PATH:NAME} ----------------------------------------------------------


def test_a_template_names_a_location_and_each_worker_fills_in_its_own_path() -> None:
    pieces = command.parse_template('cp "${PATH:textures}/a.png" ${PATH:root}/b $ROOT')
    assert ("var", "PATH:textures") in pieces and ("var", "PATH:root") in pieces
    text = command.shell_command(pieces, {})
    assert text == (
        'cp "${BUILDCAT_PATH_TEXTURES}/a.png" "${BUILDCAT_PATH_ROOT}"/b "${BUILDCAT_ROOT}"'
    )
    for bad, why in [
        ("echo ${PATH:Textures}", "lowercase letters"),
        ("echo ${PATH:}", "lowercase letters"),
        ("echo $PATH", "unknown variable $PATH"),
    ]:
        with pytest.raises(FarmError, match=re.escape(why)):
            command.parse_template(bad)
    with pytest.raises(FarmError, match="outputs are relative to the root"):
        command.validate_payload({"template": "true", "outputs": ["${PATH:textures}/a.png"]})


def test_a_command_reads_a_location_at_this_workers_path_of_it(farm: Farm, tmp_path: Path) -> None:
    textures = tmp_path / "texture share with spaces"
    textures.mkdir()
    (textures / "wood.txt").write_text("oak\n")
    assert (
        farm.cli(
            "paths",
            "add",
            "textures",
            "--linux",
            str(textures),
            "--windows",
            "T:\\",
            "--macos",
            "/Volumes/Textures",
        ).returncode
        == 0
    )
    farm.start_worker("--no-blender")
    client = farm.client()
    shell = client.command(
        "cat ${PATH:textures}/wood.txt > $OUTDIR/copy.txt", outdir="out", max_attempts=1
    )
    assert shell.wait(60)["state"] == "done"
    assert (farm.root / "out" / "copy.txt").read_text() == "oak\n"
    argv = client.command(["printf", "<%s>", "${PATH:textures}", "${PATH:root}"], max_attempts=1)
    assert argv.wait(60)["state"] == "done"
    assert f"<{textures}><{farm.root}>" in client.log(f"{argv.id}.0")
    # A location the map lacks: the job fails at once, whichever worker takes it.
    unknown = client.command("ls ${PATH:plates}", max_attempts=3)
    with pytest.raises(buildcat.JobFailed, match=r"the path map has no location 'plates'"):
        unknown.wait(60)
    assert unknown.tasks()[0]["attempts"] == 1
    # One with no path on this worker's system: said so, with the command to fix it.
    assert farm.cli("paths", "add", "plates", "--windows", "P:\\").returncode == 0
    elsewhere = client.command("ls ${PATH:plates}", max_attempts=1)
    with pytest.raises(buildcat.JobFailed, match=r"location 'plates' has no linux path"):
        elsewhere.wait(60)


def test_the_worker_hands_blender_the_map_resolved_for_itself(tmp_path: Path) -> None:
    from buildcat.jobs import blender as blender_jobs

    root = tmp_path / "root"
    root.mkdir()
    # No map: nothing to hand over; and a submitter's own "path_map" never reaches Blender.
    given = {"samples": 4, "path_map": {"system": "linux", "rules": [["root", "/", "/etc"]]}}
    assert blender_jobs.with_path_map(given, root) == {"samples": 4}
    paths.save(root, PathMap.from_json({"locations": {"root": {"windows": "F:\\farm"}}}))
    settings = blender_jobs.with_path_map(given, root)
    rules = paths.Resolved.from_json(settings["path_map"])
    assert rules.system == "linux"
    assert rules.map("F:\\farm\\tex\\a.png").path == f"{root}/tex/a.png"
    assert rules.map("/etc/passwd").kind == UNMAPPED
    (root / ".buildcat" / "paths.json").write_text("{")
    with pytest.raises(blender_jobs.RenderFailed, match="not valid JSON"):
        blender_jobs.with_path_map({}, root)
