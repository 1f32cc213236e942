"""Render, denoise every frame, then make a preview video.

Copy this file to <root>/jobtypes/ and submit it:

    farm submit render_denoise_video --set scene=shots/a.blend --set frames=1-48

Each frame is rendered by Blender, then denoised by ffmpeg's hqdn3d filter as soon as it
is there; the video waits for every denoised frame. Frames must be consecutive (ffmpeg
reads them as one numbered sequence).
"""

from buildcat.frames import parse_frames
from buildcat.jobs.blender import frame_path
from buildcat.jobtypes import Setting

LABEL = "Render + denoise + video"

SETTINGS = [
    Setting("scene", "path", required=True, help="The .blend, relative to the farm root."),
    Setting("frames", "frames", default="1-24", help="Consecutive frames to render."),
    Setting("fps", "int", default=24, minimum=1, maximum=120, help="Video frame rate."),
    Setting(
        "strength",
        "choice",
        choices=["light", "medium", "strong"],
        default="medium",
        help="How hard ffmpeg's hqdn3d denoiser works.",
    ),
]

#: hqdn3d's luma_spatial:chroma_spatial:luma_tmp:chroma_tmp for each strength
FILTERS = {"light": "2:1.5:3:2.25", "medium": "4:3:6:4.5", "strong": "8:6:12:9"}


def compile(settings, job):
    frames = parse_frames(settings.frames)
    shot = settings.scene.rsplit("/", 1)[-1].removesuffix(".blend")
    folder = f"renders/{shot}"
    output = f"{folder}/frame_####"
    # One Blender task per frame (chunk 1), so each frame's denoise can start at once.
    rendered = job.render(settings.scene, frames, output=output, file_format="PNG")
    denoised = []
    for task, frame in zip(rendered, frames, strict=True):
        source = frame_path(output, frame, ".png")
        target = f"{folder}/denoised_{frame:04d}.png"
        denoised.append(
            job.command(
                ["ffmpeg", "-y", "-loglevel", "error", "-i", source,
                 "-vf", f"hqdn3d={FILTERS[settings.strength]}", target],
                frames=[frame],
                depends=[task],
            )
        )  # fmt: skip
    job.command(
        ["ffmpeg", "-y", "-loglevel", "error", "-framerate", str(settings.fps),
         "-start_number", str(frames[0]), "-i", f"{folder}/denoised_%04d.png",
         "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
         f"{folder}/preview.mp4"],
        frames=frames,
        depends=denoised,
    )  # fmt: skip
    job.name = f"{settings.scene} {settings.frames}, denoised, with video"
