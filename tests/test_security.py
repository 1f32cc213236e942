"""The farm secret, TLS and the root's walls, against real ``farm`` processes on loopback."""

from __future__ import annotations

import http.client
import itertools
import json
import multiprocessing
import os
import re
import secrets
import selectors
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import trustme

import buildcat
from buildcat import auth, launch
from buildcat.protocol import API_PREFIX as API
from buildcat.server.app import ServerConfig, create_app
from buildcat.server.app import routes as api_routes
from tests.conftest import Farm, secret_header, unused_port, wait_for

HERE = Path(__file__).parent
LOGIN_PAGE = resources.files("buildcat.server").joinpath("dashboard", "login.html").read_bytes()


#: Routes anyone may fetch: the login page, the login link's check and the page's own files.
#: Every other route the server registers must answer 401 without the secret.
PUBLIC_ROUTES = {
    (method, path)
    for method in ("GET", "HEAD")
    for path in ("/", "/login", "/dashboard/{name}", "/dashboard/{folder}/{name}")
}
#: aiohttp's pattern for a plain ``{name}`` placeholder: one path segment.
ANY_SEGMENT = "[^{}/]+"


def _placeholders(pattern: str) -> dict[str, str]:
    """The named groups of a route's regex, each with its own regex (nesting allowed)."""
    groups = {}
    for match in re.finditer(r"\(\?P<(\w+)>", pattern):
        depth, index = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(pattern[index], 0)
            index += 1
        groups[match[1]] = pattern[match.end() : index - 1]
    return groups


def registered_routes(scratch: Path, values: dict[str, list[str]]) -> list[tuple[str, str, str]]:
    """Every route the server's application registers, as ``(method, route, path)``: the
    route as registered and a concrete path for each real value of each placeholder
    (``values[name]``) and each alternative of a regex placeholder (``{action:a|b}``)."""
    scratch.mkdir(exist_ok=True)
    # The very application ``farm server`` runs; no journal and a given token, so building
    # it touches nothing on disk.
    app = create_app(ServerConfig(root=scratch, journal=False, discovery=False, token="t" * 32))
    found = []
    for route in app.router.routes():
        info = route.resource.get_info()  # type: ignore[union-attr]
        if "path" in info:
            found.append((route.method, info["path"], info["path"]))
            continue
        pattern, template = info["pattern"], info["formatter"]
        choices = {}
        for name, regex in _placeholders(pattern.pattern).items():
            if regex == ANY_SEGMENT:
                assert values.get(name), f"no real value for {{{name}}} in {template}"
                choices[name] = values[name]
            else:
                assert re.fullmatch(r"[\w-]+(\|[\w-]+)*", regex), (template, regex)
                choices[name] = regex.split("|")
        assert set(choices) == set(re.findall(r"\{(\w+)\}", template)), template
        for combination in itertools.product(*choices.values()):
            path = template.format(**dict(zip(choices, combination, strict=True)))
            assert pattern.fullmatch(path), (path, pattern)  # the path reaches this route
            found.append((route.method, template, path))
    # Deregistering the worker goes last, so the routes that need it find it.
    found.sort(key=lambda entry: entry[0] == "DELETE")
    return found


