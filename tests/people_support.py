"""Requests as people make them: with the farm secret, a named token or a dashboard cookie."""

from __future__ import annotations

import http.client
import json
from typing import Any

from tests.conftest import Farm, secret_header

API = "/api/v1"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def call(
    farm: Farm, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[int, dict[str, Any]]:
    """One JSON request; ``path`` under /api/v1. Returns the status and the decoded reply."""
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        if data is None and method in ("POST", "DELETE"):
            data = b"{}"
        connection.request(
            method, API + path, body=data,
            headers={"Content-Type": "application/json", **headers},
        )  # fmt: skip
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else {}
    finally:
        connection.close()


def admin(farm: Farm) -> dict[str, str]:
    return secret_header(farm.root)


def add_token(farm: Farm, name: str, role: str) -> str:
    status, reply = call(farm, "POST", "/tokens", admin(farm), {"name": name, "role": role})
    assert status == 201, reply
    return str(reply["token"])


def login(farm: Farm, query: str) -> dict[str, str]:
    """The headers a browser logged in with ``/login?QUERY`` sends to a dashboard route:
    its cookie, and the header every dashboard POST carries."""
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    try:
        connection.request("GET", f"/login?{query}")
        response = connection.getresponse()
        response.read()
        assert response.status == 303, response.status
        cookie = response.getheader("Set-Cookie", "").split(";")[0]
    finally:
        connection.close()
    return {"Cookie": cookie, "X-Buildcat-Dashboard": "1"}


def python_job(owner: str = "") -> dict[str, Any]:
    """A submit body: one task nobody runs (no worker) unless a test starts one."""
    body: dict[str, Any] = {
        "kind": "python",
        "tasks": [{"payload": {"function": "farm_jobs:square", "args": [3]}}],
    }
    if owner:
        body["owner"] = owner
    return body
