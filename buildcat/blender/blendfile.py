"""Reading a .blend without Blender: its scenes (frame range, cameras, output settings) and
every file it depends on, with blender-asset-tracer (BAT); a local Blender where BAT cannot.

This runs in farm processes (the client, ``farm check``), never inside Blender.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from buildcat.errors import FarmError

log = logging.getLogger(__name__)
# BAT logs a warning for each missing library it cannot follow; check_assets reports them.
logging.getLogger("blender_asset_tracer").setLevel(logging.ERROR)

#: Blender's ``R_IMF_IMTYPE_*`` codes (DNA_scene_types.h) by the ``file_format`` name of
#: its Python API. H264, XVID and THEORA are old movie codes Blender reads as FFMPEG.
FILE_FORMATS = {
    0: "TARGA",
    1: "IRIS",
    4: "JPEG",
    7: "IRIS",
    14: "TARGA_RAW",
    15: "AVI_RAW",
    16: "AVI_JPEG",
    17: "PNG",
    20: "BMP",
    21: "HDR",
    22: "TIFF",
    23: "OPEN_EXR",
    24: "FFMPEG",
    26: "CINEON",
    27: "DPX",
    28: "OPEN_EXR_MULTILAYER",
    29: "DDS",
    30: "JPEG2000",
    31: "FFMPEG",
    32: "FFMPEG",
    33: "FFMPEG",
    34: "PSD",
    35: "WEBP",
}
#: Formats that write one movie file, not one image per frame.
MOVIE_FORMATS = frozenset({"FFMPEG", "AVI_JPEG", "AVI_RAW"})
COLOR_MODES = {8: "BW", 24: "RGB", 32: "RGBA"}
#: ``R_IMF_CHAN_DEPTH_*`` bits by ``color_depth``.
COLOR_DEPTHS = {1: "1", 2: "8", 4: "10", 8: "12", 16: "16", 32: "24", 64: "32"}
EXR_CODECS = ("NONE", "PXR24", "ZIP", "PIZ", "RLE", "ZIPS", "B44", "B44A", "DWAA", "DWAB")
OB_CAMERA = 11

#: What kind of file a data block's two-letter code points at.
ASSET_KINDS = {
    "IM": "image",
    "LI": "library",
    "CF": "cache",
    "SO": "sound",
    "VF": "font",
    "VO": "volume",
    "MC": "movie clip",
    "ME": "mesh data",
    "OB": "cache",
    "SC": "sequencer strip",
    "LA": "light profile",
}
RELATIVE, ABSOLUTE, OUTSIDE, MISSING = "relative", "absolute", "outside the root", "missing"
#: Another system's path (or another mount's) under a location of the path map, found here
#: at this machine's path of it; an absolute path of another system under none, which no
#: worker can find.
MAPPED, NOT_MAPPED = "mapped", "under no location"
STATUSES = (RELATIVE, ABSOLUTE, MAPPED, OUTSIDE, NOT_MAPPED, MISSING)


@dataclass(slots=True, frozen=True)
class OutputSettings:
    """A scene's image output, in the names of Blender's ``ImageFormatSettings``."""

    file_format: str
    color_mode: str
    color_depth: str
    exr_codec: str
    quality: int

    @property
    def is_movie(self) -> bool:
        return self.file_format in MOVIE_FORMATS


@dataclass(slots=True, frozen=True)
class SceneInfo:
    name: str
    frame_start: int
    frame_end: int
    frame_step: int
    resolution: tuple[int, int]
    resolution_percentage: int
    camera: str | None  # the scene's active camera
    cameras: tuple[str, ...]  # every camera object in the scene's collections
    output: OutputSettings
    #: Blender's frame rate is ``fps / fps_base`` (29.97 is 30 / 1.001).
    fps: int = 24
    fps_base: float = 1.0

    @property
    def frame_rate(self) -> float:
        """Frames per second, as Blender plays the scene."""
        return self.fps / self.fps_base

    @property
    def frames(self) -> str:
        """The scene's frame range as a frame spec."""
        return f"{self.frame_start}-{self.frame_end}:{self.frame_step}"


@dataclass(slots=True, frozen=True)
class BlendInfo:
    scenes: tuple[SceneInfo, ...]
    active: str  # the scene Blender renders when none is named
    read_with: str = "blender-asset-tracer"

    def scene(self, name: str | None = None) -> SceneInfo:
        """The scene called ``name``, else the active one; a FarmError names those there are."""
        wanted = self.active if name is None else name
        for scene in self.scenes:
            if scene.name == wanted:
                return scene
        known = ", ".join(repr(s.name) for s in self.scenes)
        raise FarmError(f"no scene named {wanted!r} in this file (scenes: {known})")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True, frozen=True)
