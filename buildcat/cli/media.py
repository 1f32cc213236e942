"""What a render leaves to look at: `farm video` and `farm contact-sheet`."""

from __future__ import annotations

import click

from buildcat.cli.base import client_options, main, print_json, submitted
from buildcat.client import Client


@main.command()
@click.argument("job_id", metavar="JOB")
@click.option(
    "--fps",
    default=None,
    metavar="RATE",
    help="Frame rate (24, 30000/1001) [default: the render's, else its scene's].",
)
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first.")
@click.option("--wait", "wait", is_flag=True, help="Wait for the video, showing progress.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@client_options
def video(
    client: Client, job_id: str, fps: str | None, priority: int, wait: bool, as_json: bool
) -> None:
    """Make preview.mp4 of render JOB's frames (those written so far), beside them.

    Runs on the farm as a job of one task (a worker with ffmpeg); prints its id.
    """
    submitted(client.video(job_id, fps=fps, priority=priority), as_json, wait)


@main.command("contact-sheet")
@click.argument("job_id", metavar="JOB")
@click.option(
    "-o",
    "--output",
    default=None,
    metavar="PATH",
    help="Where to write it, relative to the root [default: contact-sheet.png beside the frames].",
)
@click.option(
    "--columns",
    type=click.IntRange(min=1),
    default=None,
    help="Thumbnails a row [default: square].",
)
@click.option(
    "--width",
    type=click.IntRange(min=8, max=4096),
    default=160,
    show_default=True,
    help="Thumbnail width in pixels.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@client_options
def contact_sheet(
    client: Client,
    job_id: str,
    output: str | None,
    columns: int | None,
    width: int,
    as_json: bool,
) -> None:
    """Make a contact sheet of render JOB's frames here: thumbnails in frame order, each
    with its frame number; prints the path it wrote (root-relative)."""
    sheet = client.contact_sheet(job_id, output=output, columns=columns, width=width)
    if as_json:
        print_json(sheet)
    else:
        click.echo(str(client.root / sheet["path"]))
