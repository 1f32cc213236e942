"""``GET /api/v1/job-types``: the job types under the server's root and their settings, for
forms (the dashboard, the Blender add-on).

Job-type code never runs in the server process: the declarations are read by a child
(``python -m buildcat.jobtypes describe ROOT``) with a timeout, and the answer is kept
until a file in ``<root>/jobtypes/`` changes (name, mtime, size).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from buildcat import protocol
from buildcat.errors import FarmError
from buildcat.jobtypes import child, loading

log = logging.getLogger(__name__)


class JobTypeListing:
    """The root's job types as data, read by a child process and cached by file stamps."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._cached: tuple[Any, list[dict[str, Any]]] | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> list[dict[str, Any]]:
        async with self._lock:  # one child at a time, however many ask
            key = loading.signature(self.root)
            if self._cached is None or self._cached[0] != key:
                self._cached = (key, await self._describe())
            return self._cached[1]

    async def _describe(self) -> list[dict[str, Any]]:
        process = await asyncio.create_subprocess_exec(
            *child.command("describe", self.root),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child.environment(),
        )
        try:
            out, err = await asyncio.wait_for(
                process.communicate(), child.describe_timeout(self.root)
            )
        except TimeoutError:
            process.kill()
            await process.wait()
            log.error("reading the job types in %s took too long", loading.folder(self.root))
            raise web.HTTPServiceUnavailable(reason="reading the job types took too long") from None
        try:
            listing = child.read_describe(process.returncode or 0, out, err)
        except FarmError as exc:
            log.error("reading the job types failed: %s", exc)
            raise web.HTTPServiceUnavailable(reason=str(exc).splitlines()[0]) from None
        broken = [entry["name"] for entry in listing if "error" in entry]
        if broken:
            log.warning("job types that do not load: %s", ", ".join(broken))
        return listing


LISTING_KEY = web.AppKey("job_types", JobTypeListing)
Reply = Callable[[web.Request, Any], web.Response]


def add_routes(app: web.Application, root: str | os.PathLike[str], reply: Reply) -> None:
    """``GET /api/v1/job-types``, answered through ``reply`` (the app's own encoder: JSON
    or msgpack as the request accepts)."""
    app[LISTING_KEY] = JobTypeListing(root)

    async def list_job_types(request: web.Request) -> web.Response:
        return reply(request, {"job_types": await request.app[LISTING_KEY].get()})

    app.router.add_get(f"{protocol.API_PREFIX}/job-types", list_job_types)
