"""Running as the single executable (``packaging/build.py``, PyInstaller): what differs
from a pip install.

The executable is its own Python. Where the farm starts a Python of its own
(``sys.executable -m buildcat.worker.child``, ``-m buildcat.jobtypes``, ``-c ...``, a
script task's ``script.py``), ``sys.executable`` is the executable, so it answers those
command lines as ``python`` would: :func:`python_invocation` recognises them and
:func:`run_as_python` runs them in the embedded interpreter (``packaging/farm_main.py``,
the entry point, asks first); everything else is the ``farm`` command.

The one-file executable unpacks itself into a temporary folder at each start (about
0.6 s); the processes it starts as ``sys.executable`` find that folder through the
bootloader's ``_PYI_*`` variables and reuse it, so a worker's warm children start
without unpacking again. PyInstaller 6 leaves ``LD_LIBRARY_PATH`` alone on Linux, so
Blender, ffmpeg and command tasks get this process's environment as it came.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

import buildcat

#: Set by PyInstaller's bootloader in the executable; absent in a pip install.
FROZEN = bool(getattr(sys, "frozen", False))
#: Written into the executable by ``packaging/build.py``: which build this is.
BUILD_FILE = "buildcat-build.json"
#: Interpreter options a frozen ``python`` takes and ignores (they change nothing here).
_IGNORED_FLAGS = {"-I", "-E", "-s", "-S", "-u", "-B", "-O", "-OO", "-q", "-b", "-bb"}
#: Interpreter options that take a value, also ignored (``-X dev``, ``-W error``).
_IGNORED_WITH_VALUE = {"-X", "-W"}


def build_info() -> dict[str, str] | None:
    """What ``packaging/build.py`` recorded in this executable; None outside one."""
    if not FROZEN:
        return None
    path = Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent)) / BUILD_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(key): str(value) for key, value in info.items()}


#: The compiled parts of our dependencies that the farm's speed rests on: a label, and
#: the module, the name in it that is in use, and the compiled module it must come from
#: (not its pure-Python fallback, which each of them would load silently).
SPEEDUPS: dict[str, tuple[str, str, str]] = {
    "aiohttp's C HTTP parser": ("aiohttp.http_parser", "HttpRequestParser", "aiohttp._http_parser"),
    "msgpack's C extension": ("msgpack", "Packer", "msgpack._cmsgpack"),
    "zeroconf's compiled DNS": ("zeroconf._dns", "DNSRecord", "zeroconf._dns"),
    "zeroconf's compiled parser": (
        "zeroconf._protocol.incoming", "DNSIncoming", "zeroconf._protocol.incoming",
    ),
    "yarl's C quoting": ("yarl._quoting", "_Quoter", "yarl._quoting_c"),
    "multidict's C extension": ("multidict", "MultiDict", "multidict._multidict"),
}  # fmt: skip


def speedups() -> dict[str, bool]:
    """Each of :data:`SPEEDUPS`: whether the compiled code is the one in use here."""
    found = {}
    for label, (module_name, name, compiled) in SPEEDUPS.items():
        try:
            used = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            found[label] = False
            continue
        home = sys.modules.get(getattr(used, "__module__", ""))
        file = str(getattr(home, "__file__", "") or "")
        found[label] = used.__module__ == compiled and not file.endswith((".py", ".pyc"))
    return found


def version_text() -> str:
    """``farm --version``: the version, which build, and the compiled parts in use."""
    lines = [f"farm {buildcat.__version__}"]
    info = build_info()
    python = ".".join(map(str, sys.version_info[:3]))
    if info is None:
        lines.append(f"installed with pip: Python {python} at {sys.executable}")
    else:
        built = ", ".join(
            [info.get("layout", "?"), f"commit {info.get('commit', '?')}",
             f"built {info.get('built', '?')}", info.get("platform", "?")]
        )  # fmt: skip
        lines.append(f"single executable ({built}); embedded Python {python}")
    flags = speedups()
    lines.append(
        "compiled speed-ups: "
        + ", ".join(f"{label} {'yes' if used else 'NO'}" for label, used in flags.items())
    )
    return "\n".join(lines)


def python_invocation(args: list[str]) -> bool:
    """Whether ``args`` (``sys.argv[1:]``) is a ``python`` command line, not ``farm``'s."""
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in ("-m", "-c"):
            return True
        if arg in _IGNORED_FLAGS:
            index += 1
        elif arg in _IGNORED_WITH_VALUE:
            index += 2
        else:
            # A script path (no farm command ends in .py); only after flags or first.
            return arg.endswith(".py") and os.path.isfile(arg)
    return False


def run_as_python(args: list[str]) -> None:
    """Run ``args`` as ``python ARGS`` would, in this interpreter (``-m``, ``-c``, a file)."""
    index = 0
    while args[index] not in ("-m", "-c") and not args[index].endswith(".py"):
        index += 2 if args[index] in _IGNORED_WITH_VALUE else 1
    arg = args[index]
    if arg == "-m":
        module, rest = args[index + 1], args[index + 2 :]
        sys.argv = [module, *rest]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    elif arg == "-c":
        code, rest = args[index + 1], args[index + 2 :]
        sys.argv = ["-c", *rest]
        namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        exec(compile(code, "<string>", "exec"), namespace)
    else:
        sys.argv = args[index:]
        sys.path.insert(0, os.path.dirname(os.path.abspath(arg)))
        runpy.run_path(arg, run_name="__main__")


__all__ = [
    "FROZEN", "build_info", "python_invocation", "run_as_python", "speedups", "version_text",
]  # fmt: skip
