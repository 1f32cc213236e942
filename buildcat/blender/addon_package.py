"""The Blender add-on as a file to install (``farm addon zip``) and installed into a
Blender (``farm addon install``): the same zip is a legacy add-on for Blender 3.x and an
extension for 4.2+ (``blender_manifest.toml`` beside ``__init__.py``)."""

from __future__ import annotations

import json
import subprocess
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from buildcat.blender import BPY, SCRIPTS, BlenderInstall
from buildcat.errors import FarmError

#: The add-on's module name in Blender (its folder in the zip, the extension's id).
MODULE = "buildcat_farm"
#: What the zip holds besides the Python files.
EXTRA_FILES = ("blender_manifest.toml",)


def addon_files() -> dict[str, bytes]:
    """The add-on's files by name (``buildcat/addon/`` in the package): read as files,
    never imported here (they import bpy)."""
    folder = resources.files("buildcat").joinpath("addon")
    files = {}
    for entry in folder.iterdir():
        if entry.is_file() and (entry.name.endswith(".py") or entry.name in EXTRA_FILES):
            files[entry.name] = entry.read_bytes()
    if "__init__.py" not in files or "blender_manifest.toml" not in files:
        raise FarmError(f"the add-on's files are missing from this buildcat ({folder})")
    return files


def default_zip_name() -> str:
    """``buildcat_farm-VERSION.zip``, the version the add-on's manifest gives (the
    package's: a test holds them equal)."""
    manifest = tomllib.loads(addon_files()["blender_manifest.toml"].decode())
    return f"{MODULE}-{manifest['version']}.zip"


def write_zip(path: str | Path) -> Path:
    """The add-on as one zip: ``buildcat_farm/__init__.py``, ``.../blender_manifest.toml``
    and the other modules, installable by hand from Blender's preferences."""
    target = Path(path)
    files = addon_files()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(files):
                archive.writestr(f"{MODULE}/{name}", files[name])
        temporary.replace(target)
    except OSError as exc:
        raise FarmError(f"cannot write the add-on zip {target}: {exc.strerror}") from None
    return target


@dataclass(frozen=True, slots=True)
class Installed:
    """Where ``farm addon install`` put the add-on, as that Blender said."""

    module: str
    folder: str
    blender: str
    config: str


def install(blender: BlenderInstall, timeout: float = 300.0) -> Installed:
    """Install and enable the add-on for ``blender``'s user (its preferences are saved).
    The Blender runs in the background with this user's own settings (never factory
    settings, which would replace the saved preferences)."""
    script = str(SCRIPTS / "addon_install.py")
    with tempfile.TemporaryDirectory(prefix="buildcat-addon-") as folder:
        archive = write_zip(Path(folder) / default_zip_name())
        if blender.kind == BPY:
            command = [blender.path, script, str(archive)]
        else:
            command = [blender.path, "-b", "--python-exit-code", "1", "--python", script,
                       "--", str(archive)]  # fmt: skip
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise FarmError(f"{blender.describe()} did not finish installing the add-on") from None
        except OSError as exc:
            raise FarmError(f"cannot run {blender.describe()}: {exc.strerror}") from None
    for line in done.stdout.splitlines():
        if line.startswith("buildcat-addon: "):
            report = json.loads(line.partition(": ")[2])
            if report.get("enabled"):
                return Installed(
                    module=str(report["module"]),
                    folder=str(report["folder"]),
                    blender=str(report["blender"]),
                    config=str(report["config"]),
                )
    tail = [t for t in (done.stderr + done.stdout).strip().splitlines() if t.strip()][-3:]
    raise FarmError(
        f"{blender.describe()} could not install the add-on: "
        + (" | ".join(tail) or f"exit status {done.returncode}")
    )