class Asset:
    """One file a .blend depends on, and whether a farm worker will find it."""

    kind: str  # image, library, cache, sound, font, volume, ...
    block: str  # the data block that uses it ("IMwood")
    path: str  # as written in the .blend ("//tex/wood.png")
    resolved: str  # absolute path on this machine (mapped with the path map)
    status: str  # one of STATUSES
    used_by: str  # the .blend (root-relative where inside) that holds the reference
    #: The location of the path map it is under (``root``, ``textures``), if any.
    location: str | None = None

    @property
    def refused(self) -> bool:
        return self.status in (MISSING, OUTSIDE, NOT_MAPPED)


@dataclass(slots=True)
class AssetReport:
    blend: str
    assets: list[Asset] = field(default_factory=list)

    @property
    def problems(self) -> list[Asset]:
        return [asset for asset in self.assets if asset.refused]

    def to_json(self) -> dict[str, Any]:
        return {
            "blend": self.blend,
            "assets": [asdict(asset) for asset in self.assets],
            "problems": len(self.problems),
        }

    def refusal(self) -> str:
        """One line naming every missing file and every file outside the root."""
        named = "; ".join(f"{a.path} ({a.status}, {a.kind} {a.block})" for a in self.problems)
        mapping = (
            "; `farm paths add` names another system's location"
            if any(a.status == NOT_MAPPED for a in self.problems)
            else ""
        )
        return (
            f"{self.blend} depends on files the farm cannot use: {named} "
            f"(`farm check` lists them{mapping}; --allow-missing renders anyway)"
        )


# ---- scenes ----------------------------------------------------------------------------------


def read_blend(path: str | os.PathLike[str]) -> BlendInfo:
    """The scenes of a .blend: read with BAT, else with the newest Blender on this machine."""
    try:
        return read_with_bat(path)
    except FarmError:
        raise
    except Exception as exc:  # BAT raises many kinds on files it does not understand
        log.info("blender-asset-tracer could not read %s (%s); asking Blender", path, exc)
        return read_with_blender(path, reason=f"{type(exc).__name__}: {exc}")


def _open_with_bat(path: Path) -> Any:
    """BAT's BlendFile for ``path``; a file BAT opened and then could not read is closed
    (BAT itself leaves it open when its constructor fails)."""
    from blender_asset_tracer import blendfile

    opened: list[Any] = []

    class Closing(blendfile.BlendFile):
        def _open_file(self, path: Path, mode: str) -> Any:
            fileobj = super()._open_file(path, mode)
            opened.append(fileobj)
            return fileobj

    try:
        return Closing(path)
    except BaseException:
        for fileobj in opened:
            fileobj.close()
        raise


def read_with_bat(path: str | os.PathLike[str]) -> BlendInfo:
    bfile = _open_with_bat(Path(path))
    try:
        scenes = tuple(_scene(block) for block in bfile.find_blocks_from_code(b"SC"))
        if not scenes:
            raise FarmError(f"{path} has no scene")
        return BlendInfo(scenes=scenes, active=_active_scene(bfile) or scenes[0].name)
    finally:
        bfile.close()


def _name(block: Any) -> str:
    return bytes(block.id_name[2:]).decode("utf-8", "replace")


def _active_scene(bfile: Any) -> str | None:
    """The scene of the saved window (what ``blender -b FILE`` renders), else ``curscene``."""
    for wm in bfile.find_blocks_from_code(b"WM"):
        window = wm.get_pointer((b"windows", b"first"))
        while window is not None:
            scene = window.get_pointer(b"scene")
            if scene is not None:
                return _name(scene)
            window = window.get_pointer(b"next")
    for glob in bfile.find_blocks_from_code(b"GLOB"):
        scene = glob.get_pointer(b"curscene")
        if scene is not None:
            return _name(scene)
    return None


