"""The ``farm`` command (also ``buildcat``): parses, calls the Python API, prints.

One module per kind of command: ``roles`` (server, worker, demo), ``submitting``
(submit python, submit blender, check), ``commands`` (submit command, submit script),
``jobtypes`` (job-types, submit TYPE), ``watching`` (status, wait, logs, cancel ...),
``jobs`` (archive, unarchive, delete, requeue: tidying the list, rerunning a task),
``workers`` (workers, worker-drain, worker-disable, worker-enable, worker-requeue,
worker-forget, worker-schedule),
``events`` (events, notices: the farm followed by scripts), ``media`` (video,
contact-sheet), ``paths`` (the path map), ``tokens`` (people's named tokens, whoami)
and ``addon`` (the Blender add-on); ``base``
holds the group and the options they share."""

from buildcat.cli import (
    addon,
    commands,
    events,
    jobs,
    jobtypes,
    media,
    paths,
    roles,
    submitting,
    tokens,
    watching,
    workers,
)
from buildcat.cli.base import main

__all__ = [
    "addon", "commands", "events", "jobs", "jobtypes", "main", "media", "paths", "roles",
    "submitting", "tokens", "watching", "workers",
]  # fmt: skip
