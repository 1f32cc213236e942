"""What people look at: the dashboard page, its live event stream, frame thumbnails and
``/metrics``. The page is static (no build step); it reads the same JSON API as scripts.

A browser logs in once with the dashboard link (``/login?key=…``, printed by the server
and by ``farm dashboard``); the key, derived from the farm secret and a revocable salt,
buys a cookie of its own (neither the key nor the secret) that may read the farm and
steer jobs but not submit work or act as a worker; a named token (``/login?token=…``)
buys one that does what its role may (a viewer reads). Everything the cookie reads has
the secret masked; thumbnails read only regular files, in threads of their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
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
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

import buildcat
from buildcat import auth, platform, protocol
from buildcat.errors import FarmError, ProtocolError
from buildcat.root import resolve, state_dir
from buildcat.server import metrics, tokens, views
from buildcat.server.farm import VIA_KEY, Able, Caller, Farm, farm_of, unmet
from buildcat.server.replies import read_body, respond
from buildcat.server.scheduler import FINAL_JOB_STATES, Job, Task, TaskState

log = logging.getLogger(__name__)

API = protocol.API_PREFIX
#: The dashboard cookie's name, followed by the farm's port (one per farm on a host).
COOKIE = "buildcat_dashboard"
#: Header every dashboard POST carries: a cross-site form cannot set it.
CSRF_HEADER = "X-Buildcat-Dashboard"
#: Jobs sent with each live update: the first unfinished ones in dispatch order and the
#: most recently finished (the page lists jobs from ``GET /api/v1/jobs`` in pages; the
#: update tells it what changed, at a size that does not grow with the queue).
ACTIVE_JOBS = 200
RECENT_JOBS = 50
#: Live updates go out at most this often, however busy the farm.
UPDATE_INTERVAL = 0.3
HEARTBEAT_SECONDS = 15.0
#: Thumbnails are served for these formats only (what a browser shows).
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
ASSET_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
               ".svg": "image/svg+xml", ".png": "image/png"}  # fmt: skip

#: Routes a dashboard cookie may use, besides the page itself: reading, and steering jobs
#: and workers (what its role allows of these: server/rights.py).
_COOKIE_GET = re.compile(rf"^({API}/(ping|whoami|events|jobs|workers|job-types|jobs/[^/]+(/tasks"
                         rf"|/thumbnail|/frames|/media(/video|/contact-sheet)?)?"
                         rf"|tasks/[^/]+(/log|/image)?)|/metrics)$")  # fmt: skip
_COOKIE_POST = re.compile(rf"^{API}/(jobs/[^/]+/(cancel|pause|resume|retry|priority|archive"
                          rf"|unarchive)|tasks/[^/]+/requeue"
                          rf"|workers/[^/]+/(?!(lease|report|watch)$)[A-Za-z0-9_-]+)$")  # fmt: skip
_COOKIE_DELETE = re.compile(rf"^{API}/jobs/[^/]+$")
_PUBLIC = re.compile(r"^/(|login|dashboard/((css|js)/)?[A-Za-z0-9_-][A-Za-z0-9_.-]*)$")
#: With the farm secret: the person a request is made for (``farm`` sends ``$USER``).
USER_HEADER = "X-Buildcat-User"
#: Who the farm secret, and a cookie bought with the dashboard key, are.
SECRET_CALLER = Caller(tokens.SECRET_NAME, "admin", "secret")

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


def _cookie_caller(request: web.Request, farm: Farm) -> Caller | None:
    """Who bought the browser's cookie: the dashboard key (the farm secret's admin) or a
    named token still in the table; ``None`` for no cookie, or a dead one."""
    value = request.cookies.get(cookie_name(farm), "")
    if not value:
        return None
    now = time.time()
    named = auth.session_cookie_token(value)
    if named is None:
        valid = auth.session_cookie_valid(value, farm.secret, farm.dashboard_salt, now)
        return Caller(SECRET_CALLER.name, SECRET_CALLER.role, "dashboard") if valid else None
    token = farm.tokens.tokens.get(named[1])
    if token is None or not auth.token_session_cookie_valid(
        value, farm.secret, farm.dashboard_salt, now, token.name, token.sha256
    ):
        return None
    return Caller(token.name, token.role, "dashboard")


def _cookie_route(request: web.Request) -> bool:
    path, method = request.path, request.method
    if method in ("GET", "HEAD"):
        return bool(_COOKIE_GET.match(path))
    if request.headers.get(CSRF_HEADER) != "1":  # a cross-site form cannot set it
        return False
    return bool(
        (method == "POST" and _COOKIE_POST.match(path))
        or (method == "DELETE" and _COOKIE_DELETE.match(path))
    )


def access(request: web.Request, farm: Farm) -> Caller | str:
    """Who is calling: the farm secret's admin, a named token's person, a dashboard
    cookie's (on the routes a cookie may use); else ``"public"`` (the page, the login) or
    ``""`` (nobody: 401)."""
    header = request.headers.get("Authorization")
    if auth.token_matches(header, farm.secret):
        user = request.headers.get(USER_HEADER)
        if user is None:
            return SECRET_CALLER
        problem = tokens.name_problem(user)
        if problem:
            raise ProtocolError(f"{USER_HEADER} must name a person: {problem}")
        return Caller(user, "admin", "secret")
    token = farm.tokens.find(auth.bearer(header)) if header else None
    if token is not None:
        return Caller(token.name, token.role, "token")
    if request.method in ("GET", "HEAD") and _PUBLIC.match(request.path):
        return "public"
    if _cookie_route(request):
        caller = _cookie_caller(request, farm)
        if caller is not None:
            return caller
    return ""


# ---- the page -----------------------------------------------------------------------------


def _asset(name: str) -> bytes:
    return resources.files("buildcat.server").joinpath("dashboard", name).read_bytes()


async def index(request: web.Request) -> web.StreamResponse:
    if _cookie_caller(request, farm_of(request)) is None:
        return web.Response(text=_asset("login.html").decode(), content_type="text/html")
    return web.Response(
        body=_asset("index.html"),
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


async def asset(request: web.Request) -> web.StreamResponse:
    folder = request.match_info.get("folder")
    name = f"{folder}/{request.match_info['name']}" if folder else request.match_info["name"]
    if not _PUBLIC.match(f"/dashboard/{name}"):
        raise web.HTTPNotFound()
    try:
        body = _asset(name)
    except (FileNotFoundError, IsADirectoryError):
        raise web.HTTPNotFound() from None
    content_type = ASSET_TYPES.get(Path(name).suffix) or "application/octet-stream"
    # The page's files change with the release: a browser checks them on each load.
    return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "no-cache"})


async def login(request: web.Request) -> web.StreamResponse:
    """``/login?key=…`` (the dashboard key: the farm secret's admin) or ``/login?token=…``
    (a named token: what its role may do) buys the browser a cookie."""
    farm = farm_of(request)
    expires = int(time.time()) + auth.SESSION_SECONDS
    named = request.query.get("token")
    token = farm.tokens.find(named) if named is not None else None
    if token is not None:
        value = auth.token_session_cookie(
            farm.secret, farm.dashboard_salt, expires, token.name, token.sha256
        )
    elif named is None and auth.dashboard_key_matches(
        request.query.get("key", ""), farm.secret, farm.dashboard_salt
    ):
        value = auth.session_cookie(farm.secret, farm.dashboard_salt, expires)
    else:
        return web.Response(
            status=401,
            text=_asset("login.html").decode().replace("<!--error-->", _LOGIN_ERROR),
            content_type="text/html",
        )
    response = web.HTTPSeeOther("/")
    response.set_cookie(
        cookie_name(farm),
        value,
        httponly=True,  # no script reads it, this page's or another port's
        samesite="Strict",  # no other site's page sends it
        secure=request.secure,
        max_age=auth.SESSION_SECONDS,
        path="/",
    )
    raise response


async def dashboard_link(request: web.Request) -> web.StreamResponse:
    """Members only: the key of the dashboard's login link (``farm dashboard``)."""

    farm = farm_of(request)
    key = auth.dashboard_key(farm.secret, farm.dashboard_salt)
    return respond(request, {"key": key, "cookie": cookie_name(farm)})


async def revoke_dashboard(request: web.Request) -> web.StreamResponse:
    """Members only: a new salt, so every login link and every browser's cookie stops
    working at once; the farm secret stays as it is (``farm dashboard --revoke``)."""

    farm = farm_of(request)
    await read_body(request)  # a body that is not a map refuses, and changes nothing
    farm.dashboard_salt = auth.new_dashboard_salt(farm.config.root)
    request.app[OVERVIEW_KEY].wake()  # open dashboards' streams end now
    log.warning("dashboard revoked: every login link and browser cookie is dead")
    key = auth.dashboard_key(farm.secret, farm.dashboard_salt)
    return respond(request, {"key": key, "cookie": cookie_name(farm)})


_LOGIN_ERROR = '<p class="error">That link is not this farm\'s: get a fresh one.</p>'


# ---- live updates ---------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _JobSummary:
    """What the lists show of a job that depends on its tasks (frames done, whether it has
    a frame to show), brought up to date from the tasks finished since the last look
    (``Job.done_order``) rather than a pass over every task on every update."""

    counts_frames: bool
    frames_total: int = 0
    frames_done: set[Any] = field(default_factory=set)
    last_frame: str | None = None
    seen: int = 0
    #: The job's ``done_order`` when it was read: a requeue puts a new one in its place
    #: (frames done again are no longer done), and the summary starts over.
    order: Any = None

    @classmethod
    def of(cls, job: Job) -> _JobSummary:
        """The one full pass, when the dashboard first sees the job."""
        summary = cls(counts_frames="frames" in job.meta)
        if summary.counts_frames:
            every: set[Any] = set()
            for task in job.tasks:
                frames = views.final_frames(task)
                every.update(frames)
                if task.state is TaskState.DONE:
                    summary.frames_done.update(frames)
            summary.frames_total = len(every)
        summary.last_frame = _last_frame(job)
        summary.seen = len(job.done_order)
        summary.order = job.done_order
        return summary

    def update(self, job: Job) -> None:
        order = job.done_order
        for index in order[self.seen :]:
            task = job.tasks[index]
            if self.counts_frames:
                self.frames_done.update(views.final_frames(task))
            path = _image_output(task)
            if path is not None:
                self.last_frame = path
        self.seen = len(order)


class Overview:
    """The dashboard's lists, for every open event stream at once: made at most once per
    update tick and encoded once, however many people watch, at a cost that follows the
    jobs, workers and leases shown and the tasks finished since the last tick, never the
    number of tasks queued. One job or worker that cannot be encoded is shown with its
    odd values replaced (and says so); it never stops the stream."""

    def __init__(self) -> None:
        #: Open event streams, and overviews made since the server started (``/metrics``).
        self.streams = 0
        self.computed = 0
        #: The latest ``update`` event, and its number (streams send each number once).
        self.message = b""
        self.version = 0
        self.published = asyncio.Event()
        self._document = ""
        self._summaries: dict[str, _JobSummary] = {}
        self._task: asyncio.Task[None] | None = None
        self._failed = False

    def wake(self) -> None:
        """Wake every open stream without a new update: each looks again at whether its
        credential still lets it in (a token was revoked)."""
        published, self.published = self.published, asyncio.Event()
        published.set()

    def join(self, farm: Farm) -> None:
        self.streams += 1
        farm.listeners += 1
        if self._task is None:
            changed = farm.update_event  # before the overview: no change slips between
            self.publish(farm)
            self._task = asyncio.create_task(self._run(farm, changed))

    def leave(self, farm: Farm) -> None:
        self.streams -= 1
        farm.listeners -= 1
        if self.streams == 0 and self._task is not None:
            self._task.cancel()
            self._task = None
            self._document = ""
            self.message = b""

    async def _run(self, farm: Farm, changed: asyncio.Event) -> None:
        while True:
            await changed.wait()
            await asyncio.sleep(UPDATE_INTERVAL)  # many changes, one update
            changed = farm.update_event
            self.publish(farm)

    def publish(self, farm: Farm) -> None:
        """Make the overview; if anything shown changed, it becomes the next message."""
        self.computed += 1
        try:
            document = self.document(farm)
        except Exception:
            if not self._failed:  # a bug, not a job's data: say it once, keep the last update
                log.exception("dashboard: the overview could not be made")
            self._failed = True
            return
        self._failed = False
        if document == self._document:  # heartbeats and lease renewals change nothing shown
            return
        self._document = document
        message = f'event: update\ndata: {document[:-1]},"time":{time.time()}}}\n\n'.encode()
        self.message = auth.redact_bytes(message, farm.secret)  # what the cookie reads
        self.version += 1
        self.published.set()
        self.published = asyncio.Event()

    def document(self, farm: Farm) -> str:
        """Everything the dashboard's lists show, as one JSON document (without its time)."""
        scheduler = farm.scheduler
        jobs = scheduler.jobs
        for gone in [job_id for job_id in self._summaries if job_id not in jobs]:
            del self._summaries[gone]
        active = [job for job in jobs.values() if job.state not in FINAL_JOB_STATES]
        finished = [job for job in jobs.values() if job.state in FINAL_JOB_STATES]
        recent = heapq.nlargest(RECENT_JOBS, finished, key=lambda job: job.finished_at or 0)
        first = heapq.nsmallest(ACTIVE_JOBS, active, key=lambda job: job.order_key)
        shown = first + recent
        running = scheduler.running_progress()
        able: Able = {}  # each worker looked at once per distinct need, not once per job
        job_parts = [self._job(farm, job, running.get(job.id, 0.0), able) for job in shown]
        worker_parts = [
            views.encode_view(view, f"worker {view['name']!r}")
            for view in views.workers_view(scheduler)
        ]
        head = {"name": str(farm.config.name), "version": buildcat.__version__}
        return (
            f'{{"farm":{json.dumps(head)},"jobs":[{",".join(job_parts)}],'
            f'"more_jobs":{len(jobs) - len(shown)},"active_jobs":{len(active)},'
            f'"workers":[{",".join(worker_parts)}]}}'
        )

    def _job(self, farm: Farm, job: Job, running_progress: float, able: Able) -> str:

        try:
            summary = self._summaries.get(job.id)
            if summary is None or summary.order is not job.done_order:
                summary = self._summaries[job.id] = _JobSummary.of(job)
            else:
                summary.update(job)
            view = job.to_dict(running_progress=running_progress)
            view.pop("traceback", None)
            meta = view["meta"]
            view["meta"] = (
                {k: v for k, v in meta.items() if k != "common"} if isinstance(meta, dict) else meta
            )
            view["waiting"] = unmet(farm, job, able) if job.state not in FINAL_JOB_STATES else ""
            if summary.counts_frames:
                view["frames"] = {"done": len(summary.frames_done), "total": summary.frames_total}
            view["thumbnail"] = summary.last_frame is not None
        except Exception as exc:  # a job whose records cannot even be read: show what is sure
            log.debug("dashboard: job %s cannot be shown", job.id, exc_info=True)
            view = {
                "id": job.id, "name": str(job.name), "kind": str(job.kind),
                "state": str(job.state), "priority": 0, "owner": "", "created_at": None,
                "started_at": None, "finished_at": None, "total": len(job.tasks),
                "tasks": {}, "progress": 0.0, "meta": {}, "error": "", "waiting": "",
                "thumbnail": False, "display_error": f"this job cannot be shown: {exc!r}"[:300],
            }  # fmt: skip
        return views.encode_view(view, f"job {job.id}")


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: an ``update`` with the overview whenever the farm changes."""
    farm = farm_of(request)
    overview = request.app[OVERVIEW_KEY]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    overview.join(farm)
    sent = 0
    try:
        while True:
            published = overview.published
            if not still_let_in(request, farm):  # a token revoked, the dashboard revoked
                break
            if overview.version != sent and overview.message:
                sent = overview.version
                await response.write(overview.message)  # the same bytes for every viewer
                continue
            try:
                await asyncio.wait_for(published.wait(), HEARTBEAT_SECONDS)
            except TimeoutError:
                await response.write(b": still here\n\n")
    except ConnectionResetError:
        # The viewer left between the connection's loss and this handler's cancellation.
        pass
    finally:
        overview.leave(farm)
    return response


def still_let_in(request: web.Request, farm: Farm) -> bool:
    """Whether the credential that opened a long request still opens it (a stream ends
    when its token, or the dashboard key that bought its cookie, is revoked)."""
    if request.get(VIA_KEY) == "secret":
        return True
    try:
        return isinstance(access(request, farm), Caller)
    except FarmError:
        return False


OVERVIEW_KEY = web.AppKey("overview", Overview)


# ---- thumbnails and metrics ---------------------------------------------------------------


def _image_output(task: Task) -> str | None:
    """The root-relative path of a done task's last output, if a browser can show it."""
    if task.state is not TaskState.DONE or not isinstance(task.result, dict):
        return None
    outputs = task.result.get("outputs")
    if not isinstance(outputs, list) or not outputs:
        return None
    path = outputs[-1]
    if isinstance(path, str) and Path(path).suffix.lower() in IMAGE_TYPES:
        return path
    return None


def _last_frame(job: Any) -> str | None:
    """The root-relative path of the job's most recently finished image a browser can show."""
    best: tuple[float, str] | None = None
    for task in job.tasks:
        path = _image_output(task)
        if path is not None:
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
        flags = os.O_RDONLY | platform.O_NONBLOCK | platform.O_NOCTTY | platform.OPEN_FLAGS
        descriptor = os.open(path, flags)
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
    farm = farm_of(request)
    job = farm.scheduler.job(request.match_info["job"])
    relative = _last_frame(job)
    if relative is None:
        raise web.HTTPNotFound(reason=f"job {job.id} has no finished frame a browser can show")
    return await frame_response(farm, relative, "no-store")


async def frame_response(farm: Farm, relative: str, cache: str) -> web.Response:
    """The bytes of a frame a task's result names (root-relative), read in the
    thumbnail reader's threads; 404 with the reason when it cannot be read."""
    try:
        path = resolve(farm.config.root, relative)
        body = await thumbnail_reader().read(path)
    except (FarmError, ThumbnailError) as exc:
        raise web.HTTPNotFound(reason=f"the frame {relative} is not readable: {exc}") from None
    return web.Response(
        body=body,
        content_type=IMAGE_TYPES[path.suffix.lower()],
        headers={"Cache-Control": cache, "X-Buildcat-Frame": relative},
    )


# ---- a render's preview video and contact sheet ------------------------------------------

#: ``/jobs/JOB/media/<name>`` -> what it is in the job's media, and its type.
MEDIA = {"video": ("video", "video/mp4"), "contact-sheet": ("contact_sheet", "image/png")}
#: The media files are looked at in threads of their own, as thumbnails are read: a hung
#: NFS file costs a media thread and a 504, never the pool the journal's writes use.
_media_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="buildcat-media")


