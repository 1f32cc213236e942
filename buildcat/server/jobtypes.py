"""``GET /api/v1/job-types``: the job types under the server's root and their settings, for
forms (the dashboard, the Blender add-on); ``POST /api/v1/job-types/{name}/plan``: the
tasks a job type makes of some settings, for clients that cannot run buildcat (the add-on).

Job-type code never runs in the server process: the declarations are read by a child
(``python -m buildcat.jobtypes describe ROOT``) with a timeout, and the answer is kept
until a file in ``<root>/jobtypes/`` changes (name, mtime, size). A plan is made by a
child too (``... compile ROOT NAME``), built-ins included (reading a .blend takes time).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from buildcat import protocol
from buildcat.errors import FarmError
from buildcat.jobtypes import child, loading
from buildcat.server.replies import read_body, respond

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


#: Plans made at once: each is a child process.
PLANS_AT_ONCE = 2


class JobTypePlanner:
    """Plans made by ``python -m buildcat.jobtypes compile`` children, a few at a time."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._slots = asyncio.Semaphore(PLANS_AT_ONCE)

    async def plan(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        """The plan of ``name`` for ``settings``; raises FarmError (a 400) with the job
        type's refusal (SettingError, JobTypeBroken or its own one line)."""
        limit = loading.LOAD_SECONDS + loading.compile_seconds() + child.SLACK_SECONDS
        async with self._slots:
            process = await asyncio.create_subprocess_exec(
                *child.command("compile", self.root, name),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=child.environment(),
            )
            try:
                out, err = await asyncio.wait_for(
                    process.communicate(protocol.pack({"settings": settings})), limit
                )
            except TimeoutError:
                process.kill()
                await process.wait()
                raise FarmError(
                    f"job type {name!r} is broken: it ran past {limit:g} s and was stopped"
                ) from None
        reply = child.read_compile(process.returncode or 0, out, err, name)
        log.info("planned job type %s: %d task(s)", name, len(reply.get("tasks", ())))
        return reply


LISTING_KEY = web.AppKey("job_types", JobTypeListing)
PLANNER_KEY = web.AppKey("job_type_planner", JobTypePlanner)


def add_routes(app: web.Application, root: str | os.PathLike[str]) -> None:
    """``GET /api/v1/job-types`` and ``POST /api/v1/job-types/{name}/plan`` (JSON or
    msgpack, as the request speaks)."""
    app[LISTING_KEY] = JobTypeListing(root)
    app[PLANNER_KEY] = JobTypePlanner(root)

    async def list_job_types(request: web.Request) -> web.Response:
        return respond(request, {"job_types": await request.app[LISTING_KEY].get()})

    async def plan_job_type(request: web.Request) -> web.Response:
        body = await read_body(request)
        settings = body.get("settings", {})
        if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
            raise FarmError("'settings' must be a map of setting names to values")
        name = request.match_info["name"]
        return respond(request, await request.app[PLANNER_KEY].plan(name, settings))

    app.router.add_get(f"{protocol.API_PREFIX}/job-types", list_job_types)
    app.router.add_post(f"{protocol.API_PREFIX}/job-types/{{name}}/plan", plan_job_type)
