"""Blender on a worker: finding it, its version, the version a .blend was saved with.

The scripts beside this file (override.py, bpy_render.py, compose.py, demo_scene.py,
gpu_probe.py) run inside Blender, never in a farm process.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from buildcat.errors import FarmError

SCRIPTS = Path(__file__).parent
BPY = "bpy"

_OLD_HEADER = re.compile(rb"BLENDER[_-][vV](\d)(\d\d)")
_NEW_HEADER = re.compile(rb"BLENDER\d\d-\d\d[vV](\d\d)(\d\d)")
_VERSION_LINE = re.compile(r"Blender (\d+\.\d+(?:\.\d+)?)")
_FOLDER_VERSION = re.compile(r"Blender[ _-]?(\d+)\.(\d+)")


@dataclass(slots=True, frozen=True)
class BlenderInstall:
    """A Blender a worker can run: the binary, or the ``bpy`` module of a Python."""

    kind: str  # "binary" or "bpy"
    path: str  # the blender executable, or the python that imports bpy
    version: str

    def describe(self) -> str:
        what = "bpy module in" if self.kind == BPY else "binary"
        return f"Blender {self.version} ({what} {self.path})"

    def encode(self) -> str:
        return f"{self.kind}:{self.version}:{self.path}"

    @classmethod
    def decode(cls, text: str) -> BlenderInstall:
        kind, version, path = text.split(":", 2)
        return cls(kind=kind, path=path, version=version)


def _binary_version(path: str) -> str:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
    except OSError as exc:
        raise FarmError(f"cannot run Blender at {path}: {exc.strerror}") from None
    match = _VERSION_LINE.search(out)
    if match is None:
        raise FarmError(f"{path} did not answer --version like Blender")
    return match[1]


def _bpy_version(python: str) -> str | None:
    try:
        done = subprocess.run(
            [python, "-c", "import bpy; print(bpy.app.version_string)"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except OSError:
        return None
    if done.returncode != 0:
        return None
    match = re.search(r"(\d+\.\d+(?:\.\d+)?)", done.stdout)
    return match[1] if match else None


def _newest_first(folders: list[Path]) -> list[Path]:
    """``Blender 4.10`` before ``Blender 4.5`` before ``Blender 3.6``; unversioned last."""

    def version(folder: Path) -> tuple[int, int]:
        match = _FOLDER_VERSION.search(folder.name)
        return (int(match[1]), int(match[2])) if match else (-1, -1)

    return sorted(folders, key=lambda folder: (version(folder), folder.name), reverse=True)


def _subfolders(folder: Path, pattern: str) -> list[Path]:
    try:
        return [path for path in folder.glob(pattern) if path.is_dir()]
    except OSError:
        return []


def install_locations(
    system: str | None = None,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    root: Path = Path("/"),
) -> list[Path]:
    """Where Blender's own installers put it on ``system`` (default: this one), in the
    order they are tried; newest version first where several sit side by side.

    - Windows: ``%ProgramFiles%\\Blender Foundation\\Blender X.Y\\blender.exe``, then
      Steam's ``steamapps\\common\\Blender``.
    - macOS: ``Blender.app`` (then ``Blender X.Y.app``) in /Applications and
      ~/Applications, then Steam's.
    - Linux: the snap, the flatpak (system, then the user's), then Steam's.
    """
    system = sys.platform if system is None else system
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    found: list[Path] = []
    if system == "win32":
        for variable in ("ProgramFiles", "ProgramW6432"):
            if env.get(variable):
                foundation = Path(env[variable]) / "Blender Foundation"
                found += [
                    folder / "blender.exe"
                    for folder in _newest_first(_subfolders(foundation, "Blender*"))
                ]
        for variable in ("ProgramFiles(x86)", "ProgramFiles"):
            if env.get(variable):
                steam = Path(env[variable]) / "Steam" / "steamapps" / "common" / "Blender"
                found.append(steam / "blender.exe")
    elif system == "darwin":
        for applications in (root / "Applications", home / "Applications"):
            found.append(applications / "Blender.app" / "Contents" / "MacOS" / "Blender")
            found += [
                app / "Contents" / "MacOS" / "Blender"
                for app in _newest_first(_subfolders(applications, "Blender?*.app"))
            ]
        steam = home / "Library" / "Application Support" / "Steam" / "steamapps" / "common"
        found.append(steam / "Blender" / "Blender.app" / "Contents" / "MacOS" / "Blender")
    else:
        found += [
            root / "snap" / "bin" / "blender",
            root / "var" / "lib" / "flatpak" / "exports" / "bin" / "org.blender.Blender",
            home / ".local" / "share" / "flatpak" / "exports" / "bin" / "org.blender.Blender",
            home / ".local" / "share" / "Steam" / "steamapps" / "common" / "Blender" / "blender",
            home / ".steam" / "steam" / "steamapps" / "common" / "Blender" / "blender",
        ]
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def installed_blender(locations: list[Path]) -> Path | None:
    """The first of ``locations`` that is a program this user may run."""
    for path in locations:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def find_blender(explicit: str | None = None, *, allow_bpy: bool = True) -> BlenderInstall | None:
    """``--blender PATH`` (or ``bpy``), else ``$BLENDER``, else ``blender`` on PATH, else
    where this system's installers put it (:func:`install_locations`), else bpy."""
    for choice in (explicit, os.environ.get("BLENDER")):
        if not choice:
            continue
        if choice == BPY:
            version = _bpy_version(sys.executable)
            if version is None:
                raise FarmError(
                    f"--blender bpy: the bpy module does not import in {sys.executable}"
                )
            return BlenderInstall(BPY, sys.executable, version)
        path = shutil.which(choice)
        if path is None:
            raise FarmError(f"Blender {choice!r} not found")
        return BlenderInstall("binary", path, _binary_version(path))
    path = shutil.which("blender")
    if path is None:
        installed = installed_blender(install_locations())
        path = str(installed) if installed is not None else None
    if path is not None:
        return BlenderInstall("binary", path, _binary_version(path))
    if allow_bpy:
        version = _bpy_version(sys.executable)
        if version is not None:
            return BlenderInstall(BPY, sys.executable, version)
    return None


def blend_file_version(path: str | os.PathLike[str]) -> str | None:
    """The Blender version that saved a .blend ("4.5"), also inside zstd or gzip; None if
    the file does not look like a .blend."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(b"\x28\xb5\x2f\xfd"):  # zstd (Blender 3.0+ compression)
        import zstandard

        with open(path, "rb") as handle:
            reader = zstandard.ZstdDecompressor().stream_reader(handle)
            head = reader.read(64)
    elif head.startswith(b"\x1f\x8b"):  # gzip (Blender before 3.0)
        with gzip.open(path, "rb") as handle:
            head = handle.read(64)
    match = _NEW_HEADER.match(head)
    if match:
        return f"{int(match[1])}.{int(match[2])}"
    match = _OLD_HEADER.match(head)
    if match:
        return f"{int(match[1])}.{int(match[2])}"
    return None


def script_command(
    blender: BlenderInstall, script: str, *args: str, blend: Path | None = None
) -> list[str]:
    """The command that runs one of :data:`SCRIPTS` in ``blender``: the bpy module's
    Python runs it with ``blend`` and ``args``; the binary opens ``blend`` (else starts with
    factory settings), runs it and passes ``args`` after ``--``."""
    path = str(SCRIPTS / script)
    if blender.kind == BPY:
        return [blender.path, path, *([str(blend)] if blend else []), *args]
    opening = [str(blend)] if blend else ["--factory-startup"]
    after = ["--", *args] if args else []
    return [blender.path, "-b", *opening, "--python-exit-code", "1", "--python", path, *after]


def scene_info(blender: BlenderInstall, blend: Path) -> dict[str, object]:
    """Ask Blender about a .blend: its frame range, scenes, resolution."""
    command = script_command(blender, "scene_info.py", blend=blend)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    except OSError as exc:
        raise FarmError(f"cannot run {blender.describe()}: {exc.strerror}") from None
    for line in done.stdout.splitlines():
        if line.startswith("BUILDCAT_SCENE_INFO "):
            return dict(json.loads(line.split(" ", 1)[1]))
    raise FarmError(f"{blender.describe()} could not read {blend} (exit code {done.returncode})")


def render_devices(blender: BlenderInstall) -> dict[str, object]:
    """The devices Cycles can render on with this Blender (gpu_probe.py's JSON)."""
    command = script_command(blender, "gpu_probe.py")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FarmError(f"cannot ask {blender.describe()} for its devices: {exc}") from None
    for line in done.stdout.splitlines():
        if line.startswith("BUILDCAT-DEVICES "):
            return dict(json.loads(line.split(" ", 1)[1]))
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
    raise FarmError(f"{blender.describe()} did not list its devices: {tail[0]}")


def build_demo_scene(
    blender: BlenderInstall, output: Path, frames: int = 24, resolution: int = 64, samples: int = 16
) -> None:
    """Have Blender build the demo's animated scene and save it at ``output``."""
    settings = json.dumps(
        {
            "output": str(output),
            "frames": frames,
            "resolution": [resolution, resolution],
            "samples": samples,
        }
    )
    command = script_command(blender, "demo_scene.py", settings)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 or not output.is_file():
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        raise FarmError(f"{blender.describe()} could not build the demo scene: {' | '.join(tail)}")
