"""The ``farm`` command (also ``buildcat``): parses, calls the Python API, prints.

One module per kind of command: ``roles`` (server, worker, demo), ``submitting``
(submit ..., check), ``commands`` (submit command, submit script) and ``watching``
(status, wait, logs, cancel ...); ``base`` holds the group and the options they share."""

from buildcat.cli import commands, roles, submitting, watching
from buildcat.cli.base import main

__all__ = ["commands", "main", "roles", "submitting", "watching"]
