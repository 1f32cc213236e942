# mypy: ignore-errors
"""What the scripts that run inside Blender share: their settings and their one-line errors.

Blender runs each script by path, so the scripts import this module from their own folder.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable


class ScriptError(Exception):
    """A mistake in the settings: reported as one line, exit status 1."""

    #: How :func:`run` starts its line; the worker reads the reason from it.
    LINE = "buildcat: error: "


class JobFault(ScriptError):
    """The job itself is wrong (no such scene or camera in the file): every attempt on any
    worker would fail the same way, so the worker fails the whole job at once."""

    LINE = "buildcat: job error: "


def read_settings(argv: list[str]) -> dict:
    """The JSON document after ``--`` (Blender binary), else the first argument (bpy module)."""
    args = argv[argv.index("--") + 1 :] if "--" in argv else argv[1:]
    if len(args) != 1:
        raise ScriptError("expected one JSON document of settings as the only argument")
    try:
        settings = json.loads(args[0])
    except json.JSONDecodeError as exc:
        raise ScriptError(f"settings are not valid JSON: {exc}") from None
    if not isinstance(settings, dict):
        raise ScriptError("settings must be a JSON object")
    return settings


def run(main: Callable[[list[str]], object]) -> None:
    """Run a script's main; a ScriptError becomes one line on stderr and exit status 1."""
    try:
        main(sys.argv)
    except ScriptError as exc:
        print(f"{exc.LINE}{exc}".replace("\n", " "), file=sys.stderr, flush=True)
        leave_the_bpy_module(1)
        sys.exit(1)
    leave_the_bpy_module(0)


def leave_the_bpy_module(code: int) -> None:
    """In the bpy module, end the process now, once its output is flushed.

    bpy 4.5 can hang for good at interpreter exit, after its leak report, once a file's
    Python driver has run (``--enable-autoexec``): its work is all written by then. The
    binary quits by itself (and goes on to ``-f`` after a ``--python`` script)."""
    import bpy

    if bpy.app.binary_path:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def sigint_ends_the_bpy_module() -> None:
    """In the bpy module, make SIGINT (the farm's cancel) end the process at once.

    The Blender binary stops a render on SIGINT and carries on; in the bpy module Python
    owns SIGINT, and its KeyboardInterrupt waits until the render call returns, so a
    cancel would sit out the grace period and end in SIGKILL.
    """
    import bpy

    if not bpy.app.binary_path:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
