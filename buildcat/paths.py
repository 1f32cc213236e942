"""The farm's path map: the same shared locations as each system names them, and the rules
that turn a path written on one system into the path of the same file on another.

``<root>/.buildcat/paths.json`` names each location per system (``/mnt/textures`` on
Linux = ``T:\\`` on Windows = ``/Volumes/Textures`` on macOS); the farm root is always one
(``root``), each member knowing its own path to it. Windows paths follow Windows rules
wherever they are read (drive letters, UNC shares, either slash, any case, ``\\\\?\\``
long paths); Linux and macOS paths follow POSIX rules (case-sensitive). A path inside a
.blend that starts with ``//`` is relative to the .blend (Blender's rule), never a share.

Pure logic, standard library only: the scripts inside Blender (Python 3.10 in Blender 3.4,
with none of buildcat's dependencies) load this file by its path to remap a scene's paths.
Only :func:`load` and :func:`save` touch the disk.
"""

from __future__ import annotations

import contextlib
import json
import ntpath
import os
import posixpath
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __name__ == "buildcat.paths":
    from buildcat.errors import PathError
else:  # loaded by path inside Blender, where the buildcat package cannot be imported

    class PathError(ValueError):
        pass


#: The systems a location may name a path for, in the order they are shown.
SYSTEMS = ("linux", "windows", "macos")
#: The location every map has: the farm root.
ROOT = "root"
#: Where the map lives, under ``<root>/.buildcat/``.
MAP_FILE = "paths.json"
STATE_DIR_NAME = ".buildcat"  # buildcat.root.STATE_DIR_NAME (not importable inside Blender)
VERSION = 1
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: ``\\?\C:\...`` and ``\\?\UNC\server\share\...``: Windows' long-path forms of the same paths.
_LONG_UNC = re.compile(r"^[\\/]{2}[?.][\\/]UNC[\\/]", re.IGNORECASE)
_LONG = re.compile(r"^[\\/]{2}[?.][\\/]")

#: How a path was mapped (:attr:`Mapping.kind`).
RELATIVE = "relative"  # relative (to the .blend, or to the root): nothing to map
LOCAL = "local"  # already this system's path of a location
MAPPED = "mapped"  # another system's (or another mount's) path of a location, turned into ours
UNMAPPED = "unmapped"  # absolute, but under no location: no other system can find it
NO_PATH = "no path"  # under a location that has no path on the target system


class PathMapError(PathError):
    """The path map (or a path given for it) is wrong: one line saying how."""


def this_system(platform: str | None = None) -> str:
    """``linux``, ``windows`` or ``macos``: the system ``platform`` (``sys.platform``) is."""
    platform = sys.platform if platform is None else platform
    if platform.startswith("win") or platform == "cygwin":
        return "windows"
    if platform == "darwin":
        return "macos"
    return "linux"


def flavour(system: str) -> str:
    """``windows`` or ``posix``: whose rules the paths of ``system`` follow."""
    return "windows" if system == "windows" else "posix"


# ---- one path ----------------------------------------------------------------------------------


def windows_parts(text: str) -> tuple[str, ...] | None:
    """The parts of an absolute Windows path (``('F:\\\\', 'farm', 'tex')``), or None.

    Absolute means a drive with its root (``F:\\``, ``f:/``) or a UNC share
    (``\\\\server\\share``, ``//server/share``); ``\\\\?\\`` long forms count as the
    paths they spell. ``..`` is resolved as Windows would, so ``F:\\farm\\..\\x`` is ``F:\\x``.
    A drive-relative (``F:tex``) or rooted (``\\tex``) path is not absolute.
    """
    if "\x00" in text:
        return None
    if _LONG_UNC.match(text):
        text = "\\\\" + text[8:]
    elif _LONG.match(text):
        text = text[4:]
    path = PureWindowsPath(ntpath.normpath(text))
    if not (path.drive and path.root):
        return None
    if path.drive.startswith("\\\\") and not re.fullmatch(r"\\\\[^\\]+\\[^\\]+", path.drive):
        return None  # \\server alone, or a device path: no share named
    return path.parts


def posix_parts(text: str) -> tuple[str, ...] | None:
    """The parts of an absolute POSIX path (``('/', 'mnt', 'tex')``), or None."""
    if "\x00" in text or not text.startswith("/"):
        return None
    return PurePosixPath(posixpath.normpath(text)).parts


