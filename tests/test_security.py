"""The farm secret, TLS and the root's walls, against real ``farm`` processes on loopback."""

from __future__ import annotations

import http.client
import re
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

import buildcat
from buildcat import launch
from buildcat.server.app import routes
from tests.conftest import Farm, secret_header, wait_for

HERE = Path(__file__).parent


def api_routes() -> list[tuple[str, str]]:
    """Every route the server has, with its placeholders filled in."""
    found = []
    for route in routes:
        path = re.sub(r"\{[^}]+\}", "x", route.path)  # type: ignore[attr-defined]
        found.append((route.method, path))  # type: ignore[attr-defined]
    return found


def status_of(port: int, method: str, path: str, headers: dict[str, str]) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = b"\x80" if method in ("POST", "PUT", "PATCH") else None
        connection.request(
            method, path, body=body, headers={"Content-Type": "application/msgpack", **headers}
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


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


def test_every_route_answers_401_without_the_right_secret(farm: Farm) -> None:
    wrong = "Bearer " + "x" * 43
    token = secret_header(farm.root)["Authorization"].split()[1]
    for method, path in api_routes():
        for headers in (
            {},
            {"Authorization": wrong},
            {"Authorization": f"Basic {token}"},
            {"Authorization": f"Bearer {token[:-1]}"},
        ):
            assert status_of(farm.port, method, path, headers) == 401, (method, path, headers)
        assert status_of(farm.port, method, path, secret_header(farm.root)) != 401, (method, path)
    # Routes that do not exist give nothing away either.
    assert status_of(farm.port, "GET", "/api/v1/nothing-here", {}) == 401
    assert status_of(farm.port, "GET", "/api/v1/nothing-here", secret_header(farm.root)) == 404


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


# ---- TLS ------------------------------------------------------------------------------------


@pytest.fixture
def tls_farm(tmp_path: Path) -> tuple[Farm, Path]:
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
    client = buildcat.connect(url, root=farm.root, tls_ca=ca)
    assert client.address == url
    assert client.map("farm_jobs:square", [1, 2, 3]).results() == [1, 4, 9]
    client.close()
    submitted = farm.cli("status", "--json", FARM_HOST=url, FARM_TLS_CA=str(ca))
    assert submitted.returncode == 0, submitted.stderr


def test_tls_refuses_an_untrusted_certificate_and_plain_http(
    tls_farm: tuple[Farm, Path],
) -> None:
    farm, _ = tls_farm
    untrusted = farm.cli("status", FARM_HOST=f"https://127.0.0.1:{farm.port}")
    assert untrusted.returncode == 1
    assert "certificate" in untrusted.stderr and "--tls-ca" in untrusted.stderr
    assert untrusted.stderr.strip().count("\n") == 0
    plain = farm.cli("status", FARM_HOST="127.0.0.1")
    assert plain.returncode == 1
    assert "if it speaks TLS, give the host as https://" in plain.stderr
    # The server is still fine for those who do it right.
    context = ssl.create_default_context(cafile=str(tls_farm[1]))
    connection = http.client.HTTPSConnection("127.0.0.1", farm.port, context=context, timeout=10)
    connection.request("GET", "/api/v1/ping", headers=secret_header(farm.root))
    assert connection.getresponse().status == 200
    connection.close()


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
