"""The ``farm`` command (also ``buildcat``): parses, calls the Python API, prints.

One module per kind of command: ``roles`` (server, worker, demo), ``submitting``
(submit ..., check), ``watching`` (status, wait, logs, cancel ...) and ``events``
(events, notices: the farm followed by scripts); ``base`` holds the group and the
options they share."""

from buildcat.cli import events, roles, submitting, watching
from buildcat.cli.base import main

__all__ = ["events", "main", "roles", "submitting", "watching"]
