"""Job-end notices: what is owed to which URL, signed how, retried when (no I/O, no clock).

A job submitted with ``notify`` URLs (and every job, for a server's own ``--notify``) owes
one notice per URL each time it ends. The notice is made by the scheduler the moment the
job ends, so it is part of the queue's state: replaying the journal makes it again, a
snapshot keeps it, and only a ``notified`` journal event (delivered, or given up) settles
it. :mod:`buildcat.server.notifier` sends them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

#: Where a job keeps its validated URLs (the journal's submit event carries them).
META_KEY = "notify"
#: Retries: the first resend 1 s after a failure, doubling up to 5 minutes between tries,
#: until this long after the job ended; then the notice is given up (and logged).
FIRST_DELAY = 1.0
MAX_DELAY = 300.0
GIVE_UP_AFTER = 24 * 3600.0
#: Answers that say the same request will never be accepted: given up at once. 408 (timeout),
#: 425 (too early) and 429 (slow down) are worth another try, like 5xx and no answer.
RETRY_4XX = frozenset({408, 425, 429})
SIGNATURE_HEADER = "X-Buildcat-Signature"
TIMESTAMP_HEADER = "X-Buildcat-Timestamp"
DELIVERY_HEADER = "X-Buildcat-Delivery"
EVENT_HEADER = "X-Buildcat-Event"


@dataclass(slots=True)
class Notice:
    """One job end owed to one URL."""

    delivery: str
    url: str
    job_id: str
    #: ``job.done``, ``job.failed`` or ``job.cancelled``.
    event: str
    #: When the job ended (the give-up clock starts here; it survives restarts).
    ended_at: float
    #: The job as it ended: what the body's ``job`` says.
    job: dict[str, Any]
    #: Tries since this server started (not journaled: a restart begins again at 1).
    attempts: int = 0
    last_error: str = ""
    next_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "delivery": self.delivery, "url": self.url, "job": self.job_id, "event": self.event,
            "ended_at": self.ended_at, "attempts": self.attempts, "last_error": self.last_error,
            "next_at": self.next_at,
        }  # fmt: skip


def delivery_id(job_id: str, ended_at: float, state: str, url: str) -> str:
    """The same on every replay of the same job end (a receiver dedupes on it); another
    end of the job (after a retry) or another URL gets another."""
    text = f"{job_id}\0{ended_at!r}\0{state}\0{url}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(slots=True)
class Notices:
    """The notices owed, by delivery id; new ones wait in ``fresh`` for the notifier."""

    pending: dict[str, Notice] = field(default_factory=dict)
    fresh: list[Notice] = field(default_factory=list)

    def job_ended(self, meta: Any, summary: dict[str, Any]) -> None:
        """Called by the scheduler as a job ends (in memory and in a replay alike), with
        the job's meta (where its notify URLs are) and its summary (``Job.summary``)."""
        urls = meta.get(META_KEY) if isinstance(meta, dict) else None
        if not urls or not isinstance(urls, list):
            return
        job_id = str(summary["id"])
        ended_at = float(summary["finished_at"] or 0.0)
        state = str(summary["state"])
        for url in urls:
            if not isinstance(url, str):
                continue
            notice = Notice(
                delivery_id(job_id, ended_at, state, url), url, job_id, f"job.{state}",
                ended_at, summary,
            )  # fmt: skip
            self.pending[notice.delivery] = notice
            self.fresh.append(notice)

    def settle(self, delivery: str) -> None:
        """Delivered or given up: journaled as ``notified``, owed no more."""
        self.pending.pop(delivery, None)

    def take_fresh(self) -> list[Notice]:
        fresh, self.fresh = self.fresh, []
        return [notice for notice in fresh if notice.delivery in self.pending]

    def dump(self) -> list[dict[str, Any]]:
        return [
            {"delivery": n.delivery, "url": n.url, "job_id": n.job_id, "event": n.event,
             "ended_at": n.ended_at, "job": n.job}
            for n in self.pending.values()
        ]  # fmt: skip

    def load(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            notice = Notice(**item)
            self.pending[notice.delivery] = notice
            self.fresh.append(notice)


def body(notice: Notice, attempt: int, farm: str, sent_at: float) -> bytes:
    """The JSON document POSTed (docs/http-api.md, "Job-end notices")."""
    document = {
        "event": notice.event,
        "delivery": notice.delivery,
        "attempt": attempt,
        "farm": farm,
        "sent_at": sent_at,
        "job": notice.job,
    }
    return json.dumps(document, separators=(",", ":"), default=str).encode()


def signature(secret: str, timestamp: str, payload: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256, keyed by the farm secret, of
    ``TIMESTAMP.BODY`` (the timestamp header, a dot, the body's bytes)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + payload, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def next_delay(attempt: int) -> float:
    """Seconds to wait after failed try number ``attempt`` (1, 2, 4, ... up to 300)."""
    return min(MAX_DELAY, FIRST_DELAY * 2.0 ** min(attempt - 1, 30))


def permanent(status: int) -> bool:
    """An answer that ends the retries without delivery (a 4xx other than RETRY_4XX)."""
    return 400 <= status < 500 and status not in RETRY_4XX