def fetch(
    port: int, method: str, path: str, headers: dict[str, str]
) -> tuple[int, bytes, dict[str, str]]:
    """One request; for the routes that read a body, one that is no msgpack at all (0xc1 is
    never used), so nothing is submitted or changed; only the first line of an event stream or
    feed."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = b"\xc1" if method in ("POST", "PUT", "PATCH", "DELETE") else None
        connection.request(
            method, path, body=body, headers={"Content-Type": "application/msgpack", **headers}
        )
        response = connection.getresponse()
        replied = dict(response.getheaders())
        if replied.get("Content-Type", "").startswith(
            ("text/event-stream", "application/x-ndjson")
        ):
            return response.status, response.readline(), replied
        return response.status, response.read(), replied
    finally:
        connection.close()


def status_of(port: int, method: str, path: str, headers: dict[str, str]) -> int:
    return fetch(port, method, path, headers)[0]


def test_the_secret_is_created_once_with_mode_0600_and_never_logged(jobs_farm: Farm) -> None:
    farm = jobs_farm
    secret_file = farm.root / ".buildcat" / "secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    token = secret_file.read_text().strip()
    assert len(token) >= 32
    # A restart keeps the same secret: workers and clients need not be told again.
    launch.stop(farm.server)  # type: ignore[arg-type]
    farm.start_server()
    assert secret_file.read_text().strip() == token
    farm.start_worker("--no-blender")
    assert farm.client().map("farm_jobs:square", [3]).results() == [9]
    farm.stop()
    for log in farm.logs.glob("*.log"):
        assert token not in log.read_text(errors="replace"), log.name


@pytest.mark.parametrize("farm", [("--name", "farm-name-nobody-outside-may-see")], indirect=True)
def test_every_route_answers_401_without_the_right_secret(farm: Farm, tmp_path: Path) -> None:
    farm_name = "farm-name-nobody-outside-may-see"
    shutil.copy(HERE / "farm_jobs.py", farm.root / "farm_jobs.py")
    farm.start_worker("--no-blender", name="member-worker")
    client = farm.client()
    # Real values for every placeholder: a job with a thumbnail, its task, a worker.
    job = client.map("farm_jobs:frame_image", ["frames/one.png"])
    job.wait(timeout=60)
    task_id = job.tasks()[0]["id"]
    (worker,) = client.workers()
    members = secret_header(farm.root)
    token = members["Authorization"].split()[1]
    page = resources.files("buildcat.server").joinpath("dashboard")
    folders = [page, *(entry for entry in page.iterdir() if entry.is_dir())]
    assets = sorted(
        {entry.name for folder in folders for entry in folder.iterdir() if entry.is_file()}
    )
    routes = registered_routes(
        tmp_path / "scratch",
        {"job": [job.id], "task": [task_id], "worker": [worker["id"]], "name": assets},
    )

    # The walk cannot be silently empty or partial: the API table, the event stream,
    # thumbnails, /metrics, the dashboard pages and every job action are all in it.
    registered = {(method, route) for method, route, _ in routes}
    for definition in api_routes:
        plain = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", definition.path)  # type: ignore[attr-defined]
        assert (definition.method, plain) in registered, definition  # type: ignore[attr-defined]
    for must in (
        ("GET", f"{API}/events"), ("GET", f"{API}/jobs/{{job}}/thumbnail"), ("GET", "/metrics"),
        ("GET", f"{API}/jobs/{{job}}/wait"), ("DELETE", f"{API}/workers/{{worker}}"),
        ("POST", f"{API}/workers/{{worker}}/lease"), *PUBLIC_ROUTES,
    ):  # fmt: skip
        assert must in registered, must
    paths = {(method, path) for method, _, path in routes}
    for action in ("cancel", "pause", "resume", "retry", "unblock", "priority"):
        assert ("POST", f"{API}/jobs/{job.id}/{action}") in paths, action
    for name in ("js/main.js", "index.html", "login.html", "css/dashboard.css"):
        assert ("GET", f"/dashboard/{name}") in paths, name
    assert len(routes) >= 40

    cookie = f"buildcat_dashboard_{farm.port}"
    salt = (farm.root / ".buildcat" / "dashboard").read_text().strip()
    login_key = auth.dashboard_key(token, salt)
    wrong_credentials: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer " + "x" * 43},
        {"Authorization": f"Basic {token}"},
        {"Authorization": f"Bearer {token[:-1]}"},
        {"Authorization": f"Bearer {token}x"},
        {"Cookie": f"{cookie}=" + "0" * 32},
        {"Cookie": f"{cookie}={token}"},  # the secret is not the dashboard cookie
        {"Cookie": f"{cookie}={login_key}"},  # nor is the login link's key
        {"Cookie": f"{cookie}=9999999999.{login_key}"},
        {"Cookie": f"buildcat_dashboard={login_key}"},  # as older releases set it
    ]
    never_shown = [job.id.encode(), worker["id"].encode(), b"member-worker", farm_name.encode()]
    never_shown += [token.encode(), login_key.encode(), b"\x89PNG", b"event:"]
    protected = [(m, r, p) for m, r, p in routes if (m, r) not in PUBLIC_ROUTES]
    assert len(protected) >= 30
    for method, _, path in protected:
        for headers in wrong_credentials:
            status, body, _ = fetch(farm.port, method, path, headers)
            assert status == 401, (method, path, headers)
            if method != "HEAD":  # a 401 says why, and nothing else
                assert set(json.loads(body)) == {"error"}, (method, path)
                assert b"missing or wrong farm secret" in body, (method, path)
            assert not any(secret in body for secret in never_shown), (method, path, body)
        status, body, _ = fetch(farm.port, method, path, members)
        assert status != 401, (method, path)
        assert b"no such route" not in body, (method, path)  # the path reached its route
        if method == "POST":  # its handler read the body, and refused it
            assert status == 400 and b"msgpack" in body, (path, body)
        if path == f"{API}/events" and method == "GET":
            assert body == b"event: update\n"
        if path == f"{API}/jobs/{job.id}/thumbnail" and method == "GET":
            assert body.startswith(b"\x89PNG") and status == 200

    # Hundreds of requests later the farm is as it was: one job, done.
    assert [view["id"] for view in client.jobs()] == [job.id]
    assert job.status()["state"] == "done"

    # The public routes give no farm data away: the login page, a refused key, and the
    # dashboard's own files exactly as they ship.
    public = [(m, p) for m, r, p in routes if (m, r) in PUBLIC_ROUTES]
    assert len(public) == 2 * (2 + len(assets) * 3)  # /, /login; NAME, css/NAME, js/NAME
    for method, path in public:
        status, body, headers = fetch(farm.port, method, path, {})
        assert "Set-Cookie" not in headers, path
        assert not any(secret in body for secret in never_shown), (method, path)
        if method == "HEAD":
            continue
        if path.startswith("/dashboard/"):
            shipped = resources.files("buildcat.server").joinpath(
                "dashboard", *path[11:].split("/")
            )
            if not shipped.is_file():  # a name from another folder (css/main.js)
                assert status == 404, path
                continue
            assert (status, body) == (200, shipped.read_bytes()), path
        elif path == "/":
            assert status == 200 and body == LOGIN_PAGE
        else:  # /login without a key
            assert status == 401 and b"not this farm's" in body
    for key in ("0" * 32, token, login_key[:-1], auth.dashboard_key(token)):
        status, body, headers = fetch(farm.port, "GET", f"/login?key={key}", {})
        assert status == 401 and "Set-Cookie" not in headers
        assert not any(secret in body for secret in never_shown)
    # The page's files are the only ones served: nothing else from the package or the root.
    for sneaky in ("/dashboard/..%2Fapp.py", "/dashboard/%2E%2E", "/dashboard/..%2F..%2Fauth.py"):
        status, body, _ = fetch(farm.port, "GET", sneaky, {})
        assert status in (401, 404), sneaky
        assert b"import" not in body
    # Routes that do not exist give nothing away either.
    assert status_of(farm.port, "GET", "/api/v1/nothing-here", {}) == 401
    assert status_of(farm.port, "GET", "/api/v1/nothing-here", members) == 404


def test_a_client_without_the_secret_runs_nothing(jobs_farm: Farm, tmp_path: Path) -> None:
    farm = jobs_farm
    farm.start_worker("--no-blender")
    elsewhere = tmp_path / "not-the-root"
    elsewhere.mkdir()
    missing = farm.cli(
        "submit", "python", "farm_jobs:write_file", "x.txt", "hi", "--root", str(elsewhere)
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0
    assert "no farm secret at" in missing.stderr and "--token" in missing.stderr
    wrong = farm.cli("submit", "python", "farm_jobs:write_file", "x.txt", "hi", FARM_TOKEN="w" * 43)
    assert wrong.returncode == 1
    assert "refused the farm secret" in wrong.stderr
    assert wrong.stderr.strip().count("\n") == 0
    assert farm.client().jobs() == []
    assert not (farm.root / "x.txt").exists()
    # The same command with the root's secret goes through.
    good = farm.cli("submit", "python", "farm_jobs:write_file", "x.txt", "hi", "--wait")
    assert good.returncode == 0, good.stderr
    assert (farm.root / "x.txt").read_text() == "hi"


def test_a_worker_with_a_wrong_secret_is_refused_and_says_why(jobs_farm: Farm) -> None:
    farm = jobs_farm
    job = farm.client().map("farm_jobs:square", [2])
    worker = farm.start_worker("--no-blender", "--token", "w" * 43, name="intruder")
    assert worker.wait(30) == 1
    log = farm.log_text("intruder")
    assert "refused this worker's farm secret" in log
    assert "Traceback" not in log
    assert job.status()["tasks"]["queued"] == 1
    assert farm.client().workers() == []


def test_token_given_to_the_server_and_clients(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "farm_jobs.py").write_text((HERE / "farm_jobs.py").read_text())
    farm = Farm(root=root, logs=tmp_path / "logs")
    token = "a-farm-secret-from-the-vault-0123456789"
    farm.start_server("--token", token)
    try:
        assert not (root / ".buildcat" / "secret").exists()
        farm.start_worker("--no-blender", "--token", token)
        with buildcat.connect("127.0.0.1", farm.port, root, token=token) as client:
            assert client.map("farm_jobs:square", [5]).results() == [25]
        refused = farm.cli("status")
        assert refused.returncode == 1 and "no farm secret" in refused.stderr
        assert farm.cli("status", FARM_TOKEN=token).returncode == 0
        short = farm.cli("status", FARM_TOKEN="short")
        assert short.returncode == 1 and "at least 16" in short.stderr
    finally:
        farm.stop()


def test_the_server_warns_when_others_can_read_the_secret_file(jobs_farm: Farm) -> None:
    farm = jobs_farm
    secret_file = farm.root / ".buildcat" / "secret"
    token = secret_file.read_text().strip()
    launch.stop(farm.server)  # type: ignore[arg-type]
    before = len(farm.log_text("server"))
    assert "readable by others" not in farm.log_text("server")  # mode 0600: no warning
    secret_file.chmod(0o644)
    farm.start_server(port=farm.port)
    started = farm.log_text("server")[before:]
    warnings = [line for line in started.splitlines() if "readable by others" in line]
    assert len(warnings) == 1, started
    assert "WARNING" in warnings[0]
    assert str(secret_file) in warnings[0] and "mode 644" in warnings[0]
    leaked = token in started
    assert not leaked, "the server logged the secret"
    # A warning, not a refusal: the farm still runs for its members.
    farm.start_worker("--no-blender")
    assert farm.client().map("farm_jobs:square", [6]).results() == [36]


def _race_for_the_secret(barrier: Any, roots: list[str], results: Any) -> None:
    """One racer (its own process): for each fresh root, wait at the barrier with the others,
    then create-or-read the secret at the same moment they do."""
    tokens = []
    for root in roots:
        barrier.wait()
        tokens.append(auth.ensure_secret(root))
    results.put(tokens)


def test_processes_creating_the_secret_at_once_all_get_the_one_on_disk(tmp_path: Path) -> None:
    racers, rounds = 4, 25
    roots = [tmp_path / f"root-{number}" for number in range(rounds)]
    for root in roots:
        root.mkdir()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(racers, timeout=120)
    results = context.Queue()
    processes = [
        context.Process(target=_race_for_the_secret, args=(barrier, list(map(str, roots)), results))
        for _ in range(racers)
    ]
    for process in processes:
        process.start()
    for process in processes:  # a racer that fails breaks the barrier: all of them end
        process.join(180)
        if process.is_alive():
            process.kill()
            process.join()
    assert [process.exitcode for process in processes] == [0] * racers
    collected = [results.get(timeout=10) for _ in processes]
    for number, root in enumerate(roots):
        state = root / ".buildcat"
        on_disk = (state / "secret").read_text().strip()
        assert {tokens[number] for tokens in collected} == {on_disk}, f"round {number}"
        assert stat.S_IMODE((state / "secret").stat().st_mode) == 0o600
        assert [entry.name for entry in state.iterdir()] == ["secret"]  # no temporary left


#: ``farm server`` (the ``farm`` command's own entry point) that loads what it needs, says
#: "armed", and starts only when the test fires one byte down its stdin: with the imports
#: done, two of them reach the secret within a hair of each other.
ARMED_FARM = (
    "import sys\n"
    "import buildcat.cli\n"
    "import buildcat.server.app\n"
    "print('armed', flush=True)\n"
    "sys.stdin.buffer.read(1)\n"
    "sys.argv[0] = 'farm'\n"
    "buildcat.cli.main()\n"
)


def _read_until(process: subprocess.Popen[bytes], wanted: re.Pattern[bytes]) -> re.Match[bytes]:
    assert process.stdout is not None
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if selector.select(timeout=1):
                line = process.stdout.readline()
                assert line, f"the process ended: {seen!r}"
                seen += line
                if found := wanted.search(line):
                    return found
    raise AssertionError(f"not seen within 60 s: {wanted.pattern!r} in {seen!r}")


def test_two_servers_starting_at_once_on_a_fresh_root_agree_on_one_secret(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    logs = [tmp_path / f"server-{n}.log" for n in (1, 2)]
    servers: list[tuple[subprocess.Popen[bytes], int]] = []
    handles = [log.open("wb") for log in logs]
    try:
        for number, handle in enumerate(handles):
            command = [
                sys.executable, "-c", ARMED_FARM, "server", "--bind", "127.0.0.1",
                "--port", str(unused_port(avoid={p for _, p in servers})), "--root", str(root),
                "--state-dir", str(tmp_path / f"state-{number}"), "--no-discovery",
            ]  # fmt: skip
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=handle
            )
            servers.append((process, int(command[command.index("--port") + 1])))
        for process, _ in servers:
            _read_until(process, re.compile(rb"^armed$"))
        for process, _ in servers:  # the starting gun, to both at once
            assert process.stdin is not None
            process.stdin.write(b"g")
            process.stdin.flush()
        for process, port in servers:
            assert int(_read_until(process, launch.LISTENING)["port"]) == port
        members = secret_header(root)
        for _, port in servers:
            assert status_of(port, "GET", f"{API}/ping", members) == 200, port
            assert status_of(port, "GET", f"{API}/ping", {"Authorization": "Bearer x"}) == 401
        created = [log.read_text().count("created the farm secret") for log in logs]
        assert sorted(created) == [0, 1]  # one created it, the other read it
        # No temporary left; beside the secret, the dashboard's salt, the farm's TLS and
        # the record of where the server listens (whose own temporary lives for the instant
        # of each beat's rename).
        left = (entry.name for entry in (root / ".buildcat").iterdir())
        assert sorted(name for name in left if not name.startswith(".server.json.")) == [
            "dashboard",
            "secret",
            "server.json",
            "tls.json",
        ]
        # And on one dashboard salt: both print the same link.
        keys = {json.loads(fetch(port, "GET", f"{API}/dashboard", members)[1])["key"]
                for _, port in servers}  # fmt: skip
        assert len(keys) == 1, keys
    finally:
        for process, _ in servers:
            launch.stop(process)
            if process.stdin is not None:
                process.stdin.close()
        for handle in handles:
            handle.close()


def test_a_new_secret_logs_every_browser_out(jobs_farm: Farm) -> None:
    farm = jobs_farm
    job = farm.client().map("farm_jobs:square", [2])  # no worker: it stays queued
    old_link = farm.cli("dashboard").stdout.strip()
    login = old_link.split(str(farm.port), 1)[1]
    status, _, headers = fetch(farm.port, "GET", login, {})
    assert status == 303
    old = {"Cookie": headers["Set-Cookie"].split(";")[0]}
    steer = {**old, "X-Buildcat-Dashboard": "1"}
    assert fetch(farm.port, "GET", "/", old)[1].count(b"js/main.js") == 1  # logged in
    assert fetch(farm.port, "GET", f"{API}/jobs", old)[0] == 200
    assert fetch(farm.port, "GET", f"{API}/events", old)[:2] == (200, b"event: update\n")
    old_secret = (farm.root / ".buildcat" / "secret").read_text().strip()

    # Changing the secret as docs/security.md says: stop, delete the file, start.
    launch.stop(farm.server)  # type: ignore[arg-type]
    (farm.root / ".buildcat" / "secret").unlink()
    farm.start_server(port=farm.port)
    assert (farm.root / ".buildcat" / "secret").read_text().strip() != old_secret

    status, page, _ = fetch(farm.port, "GET", "/", old)
    assert status == 200 and page == LOGIN_PAGE  # the login page, not the dashboard
    for method, path, headers in (
        ("GET", f"{API}/jobs", old),
        ("GET", f"{API}/events", old),
        ("GET", f"{API}/jobs/{job.id}", old),
        ("GET", "/metrics", old),
        ("POST", f"{API}/jobs/{job.id}/cancel", steer),
    ):
        assert fetch(farm.port, method, path, headers)[0] == 401, path
    assert farm.client().job(job.id).status()["state"] == "queued"  # not cancelled
    assert fetch(farm.port, "GET", login, {})[0] == 401  # the old link is dead too
    # The new link logs in again.
    new_link = farm.cli("dashboard").stdout.strip()
    assert new_link != old_link
    status, _, headers = fetch(farm.port, "GET", new_link.split(str(farm.port), 1)[1], {})
    assert status == 303
    new = {"Cookie": headers["Set-Cookie"].split(";")[0]}
    assert fetch(farm.port, "GET", f"{API}/jobs", new)[0] == 200


# ---- TLS ------------------------------------------------------------------------------------


def start_tls_farm(tmp_path: Path) -> tuple[Farm, Path, trustme.CA]:
    """A farm serving HTTPS (not advertised) with a certificate from a new CA: the farm,
    the CA's certificate file and the CA itself."""
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    cert, key, ca = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert))
    for blob in certificate.cert_chain_pems[1:]:
        blob.write_to_path(str(cert), append=True)
    certificate.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    root = tmp_path / "root"
    root.mkdir()
    (root / "farm_jobs.py").write_text((HERE / "farm_jobs.py").read_text())
    farm = Farm(root=root, logs=tmp_path / "logs")
    farm.start_server("--tls-cert", str(cert), "--tls-key", str(key))
    return farm, ca, authority