async def _find_media(farm: Farm, job: Job) -> dict[str, tuple[str, os.stat_result]]:
    future = asyncio.get_running_loop().run_in_executor(_media_pool, _job_media, farm, job)
    try:
        return await asyncio.wait_for(future, THUMBNAIL_TIMEOUT)
    except TimeoutError:
        raise web.HTTPGatewayTimeout(
            reason=f"looking at the job's files took more than {THUMBNAIL_TIMEOUT:g}s"
        ) from None


def _media_file(root: Path, relative: str) -> os.stat_result | None:
    """The file's status if it is a regular file inside the root (no symlink out), of the
    name its path gives (no symlink to another file) and outside the farm's state folder."""
    try:
        path = resolve(root, relative)
        if path.name != Path(relative).name or state_dir(root).resolve() in path.parents:
            return None
        info = os.stat(path)
    except (OSError, FarmError):
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def _job_media(farm: Farm, job: Job) -> dict[str, tuple[str, os.stat_result]]:
    from buildcat.jobs.video import media_paths

    found = {}
    for name, relative in media_paths(job.meta).items():
        info = _media_file(farm.config.root, relative)
        if info is not None:
            found[name] = (relative, info)
    return found


async def media(request: web.Request) -> web.StreamResponse:
    """The job's preview video and contact sheet, where they exist: their root-relative
    paths, sizes and the links that serve them (``null`` where there is none yet)."""

    farm = farm_of(request)
    job = farm.scheduler.job(request.match_info["job"])
    found = await _find_media(farm, job)
    reply: dict[str, Any] = {}
    for route, (name, _) in MEDIA.items():
        if name not in found:
            reply[name] = None
            continue
        relative, info = found[name]
        reply[name] = {
            "path": relative,
            "bytes": info.st_size,
            "modified": info.st_mtime,
            "url": f"{API}/jobs/{job.id}/media/{route}?v={info.st_mtime_ns}",
        }
    return respond(request, reply)