def _scene(block: Any) -> SceneInfo:
    def render(*keys: bytes) -> Any:
        return block.get((b"r", *keys))

    codec = render(b"im_format", b"exr_codec")
    camera = block.get_pointer(b"camera")
    return SceneInfo(
        name=_name(block),
        frame_start=int(render(b"sfra")),
        frame_end=int(render(b"efra")),
        frame_step=int(render(b"frame_step")),
        resolution=(int(render(b"xsch")), int(render(b"ysch"))),
        resolution_percentage=int(render(b"size")),
        camera=_name(camera) if camera is not None else None,
        cameras=tuple(sorted(_cameras(block))),
        output=OutputSettings(
            file_format=FILE_FORMATS.get(render(b"im_format", b"imtype"), "UNKNOWN"),
            color_mode=COLOR_MODES.get(render(b"im_format", b"planes"), "RGB"),
            color_depth=COLOR_DEPTHS.get(render(b"im_format", b"depth"), "8"),
            exr_codec=EXR_CODECS[codec] if 0 <= codec < len(EXR_CODECS) else "NONE",
            quality=int(render(b"im_format", b"quality")),
        ),
        fps=int(render(b"frs_sec")),
        fps_base=float(render(b"frs_sec_base")),
    )


def _listbase(block: Any, name: bytes) -> Iterator[Any]:
    item = block.get_pointer((name, b"first"))
    while item is not None:
        yield item
        item = item.get_pointer(b"next")


def _cameras(scene: Any) -> set[str]:
    """Camera objects in the scene's collection and the collections below it."""
    found: set[str] = set()
    seen: set[int] = set()
    pending = [scene.get_pointer(b"master_collection")]
    while pending:
        collection = pending.pop()
        if collection is None or collection.addr_old in seen:
            continue
        seen.add(collection.addr_old)
        for link in _listbase(collection, b"gobject"):
            obj = link.get_pointer(b"ob")
            if obj is not None and obj.get(b"type") == OB_CAMERA:
                found.add(_name(obj))
        pending.extend(
            child.get_pointer(b"collection") for child in _listbase(collection, b"children")
        )
    return found


def read_with_blender(
    path: str | os.PathLike[str], reason: str = "", blender: Any = None
) -> BlendInfo:
    """Ask ``blender`` (default: the newest Blender on this machine) to read it."""
    from buildcat import blender as blender_support

    blender = blender or newest_local_blender()
    why = f" ({reason})" if reason else ""
    if blender is None:
        raise FarmError(f"cannot read {path}: blender-asset-tracer failed{why} and no Blender here")
    info = blender_support.scene_info(blender, Path(path))
    scenes = tuple(
        SceneInfo(
            name=scene["name"],
            frame_start=scene["frame_start"],
            frame_end=scene["frame_end"],
            frame_step=scene["frame_step"],
            resolution=(int(scene["resolution"][0]), int(scene["resolution"][1])),
            resolution_percentage=scene["resolution_percentage"],
            camera=scene["camera"],
            cameras=tuple(sorted(scene["cameras"])),
            output=OutputSettings(**scene["output"]),
            fps=int(scene.get("fps", 24)),
            fps_base=float(scene.get("fps_base", 1.0)),
        )
        for scene in info["scenes"]  # type: ignore[attr-defined]
    )
    return BlendInfo(scenes=scenes, active=str(info["scene"]), read_with=blender.describe())


def newest_local_blender() -> Any:
    """The newest of ``blender`` (or ``$BLENDER``) and the bpy module of this Python."""
    import sys

    from buildcat import blender as blender_support

    found = []
    try:
        binary = blender_support.find_blender(allow_bpy=False)
    except FarmError:
        binary = None
    if binary is not None:
        found.append(binary)
    bpy_version = blender_support._bpy_version(sys.executable)
    if bpy_version is not None:
        found.append(
            blender_support.BlenderInstall(blender_support.BPY, sys.executable, bpy_version)
        )
    if not found:
        return None
    return max(found, key=lambda b: tuple(int(p) for p in b.version.split(".")))


# ---- the files a .blend depends on ---------------------------------------------------------


