"""The ``farm`` command (also ``buildcat``): parses, calls the Python API, prints.

One module per kind of command: ``roles`` (server, worker, demo), ``submitting``
(submit ..., check), ``watching`` (status, wait, logs, cancel ...) and ``media`` (video,
contact-sheet); ``base`` holds the group and the options they share."""

from buildcat.cli import media, roles, submitting, watching
from buildcat.cli.base import main

__all__ = ["main", "media", "roles", "submitting", "watching"]
