"""buildcat: a render farm in one command.

>>> import buildcat
>>> farm = buildcat.connect(host="127.0.0.1", port=8765, root="/mnt/farm")
>>> farm.map("mymodule:square", [1, 2, 3]).results()
"""

from __future__ import annotations

__version__ = "0.1.0"

from buildcat.client import Client, Job, connect
from buildcat.errors import (
    ConnectionFailed,
    FarmError,
    FrameSpecError,
    JobFailed,
    JobFault,
    JobTimeout,
    LimitError,
    NotAuthorized,
    PathError,
    RequestRejected,
    UnknownJob,
)
from buildcat.jobs.context import TaskCancelled, path, progress

__all__ = [
    "Client",
    "ConnectionFailed",
    "FarmError",
    "FrameSpecError",
    "Job",
    "JobFailed",
    "JobFault",
    "JobTimeout",
    "LimitError",
    "NotAuthorized",
    "PathError",
    "RequestRejected",
    "TaskCancelled",
    "UnknownJob",
    "__version__",
    "connect",
    "path",
    "progress",
]
