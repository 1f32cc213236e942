"""Job kinds: how each kind's task payloads are checked (client, server, worker) and run."""

from __future__ import annotations

from typing import Any

from buildcat.errors import FarmError
from buildcat.jobs import blender, python

#: kind -> payload validator; every validator raises FarmError with one clear line.
VALIDATORS = {"python": python.validate_payload, "blender": blender.validate_payload}


def validate_payload(kind: str, payload: Any) -> None:
    """Check one task payload of a job of ``kind`` before it is queued or run."""
    validator = VALIDATORS.get(kind)
    if validator is None:
        raise FarmError(f"unknown job kind {kind!r} (known: {', '.join(sorted(VALIDATORS))})")
    if not isinstance(payload, dict):
        raise FarmError("a task payload must be a map")
    validator(payload)