def check_assets(blend: str | os.PathLike[str], root: str | os.PathLike[str]) -> AssetReport:
    """Every file ``blend`` depends on, through linked libraries too, each with its status.

    Absolute paths are read with the farm's path map (buildcat/paths.py): one under a
    location is looked for at this machine's path of it, as a worker will remap it.
    BAT follows a library only where it finds it as written."""
    from blender_asset_tracer import blendfile, trace

    from buildcat import paths

    rules = paths.for_this_machine(root)
    root_path = Path(root).resolve()
    blend_path = Path(blend).resolve()
    report = AssetReport(blend=_shown(blend_path, root_path))
    seen: set[tuple[str, str]] = set()
    try:
        for usage in trace.deps(blend_path):
            written = _written(usage)
            holder = Path(usage.block.bfile.filepath).resolve()
            if (written, str(holder)) in seen:
                continue
            seen.add((written, str(holder)))
            mapped = rules.map(written, blender=True)
            if mapped.kind == paths.MAPPED:
                resolved = Path(mapped.path)
            elif mapped.kind == paths.RELATIVE and mapped.changed:  # //tex\wood.png
                resolved = Path(os.path.normpath(holder.parent / mapped.path[2:]))
            else:
                resolved = Path(os.path.normpath(usage.abspath))
            code = bytes(usage.block.code).decode("ascii", "replace")
            report.assets.append(
                Asset(
                    kind=ASSET_KINDS.get(code, code),
                    block=bytes(usage.block_name).decode("utf-8", "replace"),
                    path=written,
                    resolved=str(resolved),
                    status=_status(written, resolved, usage.is_sequence, root_path, mapped),
                    used_by=_shown(holder, root_path),
                    location=mapped.location,
                )
            )
    except Exception as exc:
        raise FarmError(f"cannot list the files {blend} depends on: {exc}") from None
    finally:
        blendfile.close_all_cached()
    return report


def _written(usage: Any) -> str:
    """The path as the .blend holds it. BAT turns every backslash into a slash, and so a
    Windows share (``\\\\aurora\\farm\\x.png``) into what reads as Blender's relative
    ``//aurora/farm/x.png``: the field's own bytes are used where they say the same path."""
    normalised = bytes(usage.asset_path)
    try:
        if usage.path_full_field is not None:
            raw = usage.block.get(usage.path_full_field.name.name_only)
        else:
            raw = usage.block.get(usage.path_dir_field.name.name_only) + usage.block.get(
                usage.path_base_field.name.name_only
            )
    except Exception:  # a field BAT found but cannot read back: its own text will do
        raw = None
    if isinstance(raw, bytes) and raw.replace(b"\\", b"/") == normalised:
        normalised = raw
    return normalised.decode("utf-8", "replace")


def _shown(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


_DIGITS = re.compile(r"\d+(?=\D*$)")


def _exists(resolved: Path, is_sequence: bool) -> bool:
    if resolved.exists():
        return True
    if not is_sequence:
        return False
    # An image sequence or UDIM set: any file with the same name around its number.
    stem = _DIGITS.sub("*", resolved.name.replace("<UDIM>", "*").replace("<UVTILE>", "*"))
    return resolved.parent.is_dir() and any(resolved.parent.glob(stem))


def _status(written: str, resolved: Path, is_sequence: bool, root: Path, mapped: Any) -> str:
    from buildcat import paths

    if mapped.kind in (paths.UNMAPPED, paths.NO_PATH) and _foreign(written):
        return NOT_MAPPED  # C:\Users\ann\wood.png read on Linux: nobody can find it
    if not _exists(resolved, is_sequence):
        return MISSING
    if mapped.kind == paths.MAPPED:
        return MAPPED
    if mapped.kind == paths.LOCAL:
        return ABSOLUTE  # this machine's path of a location: every worker maps it
    try:
        resolved.resolve().relative_to(root)
    except ValueError:
        return OUTSIDE
    return RELATIVE if written.startswith("//") else ABSOLUTE


def _foreign(written: str) -> bool:
    """A path only another system could mean."""
    from buildcat import paths

    if paths.flavour(paths.this_system()) == "windows":
        return written.startswith("/") and not written.startswith("//")
    return paths.looks_windows(written)


def locate_blend(scene: str, root: str | os.PathLike[str]) -> Path:
    """A .blend named relative to the farm root, or by a path on this machine."""
    given = Path(scene)
    for candidate in (given,) if given.is_absolute() else (Path(root) / given, given):
        if candidate.is_file():
            return candidate
    raise FarmError(f"{scene} does not exist (looked under the farm root {root} and here)")


def summary(report: AssetReport) -> str:
    """``3 files: 2 relative, 1 missing`` (only the statuses there are)."""
    counts = {status: 0 for status in STATUSES}
    for asset in report.assets:
        counts[asset.status] += 1
    parts = [f"{count} {status}" for status, count in counts.items() if count]
    files = len(report.assets)
    return f"{files} file{'s' if files != 1 else ''}" + (f": {', '.join(parts)}" if parts else "")
