"""The Python API: connect to a farm, submit Python functions, wait for results.

The client is synchronous (artists' scripts, the CLI) and keeps one HTTP connection
open, so a request costs one round trip.
"""

from __future__ import annotations

import functools
import http.client
import itertools
import json
import os
import re
import secrets
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack

from buildcat import auth, discovery, jobs, platform, protocol
from buildcat.errors import (
    ConnectionFailed,
    FarmError,
    JobFailed,
    JobTimeout,
    LimitError,
    NotAuthorized,
    RequestRejected,
    UnknownJob,
)
from buildcat.frames import chunk_frames, format_frames, parse_frames
from buildcat.jobs.python import split_spec
from buildcat.perf import job_perf
from buildcat.protocol import check_request_size as _check_request_size
from buildcat.root import relative_in_root, resolve

FINAL_STATES = ("done", "failed", "cancelled")
#: A submit whose reply may have been lost is sent again (with the same idempotency key,
#: so it can only ever make one job) until the server answers or this many seconds pass.
SUBMIT_RETRY_SECONDS = 60.0
#: An event stream with no line (not even a heartbeat) for this long is taken for dead.
STREAM_SILENCE_SECONDS = 60.0


class Client:
    """A connection to one farm server.

    With no ``host`` (and no ``FARM_HOST``) the farm is found at the first request through
    the root's record (``<root>/.buildcat/server.json``), else on the LAN by zeroconf: the
    one named ``farm`` (``FARM_NAME``), or the one using this root's secret.
    The farm secret comes from ``token`` (``FARM_TOKEN``) or ``<root>/.buildcat/secret``.
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        root: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        *,
        token: str | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        farm: str | None = None,
        notify: str | Iterable[str] = (),
    ) -> None:
        self.root = Path(root or os.environ.get("BUILDCAT_ROOT") or os.getcwd()).expanduser()
        self.timeout = timeout
        self.farm = farm or os.environ.get("FARM_NAME") or None
        ca = tls_ca or os.environ.get("FARM_TLS_CA")
        self.tls_ca = Path(ca) if ca else None
        self._token = token
        port = port or (int(os.environ["FARM_PORT"]) if os.environ.get("FARM_PORT") else None)
        host = host or os.environ.get("FARM_HOST") or None
        self.host: str | None = None
        self.port = port or protocol.DEFAULT_PORT
        self.tls = self.tls_ca is not None
        #: ``http://`` written out: refused when the root says the farm speaks TLS.
        self._plain_asked = (host or "").strip().lower().startswith("http://")
        self._transport: auth.Transport | None = None
        if host:
            self.host, self.port, tls = protocol.split_address(host, port)
            self.tls = self.tls or tls
        self._secret: str | None = None
        self._connection: http.client.HTTPConnection | None = None
        #: Options every submit through this client takes where the call gives none:
        #: ``after`` (jobs or ids) and ``after_any``. The CLI's ``--after`` lands here, so
        #: every ``farm submit ...`` command honours it.
        self.submit_defaults: dict[str, Any] = {}
        #: URLs told when any job this client submits ends (besides each submit's notify=).
        self.notify: list[str] = _urls(notify)
        self._job_types: tuple[Any, list[dict[str, Any]]] | None = None

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.host else "(found by discovery)"
        return f"<buildcat.Client {where} root={self.root}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @property
    def address(self) -> str:
        """``http(s)://host:port`` of the server (finding it on the LAN if need be)."""
        self._locate()
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    # ---- transport ------------------------------------------------------------------------

    def _locate(self) -> None:
        if self.host is None:
            found = discovery.locate(self.root, self.token, self.farm, tls_ca=self.tls_ca)
            self.host, self.port = found.host, found.port
            self.tls = self.tls or found.tls
        if self._transport is None:  # TLS as the root says, never as an advert says
            self._transport = auth.choose_transport(
                self.root, tls=self.tls, plain_asked=self._plain_asked,
                where=f"{self.host}:{self.port}",
            )  # fmt: skip
            self.tls = self._transport.tls

    @property
    def token(self) -> str:
        """The farm secret this client sends (read from the root once)."""
        if self._secret is None:
            self._secret = auth.load_token(self.root, self._token)
        return self._secret

    def _auth_headers(self) -> dict[str, str]:
        headers = {"Authorization": auth.authorization(self.token)}
        user = "" if self.named_token else _user_name()
        if user:  # with the farm secret, who the history says did it (a token says itself)
            headers[USER_HEADER] = user
        return headers

    @property
    def named_token(self) -> bool:
        """Whether this client sends a person's named token, not the farm secret."""
        return self.token.startswith(TOKEN_PREFIX)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float | None = None,
        *,
        packed: bytes | None = None,
        retry_for: float = 0.0,
    ) -> Any:
        """One API call; returns the decoded reply or raises a FarmError. ``packed`` is a
        body already encoded as msgpack. With ``retry_for``, a request that may have
        reached the server without an answer coming back is sent again for that long:
        only for requests that are safe to repeat."""
        response, payload = self._send(method, path, body, timeout, packed, retry_for, True)
        return self._reply(response, payload)

    def stream(
        self, method: str, path: str, timeout: float | None = None
    ) -> Generator[tuple[Any, ...], None, None]:
        """Read a reply of the form ``{..., "results": [...]}`` piece by piece: yields
        ``("field", name, value)`` for each other field and ``("item", value)`` for each
        item of ``results`` as it arrives, so a reply bigger than memory can be read. The
        connection is kept for the next request only when the reply is read to its end."""
        response, _ = self._send(method, path, None, timeout, None, 0.0, False)
        if response.status >= 400:
            self._reply(response, response.read())
        unpacker = msgpack.Unpacker(
            response, raw=False, strict_map_key=False, max_buffer_size=2 * protocol.MAX_BODY_BYTES
        )
        whole = False
        try:
            try:
                for _ in range(unpacker.read_map_header()):
                    name = unpacker.unpack()
                    if name != "results":
                        yield ("field", name, unpacker.unpack())
                        continue
                    for _ in range(unpacker.read_array_header()):
                        yield ("item", unpacker.unpack())
            except msgpack.OutOfData:
                raise ConnectionFailed(
                    f"the farm server at {self.host}:{self.port} ended its reply to {path} early"
                ) from None
            except (msgpack.UnpackException, ValueError) as exc:
                raise ConnectionFailed(
                    f"{self.host}:{self.port} sent a malformed reply to {path} ({exc})"
                ) from None
            except (TimeoutError, http.client.HTTPException, OSError) as exc:
                raise ConnectionFailed(
                    f"the farm server at {self.host}:{self.port} stopped answering ({exc})"
                ) from None
            whole = not response.read()  # the end of the chunked reply: nothing after it
        finally:
            if not whole:  # read in part (or abandoned): the connection cannot be reused
                self.close()

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        timeout: float | None,
        packed: bytes | None,
        retry_for: float,
        read: bool,
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """Send one request (again, within ``retry_for``, when the answer may be lost);
        the response and, with ``read``, its whole body."""
        data = packed if packed is not None else protocol.pack(body) if body is not None else None
        headers = {"Accept": protocol.MSGPACK, **self._auth_headers()}
        if data is not None:
            headers["Content-Type"] = protocol.MSGPACK
        url = protocol.API_PREFIX + path
        deadline = time.monotonic() + retry_for
        backoff = 0.1
        maybe_sent = False
        for attempt in itertools.count(1):
            connection = self._connect(timeout)
            try:
                connection.request(method, url, body=data, headers=headers)
                response = connection.getresponse()
                payload = response.read() if read else b""
                break
            except ssl.SSLError as exc:
                self.close()
                raise ConnectionFailed(self._tls_trouble(exc)) from None
            except (TimeoutError, http.client.HTTPException, ConnectionError, OSError) as exc:
                self.close()
                refused = isinstance(exc, ConnectionRefusedError)
                # Once the request may have reached the server, only sending it again can
                # tell what became of it (an idempotent request, or a keyed submit).
                maybe_sent = maybe_sent or not refused
                if maybe_sent and time.monotonic() < deadline:
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                # A kept-alive connection the server closed fails once; a fresh one tells.
                if attempt >= 2 or refused or isinstance(exc, TimeoutError):
                    hint = ""
                    if isinstance(exc, http.client.RemoteDisconnected) and not self.tls:
                        hint = "; if it speaks TLS, give the host as https://…"
                    raise ConnectionFailed(
                        f"cannot reach the farm server at {self.host}:{self.port} ({exc}{hint})"
                    ) from None
        return response, payload

    def _reply(self, response: http.client.HTTPResponse, payload: bytes) -> Any:
        """The decoded reply, or the FarmError its status says."""
        try:
            reply = protocol.unpack(payload, trusted=True) if payload else {}
        except FarmError:
            hint = "" if self.tls else " (if it speaks TLS, give the host as https://…)"
            raise ConnectionFailed(
                f"{self.host}:{self.port} did not answer like a farm server{hint}"
            ) from None
        if response.status >= 400:
            reason = reply.get("error") if isinstance(reply, dict) else None
            reason = reason or f"HTTP {response.status}"
            if response.status == 401:
                source = (
                    "--token/FARM_TOKEN"
                    if self._token or os.environ.get("FARM_TOKEN")
                    else (str(auth.secret_path(self.root)))
                )
                if self.named_token:
                    raise NotAuthorized(
                        401,
                        f"the farm server at {self.host}:{self.port} refused the token from "
                        f"{source}: it is unknown or was revoked (an admin lists them with "
                        "farm token list)",
                    )
                raise NotAuthorized(
                    401,
                    f"the farm server at {self.host}:{self.port} refused the farm secret from "
                    f"{source}: is this the root the server uses?",
                )
            if response.status == 404 and "job" in reason:
                raise UnknownJob(response.status, reason)
            raise RequestRejected(response.status, reason)
        return reply

    def _tls_trouble(self, exc: ssl.SSLError) -> str:
        where = f"{self.host}:{self.port}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            detail = exc.verify_message or exc.reason or str(exc)
            return (
                f"the TLS certificate of {where} is not trusted ({detail}): "
                "give its CA with --tls-ca (FARM_TLS_CA)"
            )
        if "WRONG_VERSION_NUMBER" in str(exc) or "record layer" in str(exc):
            return f"{where} does not speak TLS: give the host as http://… or drop --tls-ca"
        return f"TLS with {where} failed: {exc.reason or exc}"

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._connection is None:
            self._locate()
            assert self.host is not None
            if self.tls:
                assert self._transport is not None
                self._connection = auth.PinnedHTTPSConnection(
                    self.host,
                    self.port,
                    timeout=self.timeout,
                    context=auth.client_ssl_context(self.tls_ca),
                    transport=self._transport,
                )
            else:
                self._connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout
                )
        self._connection.timeout = timeout or self.timeout
        if self._connection.sock is not None:
            self._connection.sock.settimeout(self._connection.timeout)
        return self._connection

    # ---- submitting -------------------------------------------------------------------------

    def submit(
        self,
        function: str | Callable[..., Any],
        *args: Any,
        after: Iterable[Job | str] | None = None,
        after_any: bool | None = None,
        **kwargs: Any,
    ) -> Job:
        """Run ``function(*args, **kwargs)`` once on a worker.

        ``after``: jobs (or ids) this one runs after (see :meth:`submit_tasks`); ``after``
        and ``after_any`` are the farm's, not the function's (pass a function keyword of
        that name through :meth:`submit_tasks`)."""
        spec = _function_spec(function)
        return self.submit_tasks(
            [{"payload": {"function": spec, "args": list(args), "kwargs": kwargs}}],
            name=spec,
            after=after,
            after_any=after_any,
        )

    def map(
        self,
        function: str | Callable[..., Any],
        items: Iterable[Any],
        *,
        priority: int = 0,
        name: str = "",
        **options: Any,
    ) -> Job:
        """Run ``function(item)`` for every item, one task each; results keep the order.

        ``options`` go to :meth:`submit_tasks` (``requires``, ``after``, ``after_any`` ...)."""
        spec = _function_spec(function)
        tasks = [{"payload": {"args": [item]}} for item in items]
        return self.submit_tasks(
            tasks, name=name or spec, priority=priority, common={"function": spec}, **options
        )

    def map_frames(
        self,
        function: str | Callable[..., Any],
        frames: str,
        *args: Any,
        chunk: int = 1,
        kwargs: dict[str, Any] | None = None,
        priority: int = 0,
        name: str = "",
        requires: Iterable[str] = (),
        max_attempts: int | None = None,
        timeout: float | None = None,
        after: Iterable[Job | str] | None = None,
        after_any: bool | None = None,
        notify: str | Iterable[str] = (),
    ) -> Job:
        """One task per chunk of a frame spec: ``function(*args, frames=[...], **kwargs)``.

        >>> farm.map_frames("shots/bake.py:bake", "1-240", "shots/a", chunk=10)
        """
        spec = _function_spec(function)
        numbers = parse_frames(frames)
        groups = chunk_frames(numbers, chunk)

        def task(group: list[int]) -> dict[str, Any]:
            payload = {"kwargs": {**(kwargs or {}), "frames": group}, "label": format_frames(group)}
            return {"payload": payload}

        # The size is estimated from the first task before the others are built.
        _check_request_size(
            len(protocol.pack(task(groups[0]))) * len(groups),
            len(groups),
            "use more frames per task (chunk)",
        )
        tasks = [task(group) for group in groups]
        return self.submit_tasks(
            tasks,
            name=name or f"{spec} frames {frames}",
            priority=priority,
            requires=requires,
            max_attempts=max_attempts,
            common={"function": spec, "args": list(args)},
            meta={"frames": frames, "chunk": chunk},
            timeout=timeout,
            after=after,
            after_any=after_any,
            notify=notify,
        )

    def render(
        self,
        scene: str,
        frames: str | None = None,
        *,
        chunk: int = 1,
        output: str | None = None,
        format: str | None = None,
        color_mode: str | None = None,
        color_depth: str | int | None = None,
        engine: str | None = None,
        samples: int | None = None,
        resolution: tuple[int, int] | None = None,
        camera: str | None = None,
        scene_name: str | None = None,
        tiles: tuple[int, int] | None = None,
        sample_split: int | None = None,
        allow_missing: bool = False,
        enable_autoexec: bool = False,
        priority: int = 0,
        name: str = "",
        max_attempts: int | None = None,
        timeout: float | None = None,
        requires: Iterable[str] = (),
        blender_version: str | None = None,
        preview_video: bool = False,
        fps: float | str | None = None,
        after: Iterable[Job | str] | None = None,
        after_any: bool | None = None,
        notify: str | Iterable[str] = (),
    ) -> Job:
        """Render a .blend (root-relative, or an absolute path inside the root) on the
        farm's Blender workers.

        ``enable_autoexec`` lets the file's Python run (drivers, scripts), like Blender's
        ``-y``: a trust decision about the file, off by default.

        ``frames`` defaults to the range of the scene named by ``scene_name`` (else the
        file's active scene), read from the file (blendfile.read_blend). A scene or camera
        the file lacks, a movie output without ``format``, and missing files or files
        outside the root (unless ``allow_missing``) are refused here.
        Tasks go only to workers whose Blender is at least the version that saved the file,
        and that have every capability in ``requires`` (``gpu``, ``blender==4.5``). Every
        task renders on one Blender version: ``blender_version`` ("4.5", "4.5.15") pins it,
        else the job takes the version of the first worker that leases one of its tasks.
        Frames are written as the scene's output settings say; ``format`` (PNG, JPEG,
        OPEN_EXR, OPEN_EXR_MULTILAYER), ``color_mode`` (BW, RGB, RGBA) and ``color_depth``
        (8, 16, 32) change only what they name.
        ``preview_video`` ends the job with a task that makes ``preview.mp4`` of the frames,
        beside them, at the scene's frame rate (``fps`` overrides it).
        """
        return self.submit_type(
            "render",
            scene=scene,
            frames=frames,
            chunk=chunk,
            output=output,
            format=format,
            color_mode=color_mode,
            color_depth=color_depth,
            engine=engine,
            samples=samples,
            resolution=None if resolution is None else "x".join(map(str, resolution)),
            camera=camera,
            scene_name=scene_name,
            tiles=None if tiles is None else "x".join(map(str, tiles)),
            sample_split=sample_split,
            allow_missing=allow_missing,
            enable_autoexec=enable_autoexec,
            blender_version=blender_version,
            preview_video=preview_video,
            fps=fps,
            priority=priority,
            name=name,
            max_attempts=max_attempts,
            timeout=timeout,
            requires=requires,
            after=after,
            after_any=after_any,
            notify=notify,
        )

    def command(
        self,
        template: str | Sequence[str],
        frames: str | None = None,
        *,
        chunk: int = 1,
        argv: bool = False,
        outdir: str | None = None,
        outputs: Iterable[str] = (),
        progress_regex: str | None = None,
        priority: int = 0,
        name: str = "",
        requires: Iterable[str] = (),
        max_attempts: int | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Job:
        """Run a shell command template once per chunk of frames (Brenda's work queue).

        >>> farm.command("convert in/$FRAME.exr $OUTDIR/$FRAME.png", "1-100", chunk=10)

        ``template`` is run by the worker's ``/bin/sh -c``, with the root as working
        directory; with ``argv=True`` it is split into arguments here (shlex) and run
        with no shell (a list is taken as the arguments as they are). Variables:
        ``$START $END $STEP $FRAME $FRAMES $OUTDIR $ROOT $TASK $JOB`` (``${NAME}`` too,
        ``$$`` for a ``$``); any other is refused here. ``outdir`` is ``$OUTDIR``,
        root-relative (default ``commands/<job id>``). A task is done when the command
        exits 0 and every file of ``outputs`` (root-relative patterns that may use the
        variables and ``#`` for the frame) exists; ``progress_regex`` turns matching
        output lines into progress (see docs/commands.md).
        """
        from buildcat.jobs import command as command_jobs

        tasks, common = command_jobs.plan_command(
            template,
            frames,
            chunk=chunk,
            argv=argv,
            outdir=outdir,
            outputs=list(outputs),
            progress_regex=progress_regex,
        )
        shown = template if isinstance(template, str) else " ".join(template)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return self.submit_tasks(
            tasks,
            kind="command",
            name=name or (f"{shown} frames {frames}" if frames is not None else shown),
            priority=priority,
            requires=requires,
            max_attempts=max_attempts,
            timeout=timeout,
            common=common,
            meta={"frames": frames, "chunk": chunk} if frames is not None else {},
            **options,
        )

    def script(
        self,
        path: str,
        args: Iterable[str] = (),
        *,
        python: str | None = None,
        map: Iterable[str | Sequence[str]] | None = None,
        priority: int = 0,
        name: str = "",
        requires: Iterable[str] = (),
        max_attempts: int | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Job:
        """Run a Python file under the root with ``args`` as its ``sys.argv[1:]``, like
        ``python path args...`` (StudioML's ``studio run``).

        >>> farm.script("tools/train.py", ["--epochs", "3"], map=["--lr 0.1", "--lr 0.2"])

        ``python`` is the interpreter on the workers: a Python executable or a virtualenv
        folder (absolute, or root-relative with a ``/``), or a name on the worker's PATH;
        default the worker's own. ``map`` makes one task per argument set (a string is
        split with shlex), each run with ``args`` followed by its own. A file outside the
        root or missing is refused here.
        """
        from buildcat.jobs import script as script_jobs

        relative = relative_in_root(self.root, path)
        if not resolve(self.root, relative).is_file():
            raise FarmError(
                f"{relative} does not exist under the farm root {self.root} "
                "(set --root or BUILDCAT_ROOT to this machine's path to the root)"
            )
        argument_sets = None if map is None else list(map)
        arguments = (
            script_jobs.split_arguments(args) if isinstance(args, str) else [str(a) for a in args]
        )
        tasks, common = script_jobs.plan_script(
            relative, arguments, python=python, map=argument_sets
        )
        return self.submit_tasks(
            tasks,
            kind="script",
            name=name or relative,
            priority=priority,
            requires=requires,
            max_attempts=max_attempts,
            timeout=timeout,
            common=common,
            **options,
        )

    def submit_type(
        self, job_type: str, settings: dict[str, Any] | None = None, /, **given: Any
    ) -> Job:
        """Submit a job of a job type (``render`` or a file in ``<root>/jobtypes/``):
        its settings are checked against the type's declaration (SettingError, one line,
        nothing queued), then its ``compile`` plans the tasks, then they go as one job.

        Settings come as keywords (or the ``settings`` map, for names that are also submit
        options); ``priority``, ``name``, ``requires``, ``max_attempts``, ``timeout`` and
        every other option of :meth:`submit_tasks` apply to the job as on any submit.
        A setting left as ``None`` takes its default. The root's own job types run in a
        child process with a time limit (``BUILDCAT_JOBTYPE_TIMEOUT``, 60 s)."""
        options, values = _split_job_options(self.submit_tasks, given)
        plan = self.plan_type(job_type, {**(settings or {}), **values})
        requires = [*plan["requires"], *(r.strip() for r in options.pop("requires", ()))]
        name = options.pop("name", "") or plan["name"]
        return self.submit_tasks(
            plan["tasks"],
            kind=plan["kind"],
            name=name,
            requires=[r for r in requires if r],
            meta=plan["meta"],
            **options,
        )

    def plan_type(
        self, job_type: str, settings: dict[str, Any] | None = None, /, **given: Any
    ) -> dict[str, Any]:
        """What :meth:`submit_type` would submit, without submitting it: ``{"kind", "name",
        "requires", "meta", "tasks"}``. A broken job type raises JobTypeBroken, whose
        ``traceback`` says where."""
        from buildcat.jobtypes import child

        values = {**(settings or {}), **given}
        values = {key: value for key, value in values.items() if value is not None}
        return child.compile_job(self.root, job_type, values)

    def job_types(self, *, from_server: bool = False) -> list[dict[str, Any]]:
        """Every job type this client can submit (built-ins and ``<root>/jobtypes/``):
        name, source, label, description and settings (name, type, default, choices, help,
        required, minimum, maximum, label); a broken one has ``error`` and ``traceback``
        instead. Read from this client's root (in a child process), cached until a file
        changes; ``from_server`` asks the server what its root holds instead."""
        from buildcat.jobtypes import child, loading

        if from_server:
            return list(self.request("GET", "/job-types")["job_types"])

        key = loading.signature(self.root)
        if self._job_types is None or self._job_types[0] != key:
            self._job_types = (key, child.describe(self.root))
        return [dict(entry) for entry in self._job_types[1]]

    def video(
        self,
        job: Job | str,
        *,
        fps: float | str | None = None,
        priority: int = 0,
        name: str = "",
        requires: Iterable[str] = (),
    ) -> Job:
        """Make a render job's preview video after the fact: a job of one task that encodes
        the frames that exist (in frame order) into ``preview.mp4`` beside them, at ``fps``
        (default: the rate the render recorded, else its scene's). Of a render that has
        not ended, the video waits for its end (done or not: ``after_any``).
        """
        from buildcat.jobs import video

        job_id = job.id if isinstance(job, Job) else job
        status = self.job(job_id).status()
        meta = status.get("meta") or {}
        pattern, frames = _render_record(job_id, meta)
        if fps is None:
            fps = meta.get("fps") or self._scene_rate(meta)
        task = video.video_task(_pattern(pattern), parse_frames(frames), fps, depends=[])
        kwargs = task["payload"]["kwargs"]
        running = status["state"] not in FINAL_STATES
        return self.submit_tasks(
            [task],
            name=name or f"preview video of {job_id}",
            priority=priority,
            requires=requires,
            meta={"video_of": job_id, "preview_video": kwargs["video"], "fps": kwargs["fps"]},
            after=[job_id] if running else None,
            after_any=True if running else None,
        )

    def _scene_rate(self, meta: dict[str, Any]) -> float:
        from buildcat.blender import blendfile

        scene = meta.get("scene")
        if not isinstance(scene, str):
            return 24.0
        try:
            target = blendfile.read_blend(resolve(self.root, scene)).scene(meta.get("scene_name"))
        except (FarmError, OSError) as exc:
            raise FarmError(f"cannot read the frame rate of {scene} ({exc}): give --fps") from None
        return target.frame_rate

    def contact_sheet(
        self,
        job: Job | str,
        *,
        output: str | None = None,
        columns: int | None = None,
        width: int = 160,
    ) -> dict[str, Any]:
        """Thumbnails of a render job's frames (those written so far, in frame order) in a
        grid with their frame numbers, made here with Pillow (EXR through ffmpeg) and
        written as ``contact-sheet.png`` beside the frames, or at ``output`` (root-relative).
        Returns where it went, the frames on it and its layout."""
        from buildcat import imaging
        from buildcat.ffmpeg import frame_files
        from buildcat.jobs import video

        job_id = job.id if isinstance(job, Job) else job
        meta = self.job(job_id).status().get("meta") or {}
        pattern, frames = _render_record(job_id, meta)
        if columns is not None and columns < 1:
            raise FarmError(f"columns {columns}: give at least 1")
        target = output or video.media_paths(meta)["contact_sheet"]
        target = relative_in_root(self.root, target)
        found = frame_files(resolve(self.root, _pattern(pattern)), parse_frames(frames))
        if not found:
            raise FarmError(f"job {job_id} has no frames written yet under {pattern}")
        sheet = imaging.contact_sheet(found, columns=columns, width=width)
        path = resolve(self.root, target)
        path.parent.mkdir(parents=True, exist_ok=True)
        imaging.save_image(sheet, path)
        count = imaging.sheet_columns(len(found), columns)
        return {
            "path": target,
            "frames": [frame for frame, _ in found],
            "columns": count,
            "rows": -(-len(found) // count),
            "size": list(sheet.size),
        }

    def submit_tasks(
        self,
        tasks: list[dict[str, Any]],
        *,
        kind: str = "python",
        name: str = "",
        priority: int = 0,
        requires: Iterable[str] = (),
        max_attempts: int | None = None,
        common: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
        after: Iterable[Job | str] | None = None,
        after_any: bool | None = None,
        notify: str | Iterable[str] = (),
    ) -> Job:
        """Submit a job of explicit tasks (``{"payload": {...}, "depends": [i, ...]}``).

        ``after``: jobs (:class:`Job` or ids) whose end this one waits for: its tasks start
        once they are all done, and it fails (none of its tasks run) when one of them
        fails or is cancelled; with ``after_any`` it runs once they have all ended,
        whatever their state. ``None`` takes :attr:`submit_defaults`.

        ``notify``: URLs (with the client's own ``notify``) POSTed a signed notice when the
        job ends (docs/http-api.md, "Job-end notices")."""
        urls = _urls([*self.notify, *_urls(notify)])
        common = common or {}
        upstream = _job_ids(self.submit_defaults.get("after", ()) if after is None else after)
        if after_any is None:
            after_any = bool(self.submit_defaults.get("after_any", False))
        if after_any and not upstream:
            raise FarmError("after_any needs after: the jobs to run after")
        if kind == "python":
            self._check_function_files(tasks, common)
        if tasks:
            # Check here as the server will, so a mistake is one line before any upload.
            jobs.validate_payload(kind, {**common, **tasks[0].get("payload", {})})
            if common.get("function") is None:
                for task in tasks[1:]:
                    jobs.validate_payload(kind, {**common, **task.get("payload", {})})
        body: dict[str, Any] = {
            "kind": kind,
            "name": name,
            "priority": priority,
            "requires": list(requires),
            "tasks": tasks,
            "common": common,
            "owner": _owner(),
            "meta": meta or {},
            # Sent again after a lost reply, the same key finds the job instead of a second.
            "key": secrets.token_urlsafe(16),
        }
        if max_attempts is not None:
            body["max_attempts"] = max_attempts
        if timeout is not None:
            body["timeout"] = timeout
        if upstream:
            body["after"] = upstream
            body["after_any"] = after_any
        if urls:
            body["notify"] = urls
        _check_task_count(len(tasks), "split the job")
        packed = protocol.pack(body)
        _check_request_size(len(packed), len(tasks), "split the job, or put bulk data in files")
        reply = self.request("POST", "/jobs", packed=packed, retry_for=SUBMIT_RETRY_SECONDS)
        return Job(self, reply["id"])

    def _check_function_files(self, tasks: list[dict[str, Any]], common: dict[str, Any]) -> None:
        """A ``file.py:function`` must exist under this client's root: say so before queueing."""
        specs = {common.get("function")} | {t.get("payload", {}).get("function") for t in tasks}
        for spec in specs - {None}:
            target, _ = split_spec(spec)
            if target.endswith(".py") and not resolve(self.root, target).is_file():
                raise FarmError(
                    f"{target} does not exist under the farm root {self.root} "
                    "(set --root or BUILDCAT_ROOT to this machine's path to the root)"
                )

    # ---- looking ----------------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        return Job(self, job_id)

    def jobs(self, state: str | None = None, *, archived: bool = False) -> list[dict[str, Any]]:
        """Every job's view; archived jobs (``archive``) only with ``archived``."""
        query = {"state": state} if state else {}
        if archived:
            query["archived"] = "all"
        path = "/jobs" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        listed = list(self.request("GET", path)["jobs"])
        return listed if archived else [job for job in listed if not job.get("archived")]

    def workers(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/workers")["workers"])

    def ping(self) -> dict[str, Any]:
        return dict(self.request("GET", "/ping"))

    def task(self, task_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/tasks/{task_id}"))

    def log(self, task_id: str) -> str:
        """A task's whole output: its log file under the root, else the server's tail."""
        job_id = task_id.rpartition(".")[0]
        path = self.root / ".buildcat" / "logs" / job_id / f"{task_id}.log"
        try:
            return path.read_text(errors="replace")
        except OSError:
            return str(self.task(task_id).get("log", ""))

    def follow(self, target: str, interval: float = 0.25) -> Iterator[tuple[str, str]]:
        """Stream a task's (``JOB.N``) or a job's output as it is printed: yields
        ``(task_id, text)`` with whole lines, until the task or the job has ended.

        Reads the log files workers write under the root; a task whose file this machine
        cannot see gives the server's copy of its output when it ends."""
        single = target if "." in target else None
        job_id = target.rpartition(".")[0] if single else target
        offsets: dict[str, int] = {}
        while True:
            if single is not None:
                tasks = [self.task(single)]
                over = tasks[0]["state"] in FINAL_STATES
            else:
                over = self.job(job_id).status()["state"] in FINAL_STATES
                tasks = self.job(job_id).tasks()
            for task in tasks:
                text = self._read_new(task["id"], offsets, whole=over)
                if text:
                    yield task["id"], text
            if over:
                for task in tasks:
                    if task["id"] not in offsets and task["state"] in FINAL_STATES:
                        text = str(self.task(task["id"]).get("log", ""))
                        if text:
                            yield task["id"], text if text.endswith("\n") else text + "\n"
                return
            time.sleep(interval)

    def _read_new(self, task_id: str, offsets: dict[str, int], whole: bool) -> str:
        path = self.root / ".buildcat" / "logs" / task_id.rpartition(".")[0] / f"{task_id}.log"
        try:
            with open(path, "rb") as handle:
                handle.seek(offsets.get(task_id, 0))
                data = handle.read()
        except OSError:
            return ""
        if not whole:
            data = data[: data.rfind(b"\n") + 1]  # a line still being written waits
        offsets[task_id] = offsets.get(task_id, 0) + len(data)
        text = data.decode("utf-8", errors="replace")
        return text if not text or text.endswith("\n") else text + "\n"

    def dashboard_url(self) -> str:
        """The link that logs a browser into this farm's dashboard: with a named token, the
        link of that token (its role's rights); with the farm secret, the dashboard key's."""
        if self.named_token:
            self.whoami()  # a revoked or unknown token says so here, not in the browser
            return f"{self.address}/login?token={urllib.parse.quote(self.token, safe='')}"
        reply = self.request("GET", "/dashboard")
        return f"{self.address}/login?key={reply['key']}"

    def revoke_dashboard(self) -> str:
        """A new dashboard key: every login link and every browser's cookie stops working
        (the farm secret stays). Returns the new login link."""
        reply = self.request("POST", "/dashboard/revoke", {})
        return f"{self.address}/login?key={reply['key']}"

    def notices(self) -> list[dict[str, Any]]:
        """The job-end notices the server still owes (not yet delivered or given up)."""
        return list(self.request("GET", "/notices"))

    def events(
        self, *, until_job: str | None = None, count: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The farm's job and worker events as they happen (``GET /api/v1/events/feed``):
        yields one dict per event (``{"event": "job.done", "time": ..., "job": {...}}``)
        until the server stops, ``count`` events were yielded, or the job ``until_job``
        ends (its ending event is the last). The first is always ``{"event": "hello",
        "farm": NAME, ...}``, once the stream is open (not counted by ``count``); when
        ``until_job`` has ended already, it is the only one. Raises ConnectionFailed when
        the server goes silent."""
        connection = self._connect(STREAM_SILENCE_SECONDS)
        self._connection = None  # the stream has this connection to itself
        try:
            connection.request(
                "GET", protocol.API_PREFIX + "/events/feed",
                headers={"Accept": "application/x-ndjson", **self._auth_headers()},
            )  # fmt: skip
            response = connection.getresponse()
            if response.status >= 400:
                raise _refusal(response.status, response.read())
            yielded = 0
            while count is None or yielded < count:
                try:
                    raw = response.readline()
                except (TimeoutError, OSError, http.client.HTTPException) as exc:
                    raise ConnectionFailed(
                        f"the event stream from {self.host}:{self.port} stopped: {exc}"
                    ) from None
                if not raw:
                    return  # the server stopped
                if not raw.strip():
                    continue  # a heartbeat
                event = json.loads(raw)
                name = event.get("event")
                if name == "hello":  # the stream is open: what happens from now on follows
                    yield event
                    if until_job is not None:
                        state = self.job(until_job).status()["state"]
                        if state in FINAL_STATES:
                            return
                    continue
                if name == "lost":
                    raise FarmError(f"the event stream ended: {event.get('reason', '')}")
                yield event
                yielded += 1
                job = event.get("job")
                if (
                    until_job is not None
                    and isinstance(job, dict)
                    and job.get("id") == until_job
                    and name in (f"job.{state}" for state in FINAL_STATES)
                ):
                    return
        except (ConnectionError, http.client.HTTPException) as exc:
            raise ConnectionFailed(
                f"cannot read the event stream from {self.host}:{self.port} ({exc})"
            ) from None
        finally:
            connection.close()

    # ---- tidying the job list, running one task again ------------------------------------

    def archive(self, job: Job | str) -> dict[str, Any]:
        """Hide an ended job from the default lists (``farm status``, the dashboard); it is
        kept, and ``unarchive`` shows it again. Returns its view."""
        return dict(self.request("POST", f"/jobs/{_quoted(job)}/archive", {}))

    def unarchive(self, job: Job | str) -> dict[str, Any]:
        """Show an archived job in the default lists again. Returns its view."""
        return dict(self.request("POST", f"/jobs/{_quoted(job)}/unarchive", {}))

    def delete(self, job: Job | str) -> str:
        """Forget an ended job for good, with its logs; its outputs stay where they are.
        Returns its id."""
        return str(self.request("DELETE", f"/jobs/{_quoted(job)}")["deleted"])

    def requeue_task(self, task_id: str) -> dict[str, Any]:
        """Run one task (``JOB.N``) again, and the tasks that used its result (a stitch, a
        preview video): its job is unfinished again until they are done. A running task is
        stopped on its worker and run afresh. Returns the task's view."""
        return dict(
            self.request("POST", f"/tasks/{urllib.parse.quote(task_id, safe='')}/requeue", {})
        )

    # ---- people -------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        """Who this client's credential is: ``{"name", "role", "via"}`` (``via``:
        ``secret`` or ``token``)."""
        return dict(self.request("GET", "/whoami"))

    def add_token(self, name: str, role: str) -> dict[str, Any]:
        """Make a named token for a person (admins only): ``role`` is ``viewer``, ``artist``
        or ``admin``. Returns ``{"name", "role", "token"}``: the token's text is shown this
        once (the server keeps only its hash)."""
        return dict(self.request("POST", "/tokens", {"name": name, "role": role}))

    def tokens(self) -> list[dict[str, Any]]:
        """The named tokens (admins only): ``{"name", "role", "created_at", "created_by"}``."""
        return list(self.request("GET", "/tokens")["tokens"])

    def revoke_token(self, name: str) -> dict[str, Any]:
        """Revoke a named token (admins only): its next request, and its dashboard
        cookies', are refused."""
        return dict(self.request("DELETE", f"/tokens/{urllib.parse.quote(name, safe='')}"))

    # ---- steering workers (by name) ---------------------------------------------------------

    def _worker_action(self, name: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"/workers/{urllib.parse.quote(name, safe='')}/{action}"
        return dict(self.request("POST", path, body))

    def drain_worker(self, name: str) -> dict[str, Any]:
        """Let the worker finish what it runs and take nothing more (``enable_worker``
        undoes it). Returns its view."""
        return self._worker_action(name, "drain", {})

    def disable_worker(self, name: str) -> dict[str, Any]:
        """Take nothing more, and give back what it runs now: its tasks are stopped there
        and go back to the queue (not counted as failed attempts). Returns its view."""
        return self._worker_action(name, "disable", {})

    def enable_worker(self, name: str) -> dict[str, Any]:
        """Undo ``drain_worker`` and ``disable_worker``. Returns its view."""
        return self._worker_action(name, "enable", {})

    def requeue_worker(self, name: str) -> dict[str, Any]:
        """Put the worker's current tasks back in the queue (stopped there, not counted as
        failed attempts); it stays enabled. Returns its view (``requeued``: how many)."""
        return self._worker_action(name, "requeue", {})

    def forget_worker(self, name: str) -> str:
        """Drop a departed worker from the lists, with its settings (409 while online).
        Returns its name."""
        return str(self._worker_action(name, "forget", {})["forgotten"])

    def set_worker_schedule(
        self,
        name: str,
        schedule: str,
        *,
        timezone: str | None = None,
        give_back: bool = False,
    ) -> dict[str, Any]:
        """When the worker takes work: ``"mon-fri 19:00-08:00; sat,sun 00:00-24:00"`` in
        ``timezone`` (default: the worker's own), ``""`` to clear. With ``give_back`` its
        running tasks go back to the queue when the schedule ends (otherwise they finish).
        This setting wins over the worker's own ``--schedule``. Returns its view."""
        body: dict[str, Any] = {"schedule": schedule, "give_back": give_back}
        if timezone:
            body["timezone"] = timezone
        return self._worker_action(name, "schedule", body)

    def worker_info(self, timeout: float | None = 60.0) -> dict[str, Any]:
        """What one worker reports about itself (host, platform, Python, root, slots)."""
        job = self.submit("buildcat.jobs.builtin:worker_info", after=())  # never held back
        job.wait(timeout=timeout)
        return dict(job.results()[0])


#: What a results reply holds in place of a result the server cannot read (its file is
#: missing or damaged): ``{"$result-error": why}`` (see ``server/resultstore.py``).
_RESULT_ERROR = "$result-error"


class ResultUnavailable(FarmError):
    """Results of a job that the server cannot read (their files are missing or damaged);
    ``problems`` maps each such task's index to why."""

    def __init__(self, job_id: str, problems: dict[int, str]) -> None:
        first = next(iter(problems.values()))
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"job {job_id}: {first}{more}")
        self.job_id = job_id
        self.problems = problems


class Job:
    """A handle on a submitted job."""

    def __init__(self, client: Client, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"<buildcat.Job {self.id}>"

    def status(self) -> dict[str, Any]:
        """The job's state, task counts by state and progress."""
        return dict(self.client.request("GET", f"/jobs/{self.id}"))

    def perf(self) -> dict[str, Any]:
        """Tasks per hour overall and per worker, mean task time, worker utilisation, and
        each rendered frame's record (``frames``)."""
        results = self.client.request("GET", f"/jobs/{self.id}/results")["results"]
        return job_perf(self.status(), self.tasks(), self.client.workers(), list(results))

    def tasks(self) -> list[dict[str, Any]]:
        return list(self.client.request("GET", f"/jobs/{self.id}/tasks")["tasks"])

    def wait(
        self,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        interval: float = 10.0,
    ) -> dict[str, Any]:
        """Block until the job ends; raises JobFailed unless it is done.

        ``on_update`` is called with the status at least every ``interval`` seconds
        (progress displays pass a short one).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = interval
            if deadline is not None:
                step = min(step, max(0.0, deadline - time.monotonic()))
            status = dict(
                self.client.request(
                    "GET", f"/jobs/{self.id}/wait?timeout={step:.3f}", timeout=step + 30
                )
            )
            if on_update is not None:
                on_update(status)
            if status["state"] in FINAL_STATES:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(f"job {self.id} still {status['state']} after {timeout}s")
        if status["state"] != "done":
            raise JobFailed(
                self.id, status["state"], status.get("error", ""), status.get("traceback", "")
            )
        return status

    def results(self) -> list[Any]:
        """Return values of the tasks, in task order (waits for the job first).

        Raises ResultUnavailable, naming each task, when some results cannot be read (their
        files on the server are missing or damaged); :meth:`result` reads the others."""
        unreadable: dict[int, str] = {}
        values = list(self._results(wait=True, on_error=unreadable))
        if unreadable:
            raise ResultUnavailable(self.id, unreadable)
        return values

    def iter_results(self, offset: int = 0, limit: int | None = None) -> Iterator[Any]:
        """The tasks' return values one at a time, in task order, read as the server streams
        them (waits for the job first): the job's results need not fit in memory at once.
        ``offset`` and ``limit`` take a part of them. Raises ResultUnavailable at a task
        whose result cannot be read."""
        return self._results(wait=True, offset=offset, limit=limit)

    def result(self, index: int) -> Any:
        """The return value of one task (by its index in the job), waiting for the job
        first; ResultUnavailable when that task's result cannot be read."""
        for value in self._results(wait=True, offset=index, limit=1):
            return value
        raise FarmError(f"job {self.id} has no task {index}")

    def _results(
        self,
        *,
        wait: bool,
        offset: int = 0,
        limit: int | None = None,
        on_error: dict[int, str] | None = None,
    ) -> Iterator[Any]:
        """The results streamed from the server; an unreadable one raises, or with
        ``on_error`` is noted there (by task index) and yields None."""
        query = f"?offset={offset}" + (f"&limit={limit}" if limit is not None else "")
        for attempt in (1, 2):
            index = offset
            stream = self.client.stream("GET", f"/jobs/{self.id}/results{query}")
            try:
                for piece in stream:
                    if piece[0] == "field":
                        if piece[1] == "state" and piece[2] != "done" and wait and attempt == 1:
                            break  # abandoned: the connection goes, the job is waited for
                        continue
                    value = piece[1]
                    if isinstance(value, dict) and len(value) == 1 and _RESULT_ERROR in value:
                        if on_error is None:
                            raise ResultUnavailable(self.id, {index: str(value[_RESULT_ERROR])})
                        on_error[index] = str(value[_RESULT_ERROR])
                        value = None
                    yield value
                    index += 1
                else:
                    return
            finally:
                stream.close()
            self.wait()

    def cancel(self) -> dict[str, Any]:
        return dict(self.client.request("POST", f"/jobs/{self.id}/cancel"))

    def retry(self) -> dict[str, Any]:
        """Run a failed or cancelled job's unfinished tasks again."""
        return dict(self.client.request("POST", f"/jobs/{self.id}/retry"))

    def unblock(self, worker: str | None = None) -> dict[str, Any]:
        """Let a blocked worker (or all of them) take this job's tasks again."""
        body = {"worker": worker} if worker else {}
        return dict(self.client.request("POST", f"/jobs/{self.id}/unblock", body))

    def pause(self) -> dict[str, Any]:
        return dict(self.client.request("POST", f"/jobs/{self.id}/pause"))

    def set_priority(self, priority: int) -> dict[str, Any]:
        """Move the job up (higher) or down the queue; returns its status."""
        return dict(
            self.client.request("POST", f"/jobs/{self.id}/priority", {"priority": priority})
        )

    def resume(self) -> dict[str, Any]:
        return dict(self.client.request("POST", f"/jobs/{self.id}/resume"))

    def video(self, fps: float | str | None = None, priority: int = 0) -> Job:
        """A preview video of this render's frames written so far (``Client.video``)."""
        return self.client.video(self, fps=fps, priority=priority)

    def contact_sheet(
        self, output: str | None = None, columns: int | None = None, width: int = 160
    ) -> dict[str, Any]:
        """A contact sheet of this render's frames, made here (``Client.contact_sheet``)."""
        return self.client.contact_sheet(self, output=output, columns=columns, width=width)


def connect(
    host: str | None = None,
    port: int | None = None,
    root: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
    *,
    token: str | None = None,
    tls_ca: str | os.PathLike[str] | None = None,
    farm: str | None = None,
    notify: str | Iterable[str] = (),
) -> Client:
    """Connect to a farm (``FARM_HOST``/``FARM_PORT``/``BUILDCAT_ROOT`` fill in blanks).

    With no host the farm is found on the LAN (``farm`` names it when there are several).
    """
    return Client(
        host=host, port=port, root=root, timeout=timeout, token=token, tls_ca=tls_ca, farm=farm,
        notify=notify,
    )  # fmt: skip


def _refusal(status: int, payload: bytes) -> FarmError:
    """The error a refused request's reply names."""
    try:
        reply = json.loads(payload) if payload else {}
    except ValueError:
        reply = {}
    reason = (reply.get("error") if isinstance(reply, dict) else None) or f"HTTP {status}"
    if status == 401:
        return NotAuthorized(401, f"the farm server refused the farm secret: {reason}")
    return RequestRejected(status, reason)


def _urls(notify: str | Iterable[str]) -> list[str]:
    """Notify URLs checked as the server checks them (a bad one is one line, before any
    upload)."""

    return protocol.check_urls([notify] if isinstance(notify, str) else list(notify))


def _check_task_count(count: int, advice: str) -> None:
    if count > protocol.MAX_TASKS_PER_JOB:
        raise LimitError(
            f"this job would be {count:,} tasks; a job may have at most "
            f"{protocol.MAX_TASKS_PER_JOB:,}: {advice}"
        )


def _split_job_options(
    submit: Callable[..., Any], given: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a job type's keywords into the submit options ``submit`` takes (priority,
    name, requires, ... whatever this client's submit_tasks has) and the settings."""
    import inspect

    taken = set(inspect.signature(submit).parameters) - {"tasks", "kind", "common", "meta"}
    options = {key: value for key, value in given.items() if key in taken}
    return options, {key: value for key, value in given.items() if key not in taken}


def _quoted(job: Job | str) -> str:
    """A job id as it goes in a route's path."""
    return urllib.parse.quote(job.id if isinstance(job, Job) else str(job), safe="")


def _job_ids(jobs: Iterable[Job | str]) -> list[str]:
    """Job ids from Job handles or ids (each once, in order)."""
    if isinstance(jobs, (str, Job)):
        jobs = [jobs]  # one job given alone
    ids: list[str] = []
    for job in jobs:
        job_id = job.id if isinstance(job, Job) else job
        if not isinstance(job_id, str) or not job_id.strip():
            raise FarmError(f"after: {job!r} is not a job or a job id")
        ids.append(job_id.strip())
    return list(dict.fromkeys(ids))


def _function_spec(function: str | Callable[..., Any]) -> str:
    if isinstance(function, str):
        return function
    module = getattr(function, "__module__", None)
    name = getattr(function, "__qualname__", None)
    if not module or not name or "<" in name or module == "__main__":
        raise FarmError(
            f"{function!r} is not importable on a worker: pass 'module:function' or define "
            "it in a module the workers can import"
        )
    return f"{module}:{name}"


#: With the farm secret: the person a request is made for (the job's history says so).
USER_HEADER = "X-Buildcat-User"
#: What a named token begins with (server/tokens.py).
TOKEN_PREFIX = "bc_"
_USER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@functools.cache
def _user_name() -> str:
    """This process's login, if it can name a person in a header (else "")."""
    login = _owner().partition("@")[0]
    return login if _USER_NAME.fullmatch(login) else ""


def _owner() -> str:
    """``login@host``: the terminal's login, else $USER, else the name the OS has for this
    process's user (tmux, systemd and containers often set no $USER)."""
    try:
        login = os.getlogin()
    except OSError:
        login = os.environ.get("USER", "")
    if not login:
        login = platform.user_name()
    return f"{login}@{socket.gethostname()}"


def _pattern(output: str) -> str:
    """An output pattern without the image extension it may end in."""
    from buildcat.blender import output_settings

    return output_settings.split_extension(output)[0]


def _render_record(job_id: str, meta: dict[str, Any]) -> tuple[str, str]:
    """A render job's output pattern and frame spec, from its record."""
    pattern, frames = meta.get("output"), meta.get("frames")
    if not isinstance(pattern, str) or not isinstance(frames, str):
        raise FarmError(f"job {job_id} is not a render job: it records no frames to use")
    return pattern, frames
