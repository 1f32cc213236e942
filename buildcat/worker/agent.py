"""The worker's pull loop: register, lease tasks, run them in child processes, report.

Three kinds of coroutine share one agent: the leaser long-polls for tasks while there is
room, one runner per slot feeds tasks to its child process, and the reporter sends
results, progress and heartbeats (and learns of cancellations) without waiting for the
leaser. Results the server could not take are kept and sent again once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform as python_platform
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

import buildcat
from buildcat import auth, discovery, jobs, platform, protocol
from buildcat import schedule as schedule_rules
from buildcat.blender import BlenderInstall, find_blender
from buildcat.blender import devices as gpu_devices
from buildcat.blender.devices import SlotDevices
from buildcat.errors import FarmError
from buildcat.jobs import blender as blender_jobs
from buildcat.worker import nimby, tasklog
from buildcat.worker.execute import Child, ChildConfused, ChildDied

log = logging.getLogger(__name__)

#: Prefetch holds at most this many seconds of (estimated) work beyond the free slots.
PREFETCH_SECONDS = 0.05
MAX_PREFETCH = 256
#: A child is sent quick tasks several at a time: at most this many, of at most this many
#: seconds of (estimated) work together, so one slot never sits on what another could run.
MAX_CHILD_BATCH = 64
CHILD_BATCH_SECONDS = 0.02
#: How many jobs (and kinds of work) the agent remembers the task durations of.
REMEMBERED_DURATIONS = 64
LONG_POLL_SECONDS = 20.0
IDLE_POLL_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 5.0
#: A worker that found its server by discovery looks again once retries are this far apart.
REDISCOVER_AFTER_BACKOFF = 0.8
#: What a worker's child runs for a Blender task.
BLENDER_RUNNER = "buildcat.jobs.blender:run_task"
#: A finished result waits this long for others to share its report.
REPORT_COALESCE_SECONDS = 0.002
#: A task that has run this long gets a watch for cancellations open for it.
WATCH_AFTER_SECONDS = 0.5
#: A cancelled task has this long to stop (Blender gets SIGINT, then SIGKILL after its own
#: grace period) before the worker kills the process running it.
CANCEL_GRACE_SECONDS = 20.0
#: A report carries results up to about this many bytes; the rest go in the next one.
REPORT_BYTES = 8 * 1024 * 1024
#: Progress goes to the server at most this often per worker.
PROGRESS_SECONDS = 0.5
#: A draining worker keeps trying to deliver results this long; the server re-runs the
#: tasks of a worker that never reports back, so giving up loses time, not work.
DRAIN_DELIVERY_SECONDS = 30.0


#: The same stop signal this soon after the first is that one delivered twice, not a second:
#: the one-file executable's bootloader passes on a SIGTERM or Ctrl-C that its process
#: group also delivered straight to the worker (systemd's default KillMode, a terminal).
SAME_SIGNAL_SECONDS = 0.5


@dataclass(slots=True)
class WorkerConfig:
    #: ``None``: find the farm on the LAN (the one named ``farm`` when several answer).
    host: str | None
    port: int | None
    root: Path
    farm: str | None = None
    #: The farm secret; ``None`` reads ``<root>/.buildcat/secret`` (or FARM_TOKEN).
    token: str | None = None
    tls_ca: Path | None = None
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    slots: int = 1
    tags: list[str] = field(default_factory=list)
    exit_when_idle: bool = False
    max_tasks: int | None = None
    #: ``None``: no Blender tasks; ``""``: look for one; else a path or ``"bpy"``.
    blender_choice: str | None = ""
    blender: BlenderInstall | None = None
    #: Seconds a cancelled task has to stop before its process is killed and replaced.
    cancel_grace: float = CANCEL_GRACE_SECONDS
    #: When to take work (``farm worker --schedule``; "" for always), in ``timezone``
    #: (this machine's, reported at register either way), and whether to give tasks back
    #: when it ends. The server keeps it; one an admin sets later wins.
    schedule: str = ""
    timezone: str = field(default_factory=schedule_rules.local_timezone)
    give_back: bool = False
    #: Stay away while the machine is in use (``farm worker --nimby``: worker/nimby.py).
    nimby: bool = False
    #: ``farm worker --gpu``: the devices of each slot (blender/devices.py), else None.
    gpu_slots: list[SlotDevices] | None = None
    #: The Python tasks run in (``farm worker --python``, checked by
    #: ``execute.check_python``); ``None``: this worker's own.
    python: str | None = None


def refused(item: dict[str, Any], reason: str) -> dict[str, Any]:
    """A result the server would not take, turned into a failure it will."""
    return {
        "id": item["id"],
        "ok": False,
        "error": f"the server refused this task's result: {reason}"[:2000],
        "traceback": "",
        "log": str(item.get("log", ""))[-4096:],
    }


class ServerGone(Exception):
    """The server did not answer; the caller retries with backoff."""


class UnknownWorker(Exception):
    """The server no longer knows this worker (it restarted): register again."""


def work_of(message: dict[str, Any]) -> str:
    """What a task runs (``jobs.work_of``): a job new to this worker is sized by recent
    tasks that ran the same (many small jobs of one function)."""
    return jobs.work_of(str(message.get("kind", "")), message.get("payload"))


def _remember(means: dict[str, float], key: str, seconds: float) -> float:
    previous = means.pop(key, None)
    mean = means[key] = seconds if previous is None else 0.8 * previous + 0.2 * seconds
    if len(means) > REMEMBERED_DURATIONS:
        del means[next(iter(means))]
    return mean


@dataclass(slots=True, eq=False)
class _Running:
    message: dict[str, Any]
    child: Child
    started_at: float
    cancelled: bool = False
    #: The child's number for this task's request (0 until it is sent).
    seq: int = 0
    #: When the child started it (epoch), as near as the agent can tell.
    started_wall: float = 0.0


class Agent:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.url = self.base = ""
        self.discovered = config.host is None
        token = auth.load_token(config.root, config.token)
        auth.redact_logs(token)  # a task's error may quote the secret it printed
        self.token = token  # the root's record is tried with it (discovery.locate)
        self.headers = {
            "Accept": protocol.MSGPACK,
            "Content-Type": protocol.MSGPACK,
            "Authorization": auth.authorization(token),
        }
        self.ssl: ssl.SSLContext | bool = True
        #: The farm's TLS as the root says (never as an advert says), and the certificate
        #: pin the session's connector checks before anything is sent.
        self.transport = auth.Transport(tls=False)
        self.plain_asked = (config.host or "").strip().lower().startswith("http://")
        self.asked: tuple[str, int, bool] = ("", 0, False)
        self.session_pin = ""
        self._closing: set[asyncio.Task[None]] = set()
        if config.host is not None:
            host, port, tls = protocol.split_address(config.host, config.port)
            self.set_server(host, port, tls or config.tls_ca is not None)
        self.worker_id: str | None = None
        self.registering = asyncio.Lock()
        self.heartbeat_seconds = 10.0
        self.queue: deque[dict[str, Any]] = deque()
        self.running: dict[str, _Running] = {}
        self.outbox: list[dict[str, Any]] = []
        self.to_release: list[str] = []
        self.progress: dict[str, tuple[float, str]] = {}
        self.progress_dirty = False
        self.started = 0
        self.finished = 0
        self.draining = False
        self.stopping = False
        #: Why this --nimby worker stays away now ("" when it takes work), and whether the
        #: server has yet to hear a change of it.
        self.nimby = ""
        self.nimby_unsent = False
        #: Mean task duration per job (recent jobs only) and per kind of work (``work_of``):
        #: sizes the prefetch, so a job of tiny tasks is leased in batches (and so are many
        #: small jobs of one function) while a job of long ones is not hoarded.
        self.mean_seconds: dict[str, float] = {}
        self.work_seconds: dict[str, float] = {}
        self.current: dict[str, Any] = {}
        self.wake_runners = asyncio.Event()
        self.wake_leaser = asyncio.Event()
        self.wake_reporter = asyncio.Event()
        self.wake_watcher = asyncio.Event()
        #: Set when a slot has nothing to run next (a task ended, held tasks went back).
        self.slot_freed = asyncio.Event()
        self.children: list[Child] = []
        self.session: aiohttp.ClientSession | None = None

    # ---- HTTP ---------------------------------------------------------------------------

    def set_server(self, host: str, port: int, tls: bool) -> None:
        self.asked = (host, port, tls)
        self.transport = auth.choose_transport(
            self.config.root, tls=tls, plain_asked=self.plain_asked, where=f"{host}:{port}"
        )
        tls = self.transport.tls
        self.url = f"{'https' if tls else 'http'}://{host}:{port}"
        self.base = self.url + protocol.API_PREFIX
        if tls:
            self.ssl = auth.client_ssl_context(self.config.tls_ca)

    def new_session(self) -> aiohttp.ClientSession:
        """A session whose connector checks the root's certificate pin (with the CA check
        each request makes), so a wrong server gets no header at all."""
        self.session_pin = self.transport.fingerprint
        pin = aiohttp.Fingerprint(bytes.fromhex(self.session_pin)) if self.session_pin else True
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=8, force_close=False, ssl=pin)
        )

    async def locate(self, timeout: float | None = None) -> bool:
        """Find the farm (the root's record, then the LAN); ``True`` when the address changed."""
        found = await asyncio.to_thread(
            discovery.locate, self.config.root, self.token, self.config.farm, timeout,
            tls_ca=self.config.tls_ca,
        )  # fmt: skip
        previous = self.base
        self.set_server(found.host, found.port, found.tls or self.config.tls_ca is not None)
        if self.base != previous:
            log.info("found farm %r at %s %s", found.name, self.url, found.how)
        return self.base != previous

    async def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        assert self.session is not None
        if self.session_pin != self.transport.fingerprint:  # the farm's certificate changed
            old, self.session = self.session, self.new_session()
            closing = asyncio.create_task(old.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        data = protocol.pack(body) if body is not None else None
        try:
            async with self.session.request(
                method,
                self.base + path,
                data=data,
                headers=self.headers,
                ssl=self.ssl,
                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=5),
            ) as response:
                payload = await response.read()
                status = response.status
        except aiohttp.ServerFingerprintMismatch:
            pinned = self.transport.fingerprint
            with contextlib.suppress(FarmError):
                self.set_server(*self.asked)  # a restarted server may have a new certificate
            raise ServerGone(
                f"{self.url} shows a TLS certificate that is not this farm's (the root "
                f"names sha256 {pinned[:16]}…): not sending the farm secret"
            ) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise FarmError(
                f"the TLS certificate of {self.url} is not trusted "
                f"({exc.certificate_error}): give its CA with --tls-ca (FARM_TLS_CA)"
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ServerGone(str(exc) or type(exc).__name__) from exc
        try:
            reply = protocol.unpack(payload, trusted=True) if payload else {}
        except FarmError:
            raise ServerGone(f"{self.url} did not answer like a farm server") from None
        if status == 401:
            raise FarmError(
                f"the farm server at {self.url} refused this worker's farm secret: "
                "is --root the farm root the server uses (or is --token right)?"
            )
        if status == 404 and "worker" in str(reply.get("error", "")):
            raise UnknownWorker(reply.get("error"))
        if status >= 500:
            raise ServerGone(f"server error {status}")
        if status >= 400:
            raise FarmError(f"server refused {method} {path}: {reply.get('error', status)}")
        return reply

    async def register(self) -> None:
        capabilities = {tag: "" for tag in self.config.tags}
        capabilities["python"] = python_platform.python_version()
        if self.config.blender is not None:
            capabilities["blender"] = self.config.blender.version
        if self.config.gpu_slots:
            capabilities.update(gpu_devices.capabilities(self.config.gpu_slots))
        body: dict[str, Any] = {
            "name": self.config.name,
            "slots": self.config.slots,
            "capabilities": capabilities,
            "info": {
                "hostname": socket.gethostname(),
                "platform": python_platform.platform(),
                "python": python_platform.python_version(),
                "root": str(self.config.root),
                "pid": os.getpid(),
                "version": buildcat.__version__,
                "timezone": self.config.timezone,
            },
        }
        if self.config.gpu_slots:
            body["info"]["gpus"] = gpu_devices.info(self.config.gpu_slots)
        if self.config.schedule:
            body["schedule"] = {
                "spec": self.config.schedule,
                "timezone": self.config.timezone,
                "give_back": self.config.give_back,
            }
        reply = await self.call("POST", "/workers", body)
        self.worker_id = reply["id"]
        self.heartbeat_seconds = max(0.05, float(reply.get("lease_timeout", 30.0)) / 3)
        log.info("registered with %s as %s (%s)", self.base, self.config.name, self.worker_id)

    async def register_once(self) -> str:
        """Register unless another coroutine just did: one registration, however many
        requests learnt at once that the server forgot this worker."""
        async with self.registering:
            if self.worker_id is None:
                await self.register()
            assert self.worker_id is not None
            return self.worker_id

    async def call_as_worker(self, method: str, suffix: str, body: Any, timeout: float) -> Any:
        """A worker request that survives outages: backs off, re-registers, tries again."""
        backoff = 0.1
        give_up_at: float | None = None
        while True:
            worker_id = self.worker_id
            try:
                if worker_id is None:
                    worker_id = await self.register_once()
                return await self.call(method, f"/workers/{worker_id}{suffix}", body, timeout)
            except UnknownWorker:
                # The leaser, the reporter and the watcher all hear it: one registers again.
                if self.worker_id == worker_id and worker_id is not None:
                    log.warning("the server does not know this worker any more; registering again")
                    self.worker_id = None
            except ServerGone as exc:
                if self.draining and self.worker_id is None:
                    raise  # never reached the server: nothing to deliver, nothing to wait for
                if self.draining and give_up_at is None:
                    give_up_at = time.monotonic() + DRAIN_DELIVERY_SECONDS
                if self.stopping or (give_up_at is not None and time.monotonic() > give_up_at):
                    raise
                log.warning("server unreachable (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                if self.discovered and backoff >= REDISCOVER_AFTER_BACKOFF:
                    # The server may have come back elsewhere (a new port or address).
                    with contextlib.suppress(FarmError):
                        if await self.locate(timeout=2.0):
                            backoff = 0.1

    # ---- capacity -------------------------------------------------------------------------

    def estimate(self, message: dict[str, Any]) -> float | None:
        """How long a task will likely run: its job's recent mean, else that of recent
        tasks that ran the same (``work_of``); ``None`` when nothing is known."""
        mean = self.mean_seconds.get(str(message.get("job", "")))
        return mean if mean is not None else self.work_seconds.get(work_of(message))

    def prefetch_keys(self) -> list[str]:
        """The job ids and kinds of work this worker takes many tasks of at once."""
        return [
            key
            for means in (self.mean_seconds, self.work_seconds)
            for key, mean in means.items()
            if mean < PREFETCH_SECONDS
        ]

    def quick(self, message: dict[str, Any]) -> bool:
        mean = self.estimate(message)
        return mean is not None and mean < PREFETCH_SECONDS

    def capacity(self) -> int:
        prefetch = 0
        mean = self.estimate(self.current) if self.current else None
        if mean is not None and mean < PREFETCH_SECONDS:
            prefetch = min(
                MAX_PREFETCH, int(PREFETCH_SECONDS / max(mean, 1e-5)) * self.config.slots
            )
        target = self.config.slots + prefetch
        room = target - len(self.running) - len(self.queue)
        starving = not self.queue and len(self.running) < self.config.slots
        if prefetch and not starving and room < target // 2:
            room = 0  # refill in batches, not one task per round trip
        if self.config.max_tasks is not None:
            room = min(room, self.config.max_tasks - self.started - len(self.queue))
        return max(room, 0)

    def take_prefetch(
        self, tasks: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Split leased tasks into those to keep and those to give back at once.

        Beyond the free slots, only tasks known to be quick (their job's, or else their
        kind of work's, recent tasks were) are kept: a lease sized for quick tasks that
        brings a job of unknown (or long) tasks must not hoard them while other workers
        sit idle."""
        free = self.config.slots - len(self.running) - len(self.queue)
        keep: list[dict[str, Any]] = []
        give_back: list[dict[str, Any]] = []
        for task in tasks:
            if self.quick(task):
                keep.append(task)
            elif free > 0:
                keep.append(task)
                free -= 1
                self.current = task  # size the next lease by this job's tasks
            else:
                give_back.append(task)
        return keep, give_back

    def give_back_slow(self, job_id: str) -> None:
        """A job kept as quick (by its kind of work) whose tasks prove slow: what is held of
        it beyond the free slots goes back to the server, for other workers to take."""
        free = max(0, self.config.slots - len(self.running))
        held = [m for m in list(self.queue)[free:] if str(m.get("job", "")) == job_id]
        if not held:
            return
        ids = {message["id"] for message in held}
        self.queue = deque(m for m in self.queue if m["id"] not in ids)
        log.info("job %s: its tasks are slow; giving back %d held task(s)", job_id, len(held))
        self.to_release.extend(message["id"] for message in held)
        self.note_free_slot()
        self.wake_reporter.set()
        self.wake_leaser.set()

    def idle(self) -> bool:
        return not self.running and not self.queue

    # ---- loops ----------------------------------------------------------------------------

    async def leaser(self) -> None:
        while not self.draining:
            want = self.capacity()
            if want <= 0:
                if self.config.max_tasks is not None and self.started >= self.config.max_tasks:
                    self.begin_drain("reached --max-tasks")
                    return
                self.wake_leaser.clear()
                await self.wake_leaser.wait()
                continue
            if self.config.nimby and await self.stay_away():
                continue
            # A worker that leaves when idle must notice an empty queue quickly.
            wait = IDLE_POLL_SECONDS if self.config.exit_when_idle else LONG_POLL_SECONDS
            if self.config.nimby:
                wait = min(wait, nimby.CHECK_SECONDS)  # and look at the machine again soon
            # Tasks of jobs not known to be quick fill free slots only: the server leases
            # none just to have them given back (take_prefetch stays for older servers).
            free = self.free_slots()
            body = {"want": want, "wait": wait, "prefetch": self.prefetch_keys(), "others": free}
            try:
                reply = await self.lease(body, wait)
            except FarmError as exc:  # refused (4xx): say so and try again later
                log.error("%s", exc)
                await asyncio.sleep(MAX_BACKOFF_SECONDS)
                continue
            tasks = reply.get("tasks", [])
            if reply.get("stopping"):
                log.info("the server is shutting down; waiting for it to come back")
            if self.draining:
                self.to_release.extend(task["id"] for task in tasks)
                self.wake_reporter.set()
                return
            if tasks:
                tasks = self.drop_duplicates(tasks)
                keep, give_back = self.take_prefetch(tasks)
                log.debug("leased %d task(s), giving back %d", len(tasks), len(give_back))
                self.queue.extend(keep)
                self.wake_runners.set()
                if give_back:
                    self.to_release.extend(task["id"] for task in give_back)
                    self.wake_reporter.set()
            elif self.config.exit_when_idle and self.idle() and not self.outbox:
                self.begin_drain("no work left (--exit-when-idle)")
                return

    def free_slots(self) -> int:
        return max(0, self.config.slots - len(self.running) - len(self.queue))

    async def lease(self, body: dict[str, Any], wait: float) -> Any:
        """One lease request. With every slot busy it only prefetches, and never parks:
        quick tasks that come meanwhile are for idle workers; once one of this worker's
        slots frees, the next request may wait for any task."""
        if body["others"] > 0:
            return await self.call_as_worker("POST", "/lease", body, timeout=wait + 30)
        self.slot_freed.clear()
        reply = await self.call_as_worker("POST", "/lease", {**body, "wait": 0}, timeout=30)
        if not reply.get("tasks") and not self.draining:
            await self.slot_freed.wait()
        return reply

    def note_free_slot(self) -> None:
        if self.free_slots() > 0:
            self.slot_freed.set()

    async def stay_away(self) -> bool:
        """--nimby: look at the machine; while it is in use, tell the server (it leases
        this worker nothing meanwhile) and wait a while. True when it stayed away."""
        why = await asyncio.to_thread(nimby.check, len(self.running))
        if why != self.nimby:
            if why:
                log.info("staying away while the machine is in use (--nimby): %s", why)
            else:
                log.info("the machine is free again: taking work (--nimby)")
            self.nimby = why
            self.nimby_unsent = True
            self.wake_reporter.set()
        if not why:
            return False
        self.wake_leaser.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake_leaser.wait(), nimby.CHECK_SECONDS)
        return True

    def drop_duplicates(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Leave out tasks this worker already runs or holds: the server hands a task out
        again once its lease ran out (this worker was stopped, or cut off), and may hand
        it to this worker under its new registration. The run under way reports for it;
        one already cancelled here goes back to the server to be leased afresh."""
        queued = {message["id"] for message in self.queue}
        fresh = []
        for task in tasks:
            task_id = task["id"]
            entry = self.running.get(task_id)
            if entry is not None and entry.cancelled:
                self.to_release.append(task_id)
                self.wake_reporter.set()
            elif entry is not None or task_id in queued:
                log.info("task %s is already running here; its run reports for it", task_id)
            else:
                fresh.append(task)
                queued.add(task_id)
        return fresh

    async def runner(self, child: Child) -> None:
        while True:
            while not self.queue and not self.draining:
                self.wake_runners.clear()
                await self.wake_runners.wait()
            if self.draining or not self.queue:
                return
            batch = self.take_batch(child)
            self.current = batch[0]
            self.started += len(batch)
            self.wake_leaser.set()
            await self.execute(batch, child)

    def take_batch(self, child: Child) -> list[dict[str, Any]]:
        """The next task, and the quick ones after it up to a batch (MAX_CHILD_BATCH,
        CHILD_BATCH_SECONDS), leaving the other slots their share of the queue."""
        batch = [self.queue.popleft()]
        mean = self.estimate(batch[0])
        if not child.takes_batches or mean is None:
            return batch
        limit = min(MAX_CHILD_BATCH, 1 + len(self.queue) // self.config.slots)
        total = mean
        while self.queue and len(batch) < limit:
            mean = self.estimate(self.queue[0])
            if mean is None or total + mean > CHILD_BATCH_SECONDS:
                break
            batch.append(self.queue.popleft())
            total += mean
        return batch

    def payload_for(self, message: dict[str, Any]) -> dict[str, Any]:
        """What the child runs for a task (FarmError: a payload the worker refuses)."""
        kind = message.get("kind", "")
        jobs.validate_payload(kind, message.get("payload"))
        payload: dict[str, Any] = message["payload"]
        if kind == "blender":
            blender = self.config.blender.encode() if self.config.blender else ""
            return {"function": BLENDER_RUNNER, "args": [payload, blender]}
        if kind in jobs.RUNNERS:  # a kind run by a function of ours in the child
            return {"function": jobs.RUNNERS[kind], "args": [payload]}
        return payload

    async def execute(self, batch: list[dict[str, Any]], child: Child) -> None:
        """Run tasks on ``child``, sent in one write, answered one by one. A child that
        dies (or is replaced) fails the task it ran; those after it run on the next one."""
        sent: list[tuple[_Running, dict[str, Any]]] = []
        for message in batch:
            entry = _Running(message, child, time.monotonic(), started_wall=time.time())
            self.running[message["id"]] = entry
            try:
                payload = self.payload_for(message)
            except FarmError as exc:
                self.finish(entry, {"id": message["id"], "ok": False, "error": str(exc),
                                    "traceback": ""})  # fmt: skip
                continue
            except Exception as exc:  # a bug here must fail the task, never the worker
                log.exception("task %s: unexpected error running it", message["id"])
                error = f"worker error: {exc}"[:2000]
                self.finish(entry, {"id": message["id"], "ok": False, "error": error,
                                    "traceback": ""})  # fmt: skip
                continue
            sent.append((entry, payload))
        if not sent:
            return
        self.wake_watcher.set()
        if child.process is None or child.process.returncode is not None:
            await child.start()
        requests = [(e.message["id"], p, int(e.message.get("attempt", 0))) for e, p in sent]
        if len(requests) > 1:
            log.debug("sending %d tasks to child %s in one write", len(requests), child.pid)
        for (entry, _), seq in zip(sent, child.send(requests), strict=True):
            entry.seq = seq
        try:
            await child.drain()
        except ChildDied as exc:
            self.finish(sent[0][0], self.died(sent[0][0], exc))
            await child.start()
            self.unstart([entry for entry, _ in sent[1:]])
            return
        for index, (entry, payload) in enumerate(sent):
            if index:
                entry.started_at, entry.started_wall = time.monotonic(), time.time()
            outcome, replaced = await self.answer(child, entry, payload)
            self.finish(entry, outcome)
            if replaced:  # what the old child had not started runs on the new one
                self.unstart([entry for entry, _ in sent[index + 1 :]])
                return

    async def answer(
        self, child: Child, entry: _Running, payload: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """The outcome of one sent task, and whether the child was replaced meanwhile."""
        task_id = entry.message["id"]

        def on_progress(fraction: float, text: str) -> None:
            self.progress[task_id] = (fraction, text)
            if not self.progress_dirty:
                self.progress_dirty = True
                self.wake_reporter.set()

        replaced = False
        try:
            try:
                reply = await child.receive(task_id, entry.seq, on_progress)
            except ChildConfused as exc:
                # Its first run delivered nothing that could be trusted: once more, alone.
                if entry.cancelled:
                    raise
                log.error("task %s: %s; running it again", task_id, exc)
                replaced = True
                await child.start()
                (entry.seq,) = child.send(
                    [(task_id, payload, int(entry.message.get("attempt", 0)))]
                )
                await child.drain()
                reply = await child.receive(task_id, entry.seq, on_progress)
            outcome = {
                "id": task_id,
                "ok": bool(reply.get("ok")),
                "result": reply.get("result"),
                "error": str(reply.get("error", "")),
                "traceback": str(reply.get("traceback", "")),
                "log": str(reply.get("log", "")),
            }
            if not outcome["ok"] and reply.get("job_fault") is True:
                outcome["job_fault"] = True  # the job's own fault: fail it, blame no worker
        except ChildDied as exc:
            outcome = self.died(entry, exc)
            replaced = True
            await child.start()  # a fresh process for the next task
        except Exception as exc:  # a bug here must fail the task, never the worker
            log.exception("task %s: unexpected error running it", task_id)
            outcome = {"id": task_id, "ok": False, "error": f"worker error: {exc}"[:2000],
                       "traceback": ""}  # fmt: skip
            replaced = True
            await child.start()
        return outcome, replaced

    @staticmethod
    def died(entry: _Running, exc: ChildDied) -> dict[str, Any]:
        error = "cancelled" if entry.cancelled else str(exc)
        return {"id": entry.message["id"], "ok": False, "error": error, "traceback": ""}

    def unstart(self, entries: list[_Running]) -> None:
        """Sent tasks a replaced child never started go back to the front of the queue
        (those cancelled meanwhile are dropped, as a queued one would be)."""
        for entry in entries:
            task_id = entry.message["id"]
            if self.running.get(task_id) is entry:
                del self.running[task_id]
            self.progress.pop(task_id, None)
        self.started -= len(entries)
        self.queue.extendleft(reversed([e.message for e in entries if not e.cancelled]))
        self.wake_runners.set()

    def finish(self, entry: _Running, outcome: dict[str, Any]) -> None:
        message = entry.message
        task_id = message["id"]
        if self.running.get(task_id) is entry:
            del self.running[task_id]
        self.note_free_slot()
        self.progress.pop(task_id, None)
        elapsed = time.monotonic() - entry.started_at
        outcome["started_at"] = entry.started_wall
        outcome["seconds"] = round(elapsed, 6)
        job_id = str(message.get("job", ""))
        _remember(self.work_seconds, work_of(message), elapsed)
        if _remember(self.mean_seconds, job_id, elapsed) >= PREFETCH_SECONDS:
            self.give_back_slow(job_id)
        self.finished += 1
        if entry.cancelled:
            log.info("task %s cancelled", task_id)
        else:
            if outcome["ok"]:
                log.info("task %s done in %.3fs", task_id, elapsed)
            else:
                log.warning("task %s failed: %s", task_id, outcome["error"])
            self.outbox.append(outcome)
        self.wake_reporter.set()
        self.wake_leaser.set()

    async def reporter(self) -> None:
        last_sent = time.monotonic()
        while True:
            while True:
                finished = self.draining and not self.running
                if finished or self.outbox or self.to_release or self.nimby_unsent:
                    break
                since = time.monotonic() - last_sent
                due = self.heartbeat_seconds - since
                if self.progress_dirty:
                    due = min(due, PROGRESS_SECONDS - since)
                if due <= 0:
                    break
                self.wake_reporter.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake_reporter.wait(), due)
            self.progress_dirty = False
            if self.draining and self.queue:
                self.to_release.extend(message["id"] for message in self.queue)
                self.queue.clear()
            if finished and not self.outbox and not self.to_release:
                return
            if self.outbox and (self.queue or self.running) and not self.draining:
                # More results are about to follow: one report for several of them.
                await asyncio.sleep(REPORT_COALESCE_SECONDS)
            done = self.take_outbox()
            release, self.to_release = self.to_release, []
            progress = [
                {"id": task_id, "fraction": fraction, "message": text}
                for task_id, (fraction, text) in self.progress.items()
            ]
            body: dict[str, Any] = {"done": done, "progress": progress, "release": release}
            if self.config.nimby:
                body["nimby"] = self.nimby
                self.nimby_unsent = False
            try:
                reply = await self.call_as_worker("POST", "/report", body, timeout=60)
            except FarmError as exc:  # refused (4xx): resending the same would fail again
                last_sent = time.monotonic()
                if any(item["ok"] or item.get("result") is not None for item in done):
                    log.error("%s; reporting those %d task(s) as failed", exc, len(done))
                    self.outbox[:0] = [refused(item, str(exc)) for item in done]
                else:
                    log.error("%s; dropped %d report(s)", exc, len(done))
                continue
            except ServerGone:
                lost = [item["id"] for item in done]
                log.error(
                    "server gone while draining; %d result(s) not delivered (%s): "
                    "the farm will run those tasks again",
                    len(lost),
                    ", ".join(lost),
                )
                return
            except BaseException:
                self.outbox[:0] = done
                self.to_release[:0] = release
                raise
            last_sent = time.monotonic()
            for task_id in reply.get("cancel", []):
                self.cancel(task_id)
            if finished and not self.outbox and not self.to_release:
                return

    def take_outbox(self) -> list[dict[str, Any]]:
        """The next results to send, at most REPORT_BYTES of them (at least one)."""
        size = 0
        for count, item in enumerate(self.outbox):
            size += len(protocol.pack(item))
            if size > REPORT_BYTES and count > 0:
                break
        else:
            count = len(self.outbox)
        done, self.outbox = self.outbox[:count], self.outbox[count:]
        return done

    async def watcher(self) -> None:
        """Hear about cancellations at once, not at the next heartbeat."""
        while not (self.draining and not self.running):
            if not self.running:
                self.wake_watcher.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake_watcher.wait(), self.heartbeat_seconds)
                continue
            # Short tasks end before a cancel matters: watch only once one has run a while.
            oldest = min(entry.started_at for entry in self.running.values())
            younger_by = WATCH_AFTER_SECONDS - (time.monotonic() - oldest)
            if younger_by > 0:
                await asyncio.sleep(younger_by)
                continue
            wait = max(0.05, min(self.heartbeat_seconds, LONG_POLL_SECONDS))
            try:
                reply = await self.call_as_worker("POST", "/watch", {"wait": wait}, wait + 30)
            except FarmError as exc:
                log.error("%s", exc)
                await asyncio.sleep(MAX_BACKOFF_SECONDS)
                continue
            for task_id in reply.get("cancel", []):
                self.cancel(task_id)

    def cancel(self, task_id: str) -> None:
        entry = self.running.get(task_id)
        if entry is not None and not entry.cancelled:  # the reporter and the watcher both hear it
            log.info("stopping task %s: cancelled by the server", task_id)
            entry.cancelled = True
            entry.child.interrupt(entry.seq)
            loop = asyncio.get_running_loop()

            def kill_if_still_running() -> None:
                if self.running.get(task_id) is not entry:
                    return
                if entry.child.running_seq != entry.seq:
                    # Still behind another task of its batch: that one is not to be killed.
                    loop.call_later(self.config.cancel_grace, kill_if_still_running)
                    return
                log.warning("task %s ignored the cancel; killing its process", task_id)
                entry.child.kill()

            loop.call_later(self.config.cancel_grace, kill_if_still_running)
        for message in list(self.queue):
            if message["id"] == task_id:
                self.queue.remove(message)
                self.note_free_slot()

    def begin_drain(self, why: str) -> None:
        if not self.draining:
            log.info("draining: %s; finishing %d running task(s)", why, len(self.running))
            self.draining = True
            self.wake_runners.set()
            self.wake_leaser.set()
            self.slot_freed.set()
            self.wake_reporter.set()

    # ---- lifecycle --------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        first_signal: tuple[int, float] | None = None

        def on_signal(signum: int) -> None:
            nonlocal first_signal
            now = time.monotonic()
            if first_signal is None:
                first_signal = (signum, now)
                self.begin_drain("signal received (a second one stops at once)")
            elif first_signal[0] == signum and now - first_signal[1] < SAME_SIGNAL_SECONDS:
                pass  # the same signal again (the one-file executable's bootloader passes it on)
            else:
                log.info("stopping now: running tasks go back to the queue")
                self.stopping = True
                if main is not None:
                    main.cancel()

        if not self.base:
            await self.locate()
        stop_handler = platform.on_stop_signals(loop, on_signal)
        platform.children_die_with_me()  # Windows: a job object; elsewhere each is tied
        env = {
            "BUILDCAT_ROOT": str(self.config.root),
            "BUILDCAT_WORKER_NAME": self.config.name,
            "BUILDCAT_WORKER_SLOTS": str(self.config.slots),
            # A job that submits more work reaches this worker's farm the same way.
            "FARM_HOST": self.url,
        }
        token_file = None
        if self.config.token:  # a path in the tasks' environment, never the secret itself
            token_file = auth.write_token_file(self.config.token)
            env[auth.TOKEN_FILE_ENV] = str(token_file)
        if self.config.tls_ca:
            env["FARM_TLS_CA"] = str(self.config.tls_ca)
        swept = await asyncio.to_thread(
            blender_jobs.sweep_worker_leftovers, self.config.root, self.config.name
        )
        if swept:
            log.info("removed %d staging folder(s) left by a killed run: %s",
                     len(swept), ", ".join(swept[:10]))  # fmt: skip
        self.session = self.new_session()
        self.children = [
            Child(self.slot_env(env, slot), self.config.python) for slot in range(self.config.slots)
        ]
        if self.config.python:
            log.info("running tasks in the Python at %s", self.config.python)
        try:
            await asyncio.gather(*(child.start() for child in self.children), self.find_blender())
            await self.call_as_worker("POST", "/report", {}, timeout=30)
            workers = [asyncio.create_task(self.runner(child)) for child in self.children]
            leaser = asyncio.create_task(self.leaser())
            reporter = asyncio.create_task(self.reporter())
            watcher = asyncio.create_task(self.watcher())
            try:
                await asyncio.gather(*workers)
                await reporter
            finally:
                for helper in (leaser, watcher):
                    helper.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ServerGone, FarmError):
                        await helper
            await self.leave()
            return 0
        except ServerGone as exc:
            log.error("could not reach the farm server at %s: %s", self.base, exc)
            return 1
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            for child in self.children:
                child.kill()
            with contextlib.suppress(ServerGone, FarmError, asyncio.CancelledError):
                await asyncio.wait_for(self.leave(), 5)
            return 1
        finally:
            for child in self.children:
                await child.close()
            await self.session.close()
            if token_file is not None:
                auth.remove_token_file(token_file)
            stop_handler()

    def slot_env(self, env: dict[str, str], slot: int) -> dict[str, str]:
        """The environment of slot ``slot``'s child: with --gpu, the devices it renders on."""
        if not self.config.gpu_slots:
            return env
        devices = self.config.gpu_slots[slot]
        log.info("slot %d renders on %s", slot, devices.describe())
        return {**env, gpu_devices.ENVIRONMENT: json.dumps(devices.to_json())}

    async def find_blender(self) -> None:
        """Look for Blender while the child processes start (it takes about a second)."""
        choice = self.config.blender_choice
        if choice is None or self.config.blender is not None:
            return
        found = await asyncio.to_thread(find_blender, choice or None)
        self.config.blender = found
        if found is None:
            log.info("no Blender found: this worker takes no Blender tasks")
        else:
            log.info("rendering with %s", found.describe())

    async def leave(self) -> None:
        """Unregister: whatever the server still thinks we hold goes back to the queue."""
        if self.worker_id is not None:
            with contextlib.suppress(UnknownWorker, ServerGone):
                await self.call("DELETE", f"/workers/{self.worker_id}", timeout=10)
            log.info("left the farm after %d task(s)", self.finished)


def run_worker(config: WorkerConfig) -> int:
    if not config.root.is_dir():
        raise FarmError(f"farm root {config.root} does not exist or is not a folder")
    tasklog.max_log_bytes()  # a bad BUILDCAT_MAX_TASK_LOG is one line, before anything runs
    return asyncio.run(Agent(config).run())
