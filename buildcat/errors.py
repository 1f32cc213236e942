"""The one exception hierarchy: user mistakes are FarmError and become one clear line."""

from __future__ import annotations


class FarmError(Exception):
    """Base of every error buildcat raises on purpose."""


class FrameSpecError(FarmError, ValueError):
    """A frame spec such as ``1-10:2`` could not be parsed."""


class PathError(FarmError, ValueError):
    """A path is absolute or escapes the farm root."""


class AddressError(FarmError, ValueError):
    """A farm address (``--host``) could not be understood."""


class LimitError(FarmError, ValueError):
    """A job over one of the documented limits (tasks, request size, tiles, resolution),
    refused before anything is built or sent."""


class ProtocolError(FarmError):
    """A message on the wire is malformed."""


class ConnectionFailed(FarmError):
    """The server could not be reached."""


class RequestRejected(FarmError):
    """The server answered with a 4xx; the message is its reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class NotAuthorized(RequestRejected):
    """The server refused the farm secret (HTTP 401)."""


class UnknownJob(RequestRejected):
    """No job with that id exists on the server."""


class JobFailed(FarmError):
    """A job ended failed or cancelled; carries the remote error and traceback."""

    def __init__(self, job_id: str, state: str, error: str = "", traceback: str = "") -> None:
        detail = f": {error}" if error else ""
        super().__init__(f"job {job_id} {state}{detail}")
        self.job_id = job_id
        self.state = state
        self.error = error
        self.traceback = traceback


class JobFault(FarmError):
    """Raised by a task when the job itself is wrong (a scene or camera the file lacks, a
    .blend that is not one, input a Python job cannot use): any attempt on any worker would
    fail the same way. The job fails at once with this reason; the task is not retried and
    no worker is blocked or counted as failing. A job function may raise it too."""


class JobTimeout(FarmError, TimeoutError):
    """``Job.wait`` ran past its timeout; the job goes on."""