@pytest.fixture
def tls_farm(tmp_path: Path) -> Iterator[tuple[Farm, Path]]:
    farm, ca, _ = start_tls_farm(tmp_path)
    yield farm, ca
    farm.stop()


def test_tls_farm_runs_jobs_for_members_that_trust_its_ca(tls_farm: tuple[Farm, Path]) -> None:
    farm, ca = tls_farm
    url = f"https://127.0.0.1:{farm.port}"
    worker = subprocess.Popen(
        launch.farm_command(
            "worker", "--host", url, "--tls-ca", str(ca), "--root", str(farm.root),
            "--no-blender", "--name", "tls-worker",
        ),
        stdout=subprocess.DEVNULL,
        stderr=farm._log("tls-worker"),
    )  # fmt: skip
    farm.workers.append(worker)
    with buildcat.connect(url, root=farm.root, tls_ca=ca) as client:
        assert client.address == url
        job = client.map("farm_jobs:square", [1, 2, 3])
        assert job.results() == [1, 4, 9]
        listed = farm.cli("status", "--json", FARM_HOST=url, FARM_TLS_CA=str(ca))
        assert listed.returncode == 0, listed.stderr
        # Over TLS the command prints the farm's real job list: the one job, done.
        (shown,) = json.loads(listed.stdout)
        assert (shown["id"], shown["state"], shown["total"]) == (job.id, "done", 3)
        assert shown["tasks"]["done"] == 3 and sum(shown["tasks"].values()) == 3
        assert [view["id"] for view in client.jobs()] == [job.id]