async def media_file(request: web.Request) -> web.StreamResponse:
    """The bytes of a job's preview video or contact sheet (ranges too, for seeking): only
    the files at the job's own media paths (``preview.mp4``, ``contact-sheet.png`` beside
    its frames), never a path a request names."""
    farm = farm_of(request)
    job = farm.scheduler.job(request.match_info["job"])
    route = request.match_info["name"]
    if route not in MEDIA:
        raise web.HTTPNotFound(reason=f"no such media {route!r}: video or contact-sheet")
    name, content_type = MEDIA[route]
    found = (await _find_media(farm, job)).get(name)
    if found is None:
        what = "preview video" if name == "video" else "contact sheet"
        raise web.HTTPNotFound(reason=f"job {job.id} has no {what} yet")
    path = resolve(farm.config.root, found[0])
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": "no-store"}
    )


async def metrics_text(request: web.Request) -> web.StreamResponse:
    farm = farm_of(request)
    overview = request.app[OVERVIEW_KEY]
    text = metrics.render(
        farm.scheduler,
        started_at=farm.started_at,
        version=buildcat.__version__,
        streams=overview.streams,
        overviews=overview.computed,
    )
    return web.Response(
        text=text, content_type="text/plain", charset="utf-8", headers={"X-Format": "0.0.4"}
    )


def add_routes(app: web.Application) -> None:
    app[OVERVIEW_KEY] = Overview()
    app.router.add_get("/", index)
    app.router.add_get("/login", login)
    app.router.add_get("/dashboard/{name}", asset)
    app.router.add_get("/dashboard/{folder:css|js}/{name}", asset)
    app.router.add_get(f"{API}/events", events)
    app.router.add_get(f"{API}/jobs/{{job}}/thumbnail", thumbnail)
    app.router.add_get(f"{API}/jobs/{{job}}/media", media)
    app.router.add_get(f"{API}/jobs/{{job}}/media/{{name}}", media_file)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get(f"{API}/dashboard", dashboard_link)
    app.router.add_post(f"{API}/dashboard/revoke", revoke_dashboard)
