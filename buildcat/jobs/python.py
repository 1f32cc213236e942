"""Python job functions: ``module:function`` or ``path/in/root.py:function``."""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from buildcat import root as farm_root
from buildcat.errors import FarmError, PathError


def split_spec(spec: Any) -> tuple[str, str]:
    """Split ``module:function`` / ``file.py:function``; refuse anything else with one line."""
    if isinstance(spec, str):
        return _split_text(spec)  # a million tasks of one function: checked once
    return _split(spec)


@functools.lru_cache(maxsize=1024)
def _split_text(spec: str) -> tuple[str, str]:
    return _split(spec)


def _split(spec: Any) -> tuple[str, str]:
    if not isinstance(spec, str) or spec.count(":") < 1:
        raise FarmError(
            f"function {spec!r} must look like module:function or path/file.py:function"
        )
    target, _, name = spec.rpartition(":")
    if not target or not name.isidentifier():
        raise FarmError(
            f"function {spec!r} must look like module:function or path/file.py:function"
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        farm_root.check_relative(target)
    elif not all(part.isidentifier() for part in target.split(".")):
        raise FarmError(f"{target!r} in {spec!r} is neither a module name nor a .py path")
    return target, name


def _under(file: str, root: str | Path) -> bool:
    try:
        return Path(file).resolve().is_relative_to(Path(root).resolve())
    except OSError:
        return False


def validate_payload(payload: dict[str, Any]) -> None:
    split_spec(payload.get("function"))
    if not isinstance(payload.get("args", []), list):
        raise FarmError("args must be a list")
    if not isinstance(payload.get("kwargs", {}), dict):
        raise FarmError("kwargs must be a map")
    if not all(isinstance(key, str) for key in payload.get("kwargs", {})):
        raise FarmError("kwargs keys must be strings")


#: Modification times of the job modules this process imported from files, so a module
#: edited on the shared root is imported again instead of running a stale copy.
_loaded_mtimes: dict[str, float] = {}
#: Module name -> its file when it lives under the root (else None).
_root_files: dict[str, str | None] = {}


def _mtime(path: str | None) -> float | None:
    try:
        return os.stat(path).st_mtime if path else None
    except OSError:
        return None


def _fresh(module_name: str) -> bool:
    module = sys.modules.get(module_name)
    if module is None:
        return False
    recorded = _loaded_mtimes.get(module_name)
    return recorded is None or recorded == _mtime(getattr(module, "__file__", None))


def _locations(name: str) -> list[str]:
    """Where importing ``name`` would read files from (the module and each package on
    the way), found without running any of their code."""
    found: list[str] = []
    search: list[str] | None = None  # sys.path
    parts = name.split(".")
    for index in range(len(parts)):
        full = ".".join(parts[: index + 1])
        loaded = sys.modules.get(full)
        spec = getattr(loaded, "__spec__", None) if loaded is not None else None
        if spec is None:
            try:
                spec = importlib.machinery.PathFinder.find_spec(full, search)
            except (ImportError, ValueError, OSError):
                spec = None
        if spec is None:
            break  # not a file on a path: the import itself says what is wrong
        if spec.origin and spec.has_location:
            found.append(spec.origin)
        search = list(spec.submodule_search_locations or [])
        found.extend(search)
    return found


def check_no_symlink_escape(module_name: str, root: str | Path) -> None:
    """Refuse a module found under the root whose file (or a package folder on the way)
    is a symlink that leads out of it, as ``path/in/root.py:function`` is refused."""
    lexical_root = os.path.abspath(root)
    real_root = os.path.realpath(root)
    for location in _locations(module_name):
        lexical = os.path.abspath(location)
        if os.path.commonpath([lexical, lexical_root]) != lexical_root:
            continue  # an installed module, not one under the root
        real = os.path.realpath(location)
        if os.path.commonpath([real, real_root]) != real_root:
            shown = os.path.relpath(lexical, lexical_root)
            raise PathError(
                f"module {module_name!r} escapes the farm root through a symlink "
                f"({shown} leads to {real})"
            )


def load_function(spec: str, root: str | Path) -> Callable[..., Any]:
    """Import the function a task names, on this worker, under this worker's root."""
    target, name = split_spec(spec)
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = farm_root.resolve(root, target)
        if not path.is_file():
            raise FarmError(f"{target} does not exist under the farm root {root}")
        module_name = f"buildcat_rootfile_{abs(hash(str(path)))}"
        module = sys.modules.get(module_name) if _fresh(module_name) else None
        if module is None:
            _loaded_mtimes[module_name] = _mtime(str(path)) or 0.0
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            if module_spec is None or module_spec.loader is None:
                raise FarmError(f"cannot import {target}")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
    else:
        if target not in sys.modules:
            check_no_symlink_escape(target, root)  # before any code of the module runs
        module = importlib.import_module(target)
        if target not in _root_files:  # once per module: resolving paths is not free
            file = getattr(module, "__file__", None)
            _root_files[target] = file if file and _under(file, root) else None
        file = _root_files[target]
        if file is not None:
            current = _mtime(file) or 0.0
            if _loaded_mtimes.setdefault(target, current) != current:
                check_no_symlink_escape(target, root)
                module = importlib.reload(module)
                _loaded_mtimes[target] = current
    function = getattr(module, name, None)
    if not callable(function):
        raise FarmError(f"{target} has no function {name!r}")
    return function
