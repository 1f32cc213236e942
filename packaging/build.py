"""Build ``farm`` as one self-contained executable (PyInstaller), from this checkout.

    python packaging/build.py                  # dist/farm: one file
    python packaging/build.py --onedir         # dist/farm/ (dist/farm/farm in it), and
                                               # dist/farm-VERSION-linux-x86_64.tar.gz
    python packaging/build.py --dist DIR --work DIR

Run it with the Python the executable embeds (Python 3.11 here: ``pip install -e
'.[binary]'`` first). Nothing is downloaded: PyInstaller bundles this interpreter, the
standard library (whole, so a job function may import any of it), buildcat with its
data files (the dashboard, the scripts Blender runs, the add-on) and its dependencies
with their compiled parts. Left out: ``bpy`` (800 MB; render nodes use a Blender on
PATH), imageio-ffmpeg and its own ffmpeg (165 MB; preview videos use ffmpeg on PATH), and the
test and benchmark tools. It prints where the executable is, its size and the time the
build took.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
sys.path.insert(0, str(CHECKOUT))

import buildcat  # noqa: E402  (this checkout's, whatever is installed)
from buildcat.bundle import BUILD_FILE  # noqa: E402

#: Our dependencies, bundled whole (their submodules, data and compiled parts).
DEPENDENCIES = [
    "aiohttp", "aiohappyeyeballs", "aiosignal", "attr", "click", "frozenlist", "ifaddr",
    "msgpack", "multidict", "propcache", "yarl", "zeroconf", "zstandard", "PIL",
    "blender_asset_tracer",
]  # fmt: skip
#: Never bundled: too big for a render node's executable, or tools of this repository.
EXCLUDED = [
    "bpy", "numpy", "OpenEXR", "pytest", "hypothesis", "playwright", "mypy", "ruff",
    "rq", "redis", "pexpect", "trustme", "prometheus_client", "PyInstaller", "imageio_ffmpeg",
    "tkinter", "_tkinter", "turtle", "turtledemo", "idlelib", "test", "lib2to3", "ensurepip",
    "PIL.ImageTk", "PIL._tkinter_finder", "PIL.ImageQt",
    # Found by the analysis through optional imports, used by nothing the farm runs:
    # 15 MB of cryptography, zstandard's second (CFFI) backend of 12 MB, HTTP clients.
    "cryptography", "cffi", "_cffi_backend", "zstandard._cffi", "zstandard.backend_cffi",
    "certifi", "charset_normalizer", "requests", "urllib3",
]  # fmt: skip
#: Standard-library modules that cannot be bundled or mean nothing on this system.
STDLIB_SKIPPED = {
    "antigravity", "this", "msilib", "winreg", "winsound", "nt", "_winapi", "_overlapped",
    "_msi", "_wmi", "msvcrt", "_scproxy", "_osx_support", "_aix_support", "_android_support",
    "_ios_support", "_pyrepl", "__phello__", "_tkinter", "tkinter", "turtle", "turtledemo",
    "idlelib", "test", "lib2to3", "ensurepip", "pydoc_data",
}  # fmt: skip


def stdlib_arguments() -> list[str]:
    """PyInstaller arguments that bring in the whole standard library of this Python."""
    arguments = []
    for name in sorted(sys.stdlib_module_names):
        if name in STDLIB_SKIPPED or name.startswith("_"):
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        if spec.submodule_search_locations is not None:
            arguments += ["--collect-submodules", name]
        else:
            arguments += ["--hidden-import", name]
    return arguments


def data_arguments() -> list[str]:
    """The package's files that are read as files: Blender's scripts, the dashboard, the add-on."""
    package = CHECKOUT / "buildcat"
    arguments = []
    for folder in ("blender", "addon", "server/dashboard"):
        for path in sorted((package / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                target = path.parent.relative_to(CHECKOUT)
                arguments += ["--add-data", f"{path}{os.pathsep}{target.as_posix()}"]
    return arguments


def commit() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(CHECKOUT), "describe", "--always", "--dirty", "--abbrev=10"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def build(dist: Path, work: Path, onedir: bool) -> Path:
    """Build the executable into ``dist``; returns its path."""
    import PyInstaller.__main__

    info = {
        "version": buildcat.__version__,
        "layout": "one folder" if onedir else "one file",
        "commit": commit(),
        "built": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": f"{platform.system().lower()}-{platform.machine()}",
        "python": platform.python_version(),
    }
    work.mkdir(parents=True, exist_ok=True)
    info_file = work / BUILD_FILE
    info_file.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    arguments = [
        str(HERE / "farm_main.py"),
        "--name", "farm",
        "--onedir" if onedir else "--onefile",
        "--noconfirm", "--clean", "--log-level", "WARN",
        "--distpath", str(dist), "--workpath", str(work / "build"), "--specpath", str(work),
        "--paths", str(CHECKOUT),
        "--collect-submodules", "buildcat",
        "--add-data", f"{info_file}{os.pathsep}.",
        *data_arguments(),
        *stdlib_arguments(),
    ]  # fmt: skip
    for name in DEPENDENCIES:
        arguments += ["--collect-submodules", name, "--collect-data", name]
    for name in EXCLUDED:
        arguments += ["--exclude-module", name]
    PyInstaller.__main__.run(arguments)
    return dist / "farm" / "farm" if onedir else dist / "farm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onedir", action="store_true", help="a folder instead of one file")
    parser.add_argument("--dist", type=Path, default=CHECKOUT / "dist", help="where it goes")
    parser.add_argument("--work", type=Path, default=None, help="PyInstaller's scratch folder")
    options = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="farm-build-") as scratch:
        executable = build(options.dist.resolve(), options.work or Path(scratch), options.onedir)
    seconds = time.monotonic() - started
    if not options.onedir:
        print(f"built {executable}: {executable.stat().st_size / 2**20:.1f} MiB in {seconds:.0f} s")
        return
    size = sum(p.stat().st_size for p in executable.parent.rglob("*") if p.is_file())
    name = f"farm-{buildcat.__version__}-{platform.system().lower()}-{platform.machine()}"
    archive = shutil.make_archive(
        str(options.dist.resolve() / name), "gztar", executable.parent.parent, "farm"
    )
    print(f"built {executable}: a folder of {size / 2**20:.1f} MiB in {seconds:.0f} s; "
          f"packed as {archive} ({os.path.getsize(archive) / 2**20:.1f} MiB)")  # fmt: skip


if __name__ == "__main__":
    main()
