"""What people look at: the dashboard page, its live event stream, frame thumbnails and
``/metrics``. The page is static (no build step); it reads the same JSON API as scripts.

A browser logs in once with the dashboard link (``/login?key=…``, printed by the server
and by ``farm dashboard``); the key, derived from the farm secret and a revocable salt,
buys a cookie of its own (neither the key nor the secret) that may read the farm and
steer jobs but not submit work or act as a worker. Everything the cookie reads has the
secret masked; thumbnails read only regular files, in threads of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import re
import secrets
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

import buildcat
from buildcat import auth, protocol
from buildcat.errors import FarmError
from buildcat.root import resolve
from buildcat.server import metrics
from buildcat.server.scheduler import FINAL_JOB_STATES, TaskState

if TYPE_CHECKING:
    from buildcat.server.app import Farm

log = logging.getLogger(__name__)

API = protocol.API_PREFIX
#: The dashboard cookie's name, followed by the farm's port (one per farm on a host).
COOKIE = "buildcat_dashboard"
#: Header every dashboard POST carries: a cross-site form cannot set it.
CSRF_HEADER = "X-Buildcat-Dashboard"
#: Jobs sent with each live update: every unfinished one plus this many recent others.
RECENT_JOBS = 50
#: Live updates go out at most this often, however busy the farm.
UPDATE_INTERVAL = 0.3
HEARTBEAT_SECONDS = 15.0
#: Thumbnails are served for these formats only (what a browser shows).
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
ASSET_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
               ".svg": "image/svg+xml", ".png": "image/png"}  # fmt: skip

#: Routes a dashboard cookie may use, besides the page itself: reading, and steering jobs.
_COOKIE_GET = re.compile(rf"^({API}/(ping|events|jobs|workers|jobs/[^/]+(/tasks|/thumbnail)?"
                         rf"|tasks/[^/]+)|/metrics)$")  # fmt: skip
_COOKIE_POST = re.compile(rf"^{API}/jobs/[^/]+/(cancel|pause|resume|retry|priority)$")
_PUBLIC = re.compile(r"^/(|login|dashboard/[A-Za-z0-9_.-]+)$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def dashboard_url(scheme: str, host: str, port: int, farm: Farm) -> str:
    key = auth.dashboard_key(farm.secret, farm.dashboard_salt)
    return f"{scheme}://{host}:{port}/login?key={key}"


def cookie_name(farm: Farm) -> str:
    """One cookie per farm on a host: cookies ignore ports, so two farms' dashboards on
    one host must not overwrite (or be sent) each other's under one name."""
    return f"{COOKIE}_{farm.port}"


def load_dashboard_salt(root: Path) -> str:
    try:
        return auth.ensure_dashboard_salt(root)
    except FarmError as exc:  # a root the server cannot write: this run only
        log.warning("%s: dashboard links and cookies last until the server stops", exc)
        return secrets.token_urlsafe(16)


def _cookie_valid(request: web.Request, farm: Farm) -> bool:
    value = request.cookies.get(cookie_name(farm), "")
    return bool(value) and auth.session_cookie_valid(
        value, farm.secret, farm.dashboard_salt, time.time()
    )


def access(request: web.Request, farm: Farm) -> str:
    """``"member"`` (the farm secret), ``"dashboard"`` (the cookie), ``"public"`` or ``""``."""
    if auth.token_matches(request.headers.get("Authorization"), farm.secret):
        return "member"
    path = request.path
    if request.method in ("GET", "HEAD") and _PUBLIC.match(path):
        return "public"
    if _cookie_valid(request, farm):
        if request.method in ("GET", "HEAD") and _COOKIE_GET.match(path):
            return "dashboard"
        if (
            request.method == "POST"
            and _COOKIE_POST.match(path)
            and request.headers.get(CSRF_HEADER) == "1"
        ):
            return "dashboard"
    return ""


# ---- the page -----------------------------------------------------------------------------


def _asset(name: str) -> bytes:
    return resources.files("buildcat.server").joinpath("dashboard", name).read_bytes()