def is_blender_relative(text: str) -> bool:
    """Whether a path as Blender writes it is relative to its .blend (``//tex/wood.png``)."""
    return text.startswith("//")


def split(text: str, *, blender: bool = False) -> tuple[str, tuple[str, ...]] | None:
    """(``windows`` or ``posix``, parts) of an absolute path, None for a relative one.

    ``blender``: the path is as written in a .blend, where ``//`` starts a relative path.
    """
    if blender and is_blender_relative(text):
        return None
    if text.startswith("/") and not text.startswith("//"):
        parts = posix_parts(text)
        return None if parts is None else ("posix", parts)
    parts = windows_parts(text)
    return None if parts is None else ("windows", parts)


def looks_windows(text: str) -> bool:
    """A path that only Windows could mean: a drive letter, a backslash UNC, ``F:tex``, ``\\x``."""
    return bool(re.match(r"^(?:[A-Za-z]:|\\)", text))


def _key(rules: str, parts: tuple[str, ...]) -> tuple[str, ...]:
    """Parts as compared: Windows ignores case (of drives, shares and names alike)."""
    if rules == "windows":
        return tuple(part.replace("/", "\\").casefold() for part in parts)
    return parts


def join(system: str, base: str, rest: tuple[str, ...]) -> str:
    """``base`` (a path of ``system``) with the parts ``rest`` below it, as ``system`` writes it."""
    if flavour(system) == "windows":
        return str(PureWindowsPath(base, *rest))
    return str(PurePosixPath(base, *rest))


def native_relative(text: str, system: str) -> str:
    """A Blender relative path (``//tex\\wood.png``, saved on Windows) with the separators of
    ``system``: on Linux and macOS Blender reads a backslash after ``//`` as a separator too."""
    if not is_blender_relative(text) or flavour(system) == "windows":
        return text
    return "//" + text[2:].replace("\\", "/")


def check_location_path(system: str, text: str) -> str:
    """``text`` as a location's path on ``system``, normalised; PathMapError if it cannot be."""
    if system not in SYSTEMS:
        raise PathMapError(f"unknown system {system!r}: use {', '.join(SYSTEMS)}")
    if not isinstance(text, str) or not text.strip():
        raise PathMapError(f"an empty {system} path")
    if flavour(system) == "windows":
        parts = windows_parts(text)
        if parts is None:
            raise PathMapError(
                f"{text!r} is not an absolute Windows path: give a drive (T:\\, F:\\farm) "
                "or a share (\\\\server\\share)"
            )
        shown = str(PureWindowsPath(*parts))
        # A share's own root is shown as \\server\share; a drive's keeps its \ (T:\).
        return shown.rstrip("\\") if len(parts) == 1 and shown.startswith("\\\\") else shown
    if text.startswith("//") or posix_parts(text) is None:
        raise PathMapError(f"{text!r} is not an absolute {system} path: it starts with one /")
    return str(PurePosixPath(*(posix_parts(text) or ())))


# ---- the map -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Location:
    """One shared location: its name and its paths on each system (the first of a system's
    paths is where paths map to there; every one of them is recognised)."""

    name: str
    paths: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def on(self, system: str) -> tuple[str, ...]:
        return self.paths.get(system, ())

    def to_json(self) -> dict[str, Any]:
        return {
            system: values[0] if len(values) == 1 else list(values)
            for system in SYSTEMS
            if (values := self.on(system))
        }


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PathMapError(
            f"location name {name!r}: lowercase letters, digits and _, starting with a letter"
        )
    return name


def location(name: str, paths: dict[str, Any]) -> Location:
    """A checked :class:`Location` from ``{system: path or [paths]}``."""
    check_name(name)
    if not isinstance(paths, dict):
        raise PathMapError(f"location {name!r} must map systems to paths")
    checked: dict[str, tuple[str, ...]] = {}
    for system, given in paths.items():
        values = [given] if isinstance(given, str) else given
        if system not in SYSTEMS:
            raise PathMapError(
                f"location {name!r}: unknown system {system!r} (use {', '.join(SYSTEMS)})"
            )
        if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
            raise PathMapError(f"location {name!r}: the {system} paths must be text")
        normalised = []
        for value in values:
            try:
                path = check_location_path(system, value)
            except PathMapError as exc:
                raise PathMapError(f"location {name!r}: {exc}") from None
            if path not in normalised:
                normalised.append(path)
        if normalised:
            checked[system] = tuple(normalised)
    if not checked and name != ROOT:
        raise PathMapError(f"location {name!r} names no path on any system")
    return Location(name, checked)


