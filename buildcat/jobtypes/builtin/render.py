"""Render a .blend on the farm's Blender workers.

Frames in chunks, each frame as tiles stitched back together or as sample splits merged
into one: the same job as ``farm submit blender`` (``Client.render`` submits this type).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildcat.errors import FarmError
from buildcat.frames import parse_frames
from buildcat.jobtypes import JobPlan, Setting, Values

if TYPE_CHECKING:
    from buildcat.blender.blendfile import SceneInfo

LABEL = "Blender render"

SETTINGS = [
    Setting("scene", "path", required=True, help="The .blend, relative to the farm root."),
    Setting(
        "frames", "frames", help="Frames to render (1-240, 1,7,10-25:2); default: the scene's."
    ),
    Setting("chunk", "int", default=1, minimum=1, help="Frames per task."),
    Setting(
        "output",
        "str",
        help="Output path relative to the root, # for frame digits "
        "[default: renders/<file name>/<scene name>/frame_####].",
    ),
    Setting(
        "format",
        "choice",
        choices=["PNG", "JPEG", "OPEN_EXR", "OPEN_EXR_MULTILAYER"],
        help="File format [default: the scene's own output settings].",
    ),
    Setting("color_mode", "choice", choices=["BW", "RGB", "RGBA"], help="Colour mode."),
    Setting("color_depth", "choice", choices=["8", "16", "32"], help="Bits per channel."),
    Setting("engine", "choice", choices=["cycles", "eevee", "workbench"], help="Render engine."),
    Setting("samples", "int", help="Samples per pixel."),
    Setting("resolution", "str", help="WxH, e.g. 1920x1080 [default: the scene's]."),
    Setting("camera", "str", help="Camera object to render from."),
    Setting("scene_name", "str", help="Scene inside the .blend [default: the active one]."),
    Setting("tiles", "str", help="CxR: render each frame as C x R tiles, stitched."),
    Setting("sample_split", "int", help="Render each Cycles frame as N seeds of 1/N the samples."),
    Setting(
        "allow_missing",
        "bool",
        default=False,
        help="Render even if files the scene uses are missing.",
    ),
    Setting(
        "enable_autoexec",
        "bool",
        default=False,
        help="Let the .blend's Python run (trusted files).",
    ),
    Setting("blender_version", "str", help="Render every task on this Blender (4.5, 4.5.15)."),
    Setting(
        "preview_video",
        "bool",
        default=False,
        help="End with a task that makes preview.mp4 of the frames, beside them.",
    ),
    Setting("fps", "str", help="The preview video's frame rate [default: the scene's]."),
]


def pair(text: str | None, what: str) -> tuple[int, int] | None:
    """``1920x1080`` as (1920, 1080)."""
    if text is None:
        return None
    left, sep, right = text.lower().partition("x")
    if not sep or not left.isdigit() or not right.isdigit() or int(left) < 1 or int(right) < 1:
        raise FarmError(f"{what} {text!r} must look like WxH, e.g. 1920x1080")
    return int(left), int(right)


def compile(settings: Values, job: JobPlan) -> None:
    """Check the scene as ``farm submit blender`` does (read from the .blend without
    Blender), then plan its tasks with ``plan_render``."""
    from buildcat import blender as blender_support
    from buildcat import protocol
    from buildcat.blender import blendfile
    from buildcat.jobs import blender as blender_jobs
    from buildcat.root import resolve

    relative = settings.scene
    frames = settings.frames
    chunk = settings.chunk
    output = settings.output
    color_mode = settings.color_mode
    color_depth = settings.color_depth
    engine = settings.engine
    samples = settings.samples
    camera = settings.camera
    scene_name = settings.scene_name
    sample_split = settings.sample_split
    allow_missing = settings.allow_missing
    resolution = pair(settings.resolution, "resolution")
    tiles = pair(settings.tiles, "tiles")
    path = resolve(job.root, relative)
    if not path.is_file():
        raise FarmError(
            f"{relative} does not exist under the farm root {job.root} "
            "(set --root or BUILDCAT_ROOT to this machine's path to the root)"
        )
    saved_with = blender_support.blend_file_version(path)
    if saved_with is None:
        raise FarmError(f"{relative} is not a .blend file")
    job.requires += [
        f"blender>={saved_with}",
        *blender_pin(settings.blender_version, saved_with, relative),
    ]
    # The file's own scenes, cameras and output, read without Blender where BAT can.
    target = blendfile.read_blend(path).scene(scene_name)
    if settings.format is None and target.output.is_movie:
        raise FarmError(
            f"scene {target.name!r} writes a movie ({target.output.file_format}): "
            "render frames (PNG/EXR), then make a video; or pass --format"
        )
    file_format, written_as = output_options(
        target, output, settings.format, color_mode, color_depth, bool(tiles or sample_split)
    )
    if camera is not None and camera not in target.cameras:
        known = ", ".join(repr(c) for c in target.cameras) or "none"
        raise FarmError(f"no camera named {camera!r} in scene {target.name!r} (cameras: {known})")
    if not allow_missing:
        assets = blendfile.check_assets(path, job.root)
        if assets.problems:
            raise FarmError(assets.refusal())
    if frames is None:
        frames = target.frames
    output = output or blender_jobs.default_output(relative, target.name)
    overrides: dict[str, Any] = {}
    for key, value in (
        ("engine", engine),
        ("samples", samples),
        ("resolution", list(resolution) if resolution else None),
        ("camera", camera),
        ("scene", scene_name),
        ("autoexec", True if settings.enable_autoexec else None),
        ("color_mode", color_mode),
        ("color_depth", None if color_depth is None else str(color_depth)),
    ):
        if value is not None:
            overrides[key] = value
    if allow_missing:  # the worker's own check (blender/dependencies.py) too
        overrides["allow_missing"] = True
    numbers = parse_frames(frames)
    fps = settings.fps
    if fps is not None and not settings.preview_video:
        raise FarmError("--fps is the preview video's frame rate: give --preview-video too")
    rate = video_rate(target, fps) if settings.preview_video else None
    # Every limit is checked before the tasks are built: an absurd job is one line at once.
    count = blender_jobs.check_render_size(
        len(numbers),
        chunk=chunk,
        tiles=tiles,
        sample_split=sample_split,
        resolution=resolution,
        samples=samples,
    )

    def plan(some: list[int]) -> list[dict[str, Any]]:
        return blender_jobs.plan_render(
            relative,
            some,
            chunk=chunk,
            output=output,
            file_format=file_format,
            settings=overrides,
            tiles=tiles,
            sample_split=sample_split,
            preview_video=rate is not None,
            fps=rate or 24,
        )

    sample = plan(numbers[: max(chunk, 1)])
    protocol.check_request_size(
        len(protocol.pack(sample)) * count // len(sample),
        count,
        "render more frames per task (--chunk), or fewer frames or tiles",
    )
    job.extend("blender", plan(numbers))
    job.name = f"{relative} frames {frames}"
    job.meta.update(
        {
            "scene": relative,
            "frames": frames,
            "output": output,
            "format": written_as,
            "blend_version": saved_with,
            "fps": rate or video_rate(target, fps),
            **({"scene_name": scene_name} if scene_name else {}),
            **video_meta(output, rate),
        }
    )


def blender_pin(pin: str | None, saved_with: str, scene: str) -> list[str]:
    """The requirement a ``blender_version`` pin adds (``blender==4.5``), checked here: a
    version number, and one that can open the file."""
    if not pin:
        return []
    pin = pin.strip()
    numbers = pin.split(".")
    if not 1 <= len(numbers) <= 3 or not all(n.isascii() and n.isdigit() for n in numbers):
        raise FarmError(f"blender version {pin!r}: give a version such as 4.5 or 4.5.15")
    wanted = tuple(int(n) for n in numbers[:2])
    saved = tuple(int(n) for n in saved_with.split(".")[:2] if n.isdigit())
    if wanted < saved:
        raise FarmError(
            f"{scene} was saved by Blender {saved_with}: Blender {pin} cannot open it "
            f"(pin {saved_with} or newer)"
        )
    return [f"blender=={pin}"]


def output_options(
    target: SceneInfo,
    output: str | None,
    file_format: str | None,
    color_mode: str | None,
    color_depth: str | int | None,
    in_parts: bool,
) -> tuple[str | None, str]:
    """Check a render's output options against the scene's own output settings (read from
    the .blend without Blender); return the format to ask for (None: the scene's) and what
    the frames will be written as, for the job's record. Raises FarmError with one line."""
    from buildcat.blender import output_settings
    from buildcat.jobs import blender as blender_jobs

    if file_format is not None:
        file_format = file_format.upper()
    depth = None if color_depth is None else str(color_depth)
    scene = target.output
    _, extension = output_settings.split_extension(output or "")
    if extension and file_format is None:
        formats = output_settings.PATTERN_EXTENSIONS[extension]
        if scene.file_format not in formats:
            raise FarmError(
                f"output {output!r} ends in {extension} but the scene writes "
                f"{scene.file_format}: give --format {formats[0]} or drop the extension"
            )
    effective = output_settings.check_options(file_format, color_mode, depth, scene)
    if in_parts and effective == "OPEN_EXR_MULTILAYER":
        raise FarmError(blender_jobs.MULTILAYER_PARTS)
    if output is not None:
        blender_jobs.strip_output_extension(output, effective)
    return file_format, effective or "the scene's own"


def video_rate(target: SceneInfo, fps: float | str | None) -> str:
    """The preview video's frame rate: ``fps``, else the scene's own (``fps / fps_base``)."""
    from buildcat.ffmpeg import frame_rate

    rate = frame_rate(fps if fps is not None else target.fps / target.fps_base)
    return f"{rate.numerator}/{rate.denominator}"


def video_meta(output: str, rate: str | None) -> dict[str, Any]:
    from buildcat.jobs import video

    if rate is None:
        return {}
    return {"preview_video": video.video_path(output)}
