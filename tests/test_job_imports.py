"""A job function is imported from under the root only: a ``module:function`` reached
through a symlink that leads out of the root is refused like ``path.py:function``, and
none of the module's code runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import buildcat
from buildcat.errors import PathError
from buildcat.jobs.python import check_no_symlink_escape
from tests.conftest import Farm

OUTSIDE_MODULE = """
import pathlib
pathlib.Path(__file__).with_name("ran-" + __name__.replace(".", "-")).write_text("ran")


def run():
    return "outside"
"""


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "pkg").mkdir(parents=True)
    (outside / "evil.py").write_text(OUTSIDE_MODULE)
    (outside / "pkg" / "__init__.py").write_text(OUTSIDE_MODULE)
    (outside / "pkg" / "mod.py").write_text(OUTSIDE_MODULE)
    return outside


def test_module_jobs_through_a_symlink_out_of_the_root_are_refused(
    farm: Farm, tmp_path: Path
) -> None:
    outside = _outside(tmp_path)
    os.symlink(outside / "evil.py", farm.root / "evil.py")  # a module file
    os.symlink(outside / "pkg", farm.root / "evilpkg")  # a package folder
    (farm.root / "real.py").write_text("def run():\n    return 'inside'\n")
    os.symlink(farm.root / "real.py", farm.root / "alias.py")  # stays inside: fine
    farm.start_worker("--no-blender")
    client = farm.client()
    refused = {
        "evil:run": "module 'evil' escapes the farm root through a symlink (evil.py leads to",
        "evilpkg.mod:run": "module 'evilpkg.mod' escapes the farm root through a symlink "
        "(evilpkg/__init__.py leads to",
        "evilpkg:run": "module 'evilpkg' escapes the farm root through a symlink",
    }
    for function, message in refused.items():
        job = client.submit_tasks([{"payload": {"function": function}}], max_attempts=1)
        with pytest.raises(buildcat.JobFailed) as failed:
            job.wait(60)
        assert message in failed.value.error, (function, failed.value.error)
    # The path form: refused already at submit, by the client's own check of the file.
    with pytest.raises(PathError, match=r"path 'evil\.py' escapes the farm root through a symlink"):
        client.submit("evil.py:run")
    assert not list(outside.rglob("ran-*"))  # none of the outside code ran
    assert client.submit("alias:run").results() == ["inside"]
    assert client.submit("real:run").results() == ["inside"]


def test_the_check_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = _outside(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside / "pkg", root / "linked")
    (root / "plain.py").write_text("")
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(PathError, match=r"'linked\.mod' escapes the farm root"):
        check_no_symlink_escape("linked.mod", root)
    check_no_symlink_escape("plain", root)
    check_no_symlink_escape("json", root)  # installed: not under the root at all
    check_no_symlink_escape("no_such_module_anywhere", root)  # the import says why