@dataclass(frozen=True, slots=True)
class PathMap:
    """Every location of the farm but the root's own path on this machine (see
    :meth:`with_own_root`)."""

    locations: tuple[Location, ...] = ()

    def get(self, name: str) -> Location | None:
        for found in self.locations:
            if found.name == name:
                return found
        return None

    @property
    def names(self) -> list[str]:
        return [found.name for found in self.locations]

    def with_location(self, new: Location, *, replace: bool = False) -> PathMap:
        """The map with ``new`` added (or, with ``replace``, in place of its namesake)."""
        if self.get(new.name) is not None and not replace:
            raise PathMapError(
                f"there is already a location {new.name!r}: remove it first, or give --replace"
            )
        kept = [old for old in self.locations if old.name != new.name]
        result = PathMap(tuple(sorted([*kept, new], key=_order)))
        result.check()
        return result

    def without(self, name: str) -> PathMap:
        if self.get(name) is None:
            raise PathMapError(f"no location named {name!r} (there are: {', '.join(self.names)})")
        return PathMap(tuple(old for old in self.locations if old.name != name))

    def check(self) -> None:
        """Refuse a path that two locations both claim: a path under it would be ambiguous."""
        seen: dict[tuple[str, tuple[str, ...]], str] = {}
        for place in self.locations:
            for system in SYSTEMS:
                for value in place.on(system):
                    found = split(value)
                    assert found is not None  # checked when the location was made
                    key = (found[0], _key(*found))
                    other = seen.setdefault(key, place.name)
                    if other != place.name:
                        raise PathMapError(
                            f"{value!r} is a path of both {other!r} and {place.name!r}"
                        )

    def with_own_root(self, system: str, root: str) -> PathMap:
        """The map as a member on ``system`` with the root at ``root`` sees it: its own path
        first among the root's paths on its system (so paths map there)."""
        try:
            own = check_location_path(system, root)
        except PathMapError as exc:
            raise PathMapError(f"this machine's farm root: {exc}") from None
        current = self.get(ROOT) or Location(ROOT)
        paths = dict(current.paths)
        paths[system] = (own, *(p for p in current.on(system) if p != own))
        others = tuple(old for old in self.locations if old.name != ROOT)
        result = PathMap(tuple(sorted([Location(ROOT, paths), *others], key=_order)))
        # A location elsewhere that claims this machine's root would be ambiguous.
        result.check()
        return result

    def resolve(self, system: str) -> Resolved:
        """The rules that map any system's paths to ``system``'s."""
        if system not in SYSTEMS:
            raise PathMapError(f"unknown system {system!r}: use {', '.join(SYSTEMS)}")
        rules = []
        for place in self.locations:
            targets = place.on(system)
            target = targets[0] if targets else None
            for source_system in SYSTEMS:
                for source in place.on(source_system):
                    rules.append(Rule(place.name, source, target))
        return Resolved(system, tuple(rules))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "locations": {place.name: place.to_json() for place in self.locations},
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "the path map") -> PathMap:
        if not isinstance(data, dict) or not isinstance(data.get("locations", {}), dict):
            raise PathMapError(f'{where}: expected {{"locations": {{NAME: {{SYSTEM: PATH}}}}}}')
        version = data.get("version", VERSION)
        if version != VERSION:
            raise PathMapError(f"{where}: version {version!r}; this buildcat reads {VERSION}")
        places = []
        for name, paths in data.get("locations", {}).items():
            try:
                places.append(location(name, paths))
            except PathMapError as exc:
                raise PathMapError(f"{where}: {exc}") from None
        result = cls(tuple(sorted(places, key=_order)))
        try:
            result.check()
        except PathMapError as exc:
            raise PathMapError(f"{where}: {exc}") from None
        return result


def _order(place: Location) -> tuple[bool, str]:
    return (place.name != ROOT, place.name)


@dataclass(frozen=True, slots=True)
class Rule:
    """A path under ``source`` is under location ``name``; on the target system, under
    ``target`` (None: the location has no path there)."""

    name: str
    source: str
    target: str | None