def test_tls_refuses_an_untrusted_certificate_and_plain_http(
    tls_farm: tuple[Farm, Path],
) -> None:
    farm, _ = tls_farm
    untrusted = farm.cli("status", FARM_HOST=f"https://127.0.0.1:{farm.port}")
    assert untrusted.returncode == 1
    assert "certificate" in untrusted.stderr and "--tls-ca" in untrusted.stderr
    assert untrusted.stderr.strip().count("\n") == 0
    # A bare host is spoken to in TLS: the root says the farm speaks it.
    bare = farm.cli("status", FARM_HOST="127.0.0.1")
    assert bare.returncode == 1 and "--tls-ca" in bare.stderr
    # A host that cannot read the root's record (the secret given as FARM_TOKEN) gets a hint.
    elsewhere = farm.root.parent / "no-root-here"
    elsewhere.mkdir()
    token = (farm.root / ".buildcat" / "secret").read_text().strip()
    plain = farm.cli(
        "status", FARM_HOST="127.0.0.1", BUILDCAT_ROOT=str(elsewhere), FARM_TOKEN=token
    )
    assert plain.returncode == 1
    assert "if it speaks TLS, give the host as https://" in plain.stderr
    # The server is still fine for those who do it right.
    context = ssl.create_default_context(cafile=str(tls_farm[1]))
    connection = http.client.HTTPSConnection("127.0.0.1", farm.port, context=context, timeout=10)
    connection.request("GET", "/api/v1/ping", headers=secret_header(farm.root))
    assert connection.getresponse().status == 200
    connection.close()