async def index(request: web.Request) -> web.StreamResponse:
    if not _cookie_valid(request, _farm(request)):
        return web.Response(text=_asset("login.html").decode(), content_type="text/html")
    return web.Response(
        body=_asset("index.html"),
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    try:
        body = _asset(name)
    except (FileNotFoundError, IsADirectoryError):
        raise web.HTTPNotFound() from None
    content_type = ASSET_TYPES.get(Path(name).suffix) or "application/octet-stream"
    return web.Response(body=body, content_type=content_type)


async def login(request: web.Request) -> web.StreamResponse:
    farm = _farm(request)
    key = request.query.get("key", "")
    if not auth.dashboard_key_matches(key, farm.secret, farm.dashboard_salt):
        return web.Response(
            status=401,
            text=_asset("login.html").decode().replace("<!--error-->", _LOGIN_ERROR),
            content_type="text/html",
        )
    response = web.HTTPSeeOther("/")
    expires = int(time.time()) + auth.SESSION_SECONDS
    response.set_cookie(
        cookie_name(farm),
        auth.session_cookie(farm.secret, farm.dashboard_salt, expires),
        httponly=True,  # no script reads it, this page's or another port's
        samesite="Strict",  # no other site's page sends it
        secure=request.secure,
        max_age=auth.SESSION_SECONDS,
        path="/",
    )
    raise response


async def dashboard_link(request: web.Request) -> web.StreamResponse:
    """Members only: the key of the dashboard's login link (``farm dashboard``)."""
    from buildcat.server.app import _reply

    farm = _farm(request)
    key = auth.dashboard_key(farm.secret, farm.dashboard_salt)
    return _reply(request, {"key": key, "cookie": cookie_name(farm)})


async def revoke_dashboard(request: web.Request) -> web.StreamResponse:
    """Members only: a new salt, so every login link and every browser's cookie stops
    working at once; the farm secret stays as it is (``farm dashboard --revoke``)."""
    from buildcat.server.app import _body, _reply

    farm = _farm(request)
    await _body(request)  # a body that is not a map refuses, and changes nothing
    farm.dashboard_salt = auth.new_dashboard_salt(farm.config.root)
    log.warning("dashboard revoked: every login link and browser cookie is dead")
    key = auth.dashboard_key(farm.secret, farm.dashboard_salt)
    return _reply(request, {"key": key, "cookie": cookie_name(farm)})


_LOGIN_ERROR = '<p class="error">That link is not this farm\'s: get a fresh one.</p>'


# ---- live updates ---------------------------------------------------------------------------


def overview(farm: Farm) -> dict[str, Any]:
    """Everything the dashboard's lists show, in one document."""
    from buildcat.server.app import _job_view

    scheduler = farm.scheduler
    jobs = list(scheduler.jobs.values())
    active = [job for job in jobs if job.state not in FINAL_JOB_STATES]
    finished = [job for job in jobs if job.state in FINAL_JOB_STATES]
    finished.sort(key=lambda job: job.finished_at or 0, reverse=True)
    shown = sorted(active, key=lambda job: job.order_key) + finished[:RECENT_JOBS]
    views = []
    for job in shown:
        view = _job_view(farm, job.id)
        view.pop("traceback", None)
        view["thumbnail"] = _last_frame(job) is not None
        views.append(view)
    workers = []
    for worker in sorted(scheduler.workers.values(), key=lambda w: w.name):
        view = worker.to_dict()
        view["current"] = [
            {"id": task.id, "label": task.payload.get("label", ""), "progress": task.progress}
            for task in sorted(worker.leased, key=lambda t: t.id)
        ]
        workers.append(view)
    return {
        "farm": {"name": farm.config.name, "version": buildcat.__version__},
        "time": time.time(),
        "jobs": views,
        "more_jobs": max(0, len(finished) - RECENT_JOBS),
        "workers": workers,
    }


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: an ``update`` with the overview whenever the farm changes."""
    farm = _farm(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    farm.listeners += 1
    sent = ""
    try:
        while True:
            changed = farm.update_event
            document = overview(farm)
            moment = document.pop("time")
            data = json.dumps(document, default=str, separators=(",", ":"))
            if data != sent:  # heartbeats and lease renewals alone change nothing shown
                sent = data
                message = f'{data[:-1]},"time":{moment}}}'
                update = f"event: update\ndata: {message}\n\n".encode()
                await response.write(auth.redact_bytes(update, farm.secret))
            try:
                await asyncio.wait_for(changed.wait(), HEARTBEAT_SECONDS)
            except TimeoutError:
                await response.write(b": still here\n\n")
                continue
            await asyncio.sleep(UPDATE_INTERVAL)  # many changes, one update
    finally:
        farm.listeners -= 1


# ---- thumbnails and metrics ---------------------------------------------------------------


def _last_frame(job: Any) -> str | None:
    """The root-relative path of the job's most recently finished image a browser can show."""
    best: tuple[float, str] | None = None
    for task in job.tasks:
        if task.state is not TaskState.DONE or not isinstance(task.result, dict):
            continue
        outputs = task.result.get("outputs")
        if not isinstance(outputs, list) or not outputs:
            continue
        path = outputs[-1]
        if isinstance(path, str) and Path(path).suffix.lower() in IMAGE_TYPES:
            when = task.finished_at or 0.0
            if best is None or when >= best[0]:
                best = (when, path)
    return best[1] if best else None


class ThumbnailError(Exception):
    """The frame a task named cannot be shown: its reason, for the answer."""


#: Thumbnails read files that task results name (whatever a job says), so they read in
#: threads of their own, never the loop's shared pool the journal's fsyncs use: a FIFO or
#: a hung NFS file costs a thumbnail thread, never a submit.
THUMBNAIL_THREADS = 2
#: Reads waiting or running at once; beyond that a thumbnail answers 503 at once.
THUMBNAIL_QUEUE = 16
THUMBNAIL_TIMEOUT = 5.0
MAX_THUMBNAIL_BYTES = 64 * 1024 * 1024


def read_regular_file(path: Path, limit: int = MAX_THUMBNAIL_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes. Opened
    without blocking and checked on the open descriptor: a FIFO, a device or a socket is
    refused without waiting for a writer, and nothing can swap the file in between."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ThumbnailError(f"cannot open it: {exc.strerror}") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ThumbnailError("it is not a regular file")
        if info.st_size > limit:
            raise ThumbnailError(f"it is larger than {limit:,} bytes")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ThumbnailError(f"it is larger than {limit:,} bytes")
    return data


class ThumbnailReader:
    """A few daemon threads and a bounded queue: a read stuck in the kernel holds one
    thread (and does not hold up the server's exit); once every place is taken, new
    thumbnails are refused at once instead of queueing behind it."""

    def __init__(self, threads: int = THUMBNAIL_THREADS, places: int = THUMBNAIL_QUEUE) -> None:
        self.places = threading.BoundedSemaphore(places)
        self.work: queue.SimpleQueue[tuple[Path, asyncio.Future[bytes]]] = queue.SimpleQueue()
        for number in range(threads):
            threading.Thread(
                target=self._run, name=f"buildcat-thumbnail-{number}", daemon=True
            ).start()

    def _run(self) -> None:
        while True:
            path, future = self.work.get()
            loop = future.get_loop()
            try:
                outcome: bytes | BaseException = read_regular_file(path)
            except BaseException as exc:  # handed to the request, which words it
                outcome = exc
            finally:
                self.places.release()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, future, outcome)

    async def read(self, path: Path, timeout: float = THUMBNAIL_TIMEOUT) -> bytes:
        if not self.places.acquire(blocking=False):
            raise web.HTTPServiceUnavailable(reason="thumbnails are busy: try again shortly")
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.work.put((path, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise web.HTTPGatewayTimeout(
                reason=f"reading the frame took more than {timeout:g}s"
            ) from None


def _settle(future: asyncio.Future[bytes], outcome: bytes | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


_reader: list[ThumbnailReader] = []


def thumbnail_reader() -> ThumbnailReader:
    if not _reader:
        _reader.append(ThumbnailReader())
    return _reader[0]


async def thumbnail(request: web.Request) -> web.StreamResponse:
    farm = _farm(request)
    job = farm.scheduler.job(request.match_info["job"])
    relative = _last_frame(job)
    if relative is None:
        raise web.HTTPNotFound(reason=f"job {job.id} has no finished frame a browser can show")
    try:
        path = resolve(farm.config.root, relative)
        body = await thumbnail_reader().read(path)
    except (FarmError, ThumbnailError) as exc:
        raise web.HTTPNotFound(reason=f"the frame {relative} is not readable: {exc}") from None
    return web.Response(
        body=body,
        content_type=IMAGE_TYPES[path.suffix.lower()],
        headers={"Cache-Control": "no-store", "X-Buildcat-Frame": relative},
    )


async def metrics_text(request: web.Request) -> web.StreamResponse:
    farm = _farm(request)
    text = metrics.render(farm.scheduler, started_at=farm.started_at, version=buildcat.__version__)
    return web.Response(
        text=text, content_type="text/plain", charset="utf-8", headers={"X-Format": "0.0.4"}
    )


def _farm(request: web.Request) -> Farm:
    from buildcat.server.app import FARM_KEY

    return request.app[FARM_KEY]


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/login", login)
    app.router.add_get("/dashboard/{name}", asset)
    app.router.add_get(f"{API}/events", events)
    app.router.add_get(f"{API}/jobs/{{job}}/thumbnail", thumbnail)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get(f"{API}/dashboard", dashboard_link)
    app.router.add_post(f"{API}/dashboard/revoke", revoke_dashboard)