@dataclass(frozen=True, slots=True)
class Mapping:
    """What one path is on the target system."""

    written: str
    kind: str  # RELATIVE, LOCAL, MAPPED, UNMAPPED or NO_PATH
    path: str  # on the target system (the path as written where it cannot be mapped)
    location: str | None = None

    @property
    def changed(self) -> bool:
        """Whether the path must be rewritten on the target system (a path already the
        target's own is left as written, however it spells it)."""
        return self.kind in (MAPPED, RELATIVE) and self.path != self.written


@dataclass(frozen=True, slots=True)
class Resolved:
    """The path map resolved for one system: what paths of every system become there."""

    system: str
    rules: tuple[Rule, ...] = ()

    def map(self, written: str, *, blender: bool = False) -> Mapping:
        """The path ``written`` (as a .blend holds it with ``blender``) on this system.

        The longest location path that holds it wins, part by part (``/mnt/tex`` does not
        hold ``/mnt/texture``); Windows parts compare without case, POSIX parts exactly."""
        found = split(written, blender=blender)
        if found is None:
            if blender and is_blender_relative(written):
                return Mapping(written, RELATIVE, native_relative(written, self.system))
            if looks_windows(written) or written.startswith("/"):
                return Mapping(written, UNMAPPED, written)  # F:tex, \tex, \\server alone
            return Mapping(written, RELATIVE, written)
        rules_of, parts = found
        key = _key(rules_of, parts)
        best: tuple[int, Rule] | None = None
        for rule in self.rules:
            source = split(rule.source)
            if source is None or source[0] != rules_of:
                continue
            prefix = _key(*source)
            if key[: len(prefix)] == prefix and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rule)
        if best is None:
            return Mapping(written, UNMAPPED, written)
        length, rule = best
        if rule.target is None:
            return Mapping(written, NO_PATH, written, rule.name)
        path = join(self.system, rule.target, parts[length:])
        separator = "\\" if flavour(self.system) == "windows" else "/"
        if written.endswith(("/", "\\")) and not path.endswith(separator):
            path += separator  # a folder stays one: //plates/ as Blender writes folders
        target = split(rule.target)
        same = target is not None and target[0] == rules_of and _key(*target) == key[:length]
        return Mapping(written, LOCAL if same else MAPPED, path, rule.name)

    def location_path(self, name: str) -> str | None:
        """Location ``name``'s path on this system (None: it has none, or no such location)."""
        for rule in self.rules:
            if rule.name == name:
                return rule.target
        return None

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(rule.name for rule in self.rules))

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "rules": [[rule.name, rule.source, rule.target] for rule in self.rules],
        }

    @classmethod
    def from_json(cls, data: Any) -> Resolved:
        if not isinstance(data, dict) or data.get("system") not in SYSTEMS:
            raise PathMapError("a resolved path map needs its 'system'")
        rules = data.get("rules", [])
        if not isinstance(rules, list) or not all(
            isinstance(r, list) and len(r) == 3 and isinstance(r[0], str)
            and isinstance(r[1], str) and (r[2] is None or isinstance(r[2], str))
            for r in rules
        ):  # fmt: skip
            raise PathMapError("a resolved path map's rules are [name, source, target]")
        return cls(data["system"], tuple(Rule(*rule) for rule in rules))


# ---- the file ----------------------------------------------------------------------------------


def map_file(root: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(root), STATE_DIR_NAME, MAP_FILE)


def load(root: str | os.PathLike[str]) -> PathMap:
    """The farm's path map (an empty one when the root has none yet)."""
    path = map_file(root)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return PathMap()
    except OSError as exc:
        raise PathMapError(f"cannot read the path map {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PathMapError(f"the path map {path} is not valid JSON: {exc}") from None
    return PathMap.from_json(data, where=f"the path map {path}")


def save(root: str | os.PathLike[str], path_map: PathMap) -> str:
    """Write the map whole (a temporary file renamed over the old one); returns its path."""
    path = map_file(root)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    descriptor, staged = tempfile.mkstemp(prefix=f".{MAP_FILE}.", dir=folder)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(path_map.to_json(), handle, indent=2)
            handle.write("\n")
        os.chmod(staged, 0o644)  # every member reads it, like the root itself
        os.replace(staged, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staged)
        raise
    return path


def for_this_machine(root: str | os.PathLike[str], system: str | None = None) -> Resolved:
    """The farm's map resolved for this machine: its system, its own path to the root."""
    system = system or this_system()
    return load(root).with_own_root(system, os.path.abspath(os.fspath(root))).resolve(system)
