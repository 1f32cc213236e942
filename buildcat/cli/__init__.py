"""The ``farm`` command (also ``buildcat``): parses, calls the Python API, prints.

One module per kind of command: ``roles`` (server, worker, demo), ``submitting``
(submit python, submit blender, check), ``commands`` (submit command, submit script),
``jobtypes`` (job-types, submit TYPE), ``watching`` (status, wait, logs, cancel ...) and
``events`` (events, notices: the farm followed by scripts); ``base`` holds the group and
the options they share."""

from buildcat.cli import commands, events, jobtypes, roles, submitting, watching
from buildcat.cli.base import main

__all__ = ["commands", "events", "jobtypes", "main", "roles", "submitting", "watching"]
