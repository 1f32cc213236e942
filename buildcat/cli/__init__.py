"""The ``farm`` command (also ``buildcat``): parses, calls the Python API, prints.

One module per kind of command: ``roles`` (server, worker, demo), ``submitting``
(submit ..., check) and ``watching`` (status, wait, logs, cancel ...); ``base`` holds the
group and the options they share; ``jobtypes`` (job-types, submit TYPE) the job types."""

from buildcat.cli import jobtypes, roles, submitting, watching
from buildcat.cli.base import main

__all__ = ["jobtypes", "main", "roles", "submitting", "watching"]