class Impostor:
    """A server on loopback that advertises a farm's public id (and a name) with zeroconf
    and records every byte members send it: plain HTTP, or TLS with a certificate of its
    own (``context``). It answers nothing useful."""

    def __init__(self, name: str, farm_id: str, context: ssl.SSLContext | None = None) -> None:
        from zeroconf import IPVersion, ServiceInfo, Zeroconf

        from buildcat.discovery import SERVICE_TYPE

        self.received: list[bytes] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.context = context
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.zeroconf = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        properties = {"name": name, "version": buildcat.__version__, "api": "1",
                      "tls": "1" if context else "0", "id": farm_id}  # fmt: skip
        self.info = ServiceInfo(
            SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", port=self.port, properties=properties,
            server="impostor.local.", parsed_addresses=["127.0.0.1"],
        )  # fmt: skip
        self.zeroconf.register_service(self.info)

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._record, args=(connection,), daemon=True).start()

    def _record(self, connection: socket.socket) -> None:
        data = b""
        try:
            connection.settimeout(2)
            if self.context is not None:
                connection = self.context.wrap_socket(connection, server_side=True)
            while b"\r\n\r\n" not in data and (chunk := connection.recv(65536)):
                data += chunk
            connection.sendall(b"HTTP/1.1 503 Nope\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass
        finally:  # a TLS hello to a plain server never ends in a blank line
            self.received.append(data)
            connection.close()

    def close(self) -> None:
        self.zeroconf.unregister_service(self.info)
        self.zeroconf.close()
        self.listener.close()


def _members_meet_an_impostor(
    farm: Farm, name: str, secret: str, env: dict[str, str], context: ssl.SSLContext | None
) -> bytes:
    """Three workers and three clients (found by discovery, by --farm NAME, by a bare
    --host) meet the impostor; returns every byte it received from them."""
    impostor = Impostor(name, auth.farm_id(secret), context)
    ways = [[], ["--farm", name], ["--host", f"127.0.0.1:{impostor.port}"]]
    try:
        started = [
            subprocess.Popen(
                launch.farm_command(
                    "worker",
                    "--root",
                    str(farm.root),
                    "--no-blender",
                    "--name",
                    f"w{index}",
                    *extra,
                ),
                stdout=farm._log(f"w{index}"),
                stderr=subprocess.STDOUT,
                env=env,
            )
            for index, extra in enumerate(ways)
        ]
        farm.workers += started
        clients = [
            subprocess.run(
                [sys.executable, "-m", "buildcat", "status", *extra],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            for extra in ways
        ]
        # Every one of the 6 found the impostor and tried it (a TLS hello, at least).
        wait_for(lambda: len(impostor.received) >= 6, 60)
        for client in clients:
            assert client.returncode == 1, client.stdout
            assert client.stderr.count("\n") == 1, client.stderr
        launch.stop_all(started)
    finally:
        impostor.close()
    return b"".join(impostor.received)


def test_a_member_never_downgrades_to_an_impostor_advertising_the_farm(tmp_path: Path) -> None:
    """The farm speaks TLS; an impostor on the LAN advertises its id with tls=0 (then with
    a certificate the same CA signed). Members that trust the CA through the system store
    (no --tls-ca) read the farm's TLS and certificate from the root, so the secret never
    reaches the impostor: not by discovery, not with --farm NAME, not with a bare --host."""
    farm, ca, authority = start_tls_farm(tmp_path)
    root = farm.root
    secret = (root / ".buildcat" / "secret").read_text().strip()
    name = f"real-farm-{secrets.token_hex(3)}"
    trusting = {**os.environ, "SSL_CERT_FILE": str(ca), "FARM_MDNS_INTERFACES": "127.0.0.1",
                "FARM_DISCOVERY_TIMEOUT": "3", "BUILDCAT_ROOT": str(root)}  # fmt: skip
    for key_name in ("FARM_HOST", "FARM_PORT", "FARM_NAME", "FARM_TOKEN", "FARM_TLS_CA"):
        trusting.pop(key_name, None)
    forged = authority.issue_cert("127.0.0.1", "localhost")  # CA-signed, not the farm's
    impostor_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    forged.configure_cert(impostor_tls)
    try:
        # While the farm runs, members with no --host find it through the root's record
        # (tests/test_root_record.py) and never listen for adverts: meet the impostor while
        # the farm is down, as after a crash, when discovery is all that is left.
        assert farm.server is not None
        launch.stop(farm.server)
        for context in (None, impostor_tls):
            received = _members_meet_an_impostor(farm, name, secret, trusting, context)
            assert secret.encode() not in received
            assert b"Authorization" not in received and b"Bearer" not in received
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        farm.start_server("--tls-cert", str(cert), "--tls-key", str(key), port=farm.port)
        # A member that names the host with no scheme speaks TLS to it all the same.
        env_client = subprocess.run(
            [sys.executable, "-m", "buildcat", "status", "--json", "--host",
             f"127.0.0.1:{farm.port}"],
            capture_output=True, text=True, env=trusting, timeout=60,
        )  # fmt: skip
        assert env_client.returncode == 0, env_client.stderr
        # And a worker so told runs the farm's work, its certificate pin checked.
        farm.workers.append(
            subprocess.Popen(
                launch.farm_command(
                    "worker",
                    "--root",
                    str(root),
                    "--no-blender",
                    "--host",
                    f"127.0.0.1:{farm.port}",
                    "--name",
                    "member",
                ),
                stdout=farm._log("member"),
                stderr=subprocess.STDOUT,
                env=trusting,
            )
        )
        job = subprocess.run(
            [sys.executable, "-m", "buildcat", "submit", "python", "farm_jobs:square", "7",
             "--wait", "--host", f"127.0.0.1:{farm.port}"],
            capture_output=True, text=True, env=trusting, timeout=120,
        )  # fmt: skip
        assert job.returncode == 0, job.stderr
        # Written out as http://, the address is refused before anything is sent.
        plain = subprocess.run(
            [sys.executable, "-m", "buildcat", "status", "--host", f"http://127.0.0.1:{farm.port}"],
            capture_output=True, text=True, env=trusting, timeout=60,
        )  # fmt: skip
        assert plain.returncode == 1 and "refusing to send the farm secret" in plain.stderr
    finally:
        farm.stop()


def test_server_refuses_half_a_tls_setup(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    result = subprocess.run(
        launch.farm_command("server", "--root", str(tmp_path), "--tls-cert", str(cert)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "--tls-key" in result.stderr
    result = subprocess.run(
        launch.farm_command(
            "server", "--root", str(tmp_path), "--port", "0", "--no-discovery",
            "--tls-cert", str(cert), "--tls-key", str(cert),
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot load the TLS certificate" in result.stderr
    assert "Traceback" not in result.stderr


# ---- the root's walls -------------------------------------------------------------------------


def test_paths_escaping_the_root_are_refused_on_the_worker(jobs_farm: Farm, tmp_path: Path) -> None:
    farm = jobs_farm
    outside = tmp_path / "outside"
    outside.mkdir()
    (farm.root / "link").symlink_to(outside, target_is_directory=True)
    (farm.root / "inside").mkdir()
    (farm.root / "alias").symlink_to(farm.root / "inside", target_is_directory=True)
    farm.start_worker("--no-blender")
    client = farm.client()
    errors = []
    for relative in ("link/stolen.txt", "../stolen.txt", "inside/../../stolen.txt"):
        job = client.submit("farm_jobs:touch", relative)
        with pytest.raises(buildcat.JobFailed) as raised:
            job.wait(60)
        errors.append(raised.value.error)
    assert "escapes the farm root through a symlink" in errors[0]
    assert "escapes the farm root" in errors[1] and "escapes the farm root" in errors[2]
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "stolen.txt").exists()
    # A symlink that stays inside the root is fine.
    assert client.map("farm_jobs:touch", ["alias/kept.txt"]).results() == ["alias/kept.txt"]
    assert (farm.root / "inside" / "kept.txt").exists()


def test_scripts_and_scenes_outside_the_root_are_refused_at_submit(
    farm: Farm, tmp_path: Path
) -> None:
    (tmp_path / "evil.py").write_text("def run():\n    return 'pwned'\n")
    (farm.root / "evil.py").symlink_to(tmp_path / "evil.py")
    through_link = farm.cli("submit", "python", "evil.py:run")
    assert through_link.returncode == 2
    assert "escapes the farm root through a symlink" in through_link.stderr
    dotdot = farm.cli("submit", "python", "../evil.py:run")
    assert dotdot.returncode == 2 and "escapes the farm root" in dotdot.stderr
    scene = farm.cli("submit", "blender", "../shot.blend", "--frames", "1")
    assert scene.returncode == 2 and "escapes the farm root" in scene.stderr
    assert farm.client().jobs() == []


def test_the_worker_refuses_a_script_symlinked_out_of_the_root(farm: Farm, tmp_path: Path) -> None:
    """A job submitted over the API (skipping the client's checks) meets the worker's."""
    (tmp_path / "evil.py").write_text("def run():\n    return 'pwned'\n")
    (farm.root / "evil.py").symlink_to(tmp_path / "evil.py")
    farm.start_worker("--no-blender")
    client = farm.client()
    reply = client.request(
        "POST", "/jobs", {"tasks": [{"payload": {"function": "evil.py:run"}}], "max_attempts": 1}
    )
    job = buildcat.Job(client, reply["id"])
    with pytest.raises(buildcat.JobFailed, match="escapes the farm root"):
        job.wait(60)
    wait_for(lambda: job.status()["state"] == "failed")


def test_a_farm_address_in_another_scheme_is_a_usage_error() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "buildcat", "status", "--host", "ftp://farm"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2
    assert "only http:// and https://" in bad.stderr


def test_a_task_submits_work_to_its_own_farm(jobs_farm: Farm) -> None:
    """Inside a task, ``buildcat.connect()`` reaches the worker's server with its secret."""
    jobs_farm.start_worker("--no-blender", "--slots", "2")
    parent = jobs_farm.client().submit("farm_jobs:fan_out", [2, 3])
    assert parent.results() == [[4, 9]]
    assert len(jobs_farm.client().jobs()) == 2


# ---- hostile bytes, connections and files ---------------------------------------------------


def raw_request(port: int, request: bytes, timeout: float = 30.0) -> bytes:
    """Send ``request`` as given (any bytes at all) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer \xff\xfe",
        b"Authorization: \xff",
        b"Cookie: buildcat_dashboard_PORT=\xff",
        b"Cookie: \xff\xfe=\xff",
    ],
)
def test_bytes_that_are_no_text_in_the_secret_or_cookie_answer_401(
    farm: Farm, header: bytes
) -> None:
    for path in (f"{API}/jobs".encode(), b"/metrics", b"/", b"/login?key=%ff%fe"):
        named = header.replace(b"PORT", str(farm.port).encode())  # the farm's own cookie
        head = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + named
        answer = raw_request(farm.port, head + b"\r\nConnection: close\r\n\r\n")
        status = answer.split(b"\r\n", 1)[0]
        expected = b"200" if path == b"/" else b"401"
        assert status.split()[1] == expected, (path, status)
    assert farm.client().ping()  # still serving
    assert "Traceback" not in farm.log_text("server")


LEAKY_JOBS = """
import os
import pathlib


def dump_environment():
    print(dict(os.environ))
    return dict(os.environ)


def leak_the_secret(_):
    secret = pathlib.Path(os.environ["BUILDCAT_ROOT"], ".buildcat", "secret").read_text().strip()
    print("the secret is", secret[:10], end="", flush=True)  # split across two writes
    print(secret[10:], flush=True)
    raise RuntimeError(f"it was {secret}")
"""


def dashboard_cookie(farm: Farm) -> dict[str, str]:
    link = farm.cli("dashboard").stdout.strip()
    status, _, headers = fetch(farm.port, "GET", link.split(str(farm.port), 1)[1], {})
    assert status == 303
    return {"Cookie": headers["Set-Cookie"].split(";")[0]}


def test_a_job_that_prints_its_environment_shows_the_dashboard_no_secret(
    jobs_farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker given the secret as FARM_TOKEN (as `farm worker --token` is) runs a job that
    prints and returns os.environ, and one that prints the secret and raises with it. The
    tasks' environment names a file, not the secret; the logs say ``[farm secret]``; and
    nothing the dashboard cookie can read holds the secret."""
    farm = jobs_farm
    secret = (farm.root / ".buildcat" / "secret").read_text().strip()
    (farm.root / "leaky.py").write_text(LEAKY_JOBS)
    monkeypatch.setenv("FARM_TOKEN", secret)
    farm.start_worker("--no-blender", "--slots", "2")
    client = farm.client()
    dumped = client.submit("leaky:dump_environment")
    leaked = client.map("leaky:leak_the_secret", [0], max_attempts=1)
    fanned = client.submit("farm_jobs:fan_out", [2, 3])  # a task still reaches its farm
    (environment,) = dumped.results()
    assert "FARM_TOKEN" not in environment and "FARM_TOKEN_FILE" in environment
    assert secret not in repr(environment)
    with pytest.raises(buildcat.JobFailed):
        leaked.wait(timeout=60)
    assert fanned.results() == [[4, 9]]

    cookie = dashboard_cookie(farm)
    (leaked_task,) = client.job(leaked.id).tasks()
    assert "[farm secret]" in client.task(leaked_task["id"])["log"]
    read = []
    for job in (dumped, leaked, fanned):
        read.append(fetch(farm.port, "GET", f"{API}/jobs/{job.id}", cookie))
        read.append(fetch(farm.port, "GET", f"{API}/jobs/{job.id}/tasks", cookie))
        for task in client.job(job.id).tasks():
            read.append(fetch(farm.port, "GET", f"{API}/tasks/{task['id']}", cookie))
    for path in (f"{API}/jobs", f"{API}/workers", f"{API}/events", "/metrics"):
        read.append(fetch(farm.port, "GET", path, cookie))
    assert [status for status, _, _ in read] == [200] * len(read)
    assert any(b"[farm secret]" in body for _, body, _ in read)  # the log was read
    for _, body, _ in read:
        assert secret.encode() not in body
    farm.stop()
    for name in ("server", "worker-1"):  # the processes' own logs too
        assert secret not in farm.log_text(name), name
    assert "it was [farm secret]" in farm.log_text("worker-1")
    for path in (farm.root / ".buildcat").rglob("*"):
        if path.is_file() and path.name != "secret":
            assert secret.encode() not in path.read_bytes(), path


def test_a_fifo_named_as_a_frame_costs_a_thumbnail_not_a_submit(jobs_farm: Farm) -> None:
    """A task result names a FIFO as its output. Twenty dashboards asking for the
    thumbnail get an error each (only regular files are opened), and a submit meanwhile
    answers at once: its journal write never waits behind a thumbnail."""
    farm = jobs_farm
    (farm.root / "frames").mkdir()
    os.mkfifo(farm.root / "frames" / "fifo.png")
    (farm.root / "fifo_job.py").write_text(
        "def fifo_frame():\n    return {'outputs': ['frames/fifo.png']}\n"
    )
    farm.start_worker("--no-blender")
    client = farm.client()
    job = client.submit("fifo_job:fifo_frame")
    job.wait(timeout=60)
    answers: list[tuple[int, bytes]] = []

    def ask() -> None:
        status, body, _ = fetch(farm.port, "GET", f"{API}/jobs/{job.id}/thumbnail",
                                secret_header(farm.root))  # fmt: skip
        answers.append((status, body))

    askers = [threading.Thread(target=ask) for _ in range(20)]
    for asker in askers:
        asker.start()
    with buildcat.connect("127.0.0.1", farm.port, farm.root, timeout=10) as quick:
        submitted = quick.map("farm_jobs:square", [5])
        assert submitted.results() == [25]
    for asker in askers:
        asker.join(30)
    assert len(answers) == 20
    for status, body in answers:
        assert status in (404, 503), status
        if status == 404:
            assert b"not a regular file" in body
    assert "Traceback" not in farm.log_text("server")


class OtherService:
    """Another web service on the farm's host, on a port of its own: it records the Cookie
    header every request brings and serves a page whose script reports document.cookie."""

    PAGE = b"<script>fetch('/report?seen=' + encodeURIComponent(document.cookie))</script>"

    def __init__(self) -> None:
        import http.server

        self.cookies: list[str] = []
        self.seen_by_script: list[str] = []
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                service.cookies.append(self.headers.get("Cookie", ""))
                query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
                if "seen" in query:
                    service.seen_by_script.append(query["seen"][0])
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(self.PAGE if self.path == "/" else b"")

            PAGE = OtherService.PAGE

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_dashboard_cookie_is_no_key_elsewhere_and_revoke_logs_every_browser_out(
    jobs_farm: Farm, browser: Any
) -> None:
    """Cookies ignore ports: a browser logged into the dashboard sends its cookie to every
    service on the farm's host. That service's scripts cannot read it (HttpOnly), what its
    server receives is neither the login key nor the secret and opens nothing but this
    dashboard, and `farm dashboard --revoke` ends it (and every link) at once, the farm
    secret unchanged."""
    farm = jobs_farm
    secret_file = farm.root / ".buildcat" / "secret"
    secret = secret_file.read_text().strip()
    job = farm.client().map("farm_jobs:square", [2])  # no worker: it stays queued
    link = farm.cli("dashboard").stdout.strip()
    login_key = link.rsplit("key=", 1)[1]
    status, _, headers = fetch(farm.port, "GET", link.split(str(farm.port), 1)[1], {})
    assert status == 303
    set_cookie = headers["Set-Cookie"]
    name = set_cookie.partition("=")[0]
    assert name == f"buildcat_dashboard_{farm.port}"  # one per farm on the host
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in set_cookie, set_cookie
    other = OtherService()
    page = browser.new_page()
    try:
        page.goto(link)
        page.goto(f"http://127.0.0.1:{other.port}/")
        wait_for(lambda: other.seen_by_script, 30)
        assert other.seen_by_script == [""]  # the other port's script reads no cookie
        received = other.cookies[0]  # ... but its server gets it: what cookies cannot promise
        assert received.startswith(f"{name}=")
        value = received.split("=", 1)[1].split(";")[0]
        assert login_key not in received and secret not in received
        # What it opens: this dashboard, nothing else.
        cookie = {"Cookie": f"{name}={value}"}
        assert fetch(farm.port, "GET", f"/login?key={value}", {})[0] == 401
        assert (
            fetch(farm.port, "GET", f"{API}/jobs", {"Authorization": f"Bearer {value}"})[0] == 401
        )
        assert fetch(farm.port, "GET", f"{API}/jobs", cookie)[0] == 200
        assert fetch(farm.port, "GET", f"{API}/dashboard", cookie)[0] == 401  # no new links
        assert fetch(farm.port, "POST", f"{API}/dashboard/revoke", cookie)[0] == 401

        revoked = farm.cli("dashboard", "--revoke")
        assert revoked.returncode == 0, revoked.stderr
        assert "logged out" in revoked.stderr
        new_link = revoked.stdout.strip()
        assert new_link.startswith(f"http://127.0.0.1:{farm.port}/login?key=")
        assert new_link != link
        # Every browser is out at once, and the old link is dead.
        assert fetch(farm.port, "GET", f"{API}/jobs", cookie)[0] == 401
        assert fetch(farm.port, "GET", "/", cookie)[1] == LOGIN_PAGE
        page.goto(f"http://127.0.0.1:{farm.port}/")
        assert "login?key=" in page.content()  # the browser got the login page
        assert fetch(farm.port, "GET", link.split(str(farm.port), 1)[1], {})[0] == 401
        # The farm secret is as it was; members and the new link work.
        assert secret_file.read_text().strip() == secret
        assert farm.client().job(job.id).status()["state"] == "queued"
        assert fetch(farm.port, "GET", new_link.split(str(farm.port), 1)[1], {})[0] == 303
    finally:
        page.close()
        other.close()
