"""Named tokens: one per person, each with a role, kept hashed in the state folder.

``<state>/tokens.json`` (mode 0600, written whole) holds each token's name, role, the
SHA-256 of its text, when and by whom it was made; the text itself is shown once, when
it is made, and never kept. A token revoked is gone from the table at once, and with it
every dashboard cookie bought with it (the cookie names the token's hash).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from buildcat.errors import FarmError
from buildcat.root import write_json_whole

log = logging.getLogger(__name__)

TOKENS_FILE = "tokens.json"
#: What a named token's text begins with: a person can tell it from the farm secret.
PREFIX = "bc_"
#: The roles, least first: a viewer reads, an artist submits and steers its own jobs,
#: an admin does everything (docs/security.md, "People and their rights").
ROLES = ("viewer", "artist", "admin")
#: A person's name: also what the farm secret's ``X-Buildcat-User`` header may say.
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: The farm secret's own name: no token may take it.
SECRET_NAME = "admin"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def name_problem(name: object) -> str:
    """Why ``name`` cannot name a person ("" when it can)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        return "a name is 1 to 64 letters, digits, '.', '-' or '_'"
    return ""


@dataclass(slots=True, frozen=True)
class Token:
    name: str
    role: str
    #: SHA-256 of the token's text, hex.
    sha256: str
    created_at: float
    created_by: str

    def to_dict(self) -> dict[str, Any]:
        """What ``GET /api/v1/tokens`` shows: never the hash."""
        return {
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


class TokenTable:
    """The farm's named tokens, as on disk: every change is written whole before memory
    changes, one change at a time."""

    def __init__(self, path: Path | None) -> None:
        #: ``None``: a server without a state folder on disk (tests' in-process apps).
        self.path = path
        self.tokens: dict[str, Token] = {}
        self._by_digest: dict[str, Token] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def load(cls, path: Path | None) -> TokenTable:
        table = cls(path)
        if path is None:
            return table
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return table
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise FarmError(f"cannot read the named tokens {path}: {reason}") from None
        try:
            entries = json.loads(text)["tokens"]
            tokens = [Token(**entry) for entry in entries]
        except (ValueError, KeyError, TypeError) as exc:
            raise FarmError(
                f"the named tokens {path} are damaged ({exc}): restore it, or delete it and "
                "make the tokens again (farm token add)"
            ) from None
        table._set({token.name: token for token in tokens})
        return table

    def _set(self, tokens: dict[str, Token]) -> None:
        self.tokens = tokens
        self._by_digest = {token.sha256: token for token in tokens.values()}

    def find(self, text: str) -> Token | None:
        """The token whose text this is, if any (a hash looked up: the text is never kept)."""
        if not text.startswith(PREFIX):
            return None
        # A look-up by hash: what it takes says nothing of any token's text.
        return self._by_digest.get(digest(text))

    def check_new(self, name: object, role: object) -> None:
        """Refuse a token that cannot be made, before anything changes."""
        problem = name_problem(name)
        if problem:
            raise FarmError(f"{name!r} cannot name a token: {problem}")
        if role not in ROLES:
            raise FarmError(f"'role' must be one of {', '.join(ROLES)}, not {role!r}")

    async def add(self, name: str, role: str, by: str, now: float) -> tuple[Token, str]:
        """Make a token; returns it and its text (shown once). ``KeyError``: the name is
        taken (the farm secret's ``admin`` included)."""
        self.check_new(name, role)
        async with self._lock:
            if name in self.tokens or name == SECRET_NAME:
                raise KeyError(name)
            text = PREFIX + secrets.token_urlsafe(32)
            token = Token(name, role, digest(text), now, by)
            await self._write({**self.tokens, name: token})
        log.info("token %s (%s) made by %s", name, role, by or "?")
        return token, text

    async def revoke(self, name: str, by: str) -> Token:
        """Remove a token: the next request with it (or its cookie) is refused."""
        async with self._lock:
            token = self.tokens.get(name)
            if token is None:
                raise KeyError(name)
            await self._write({k: v for k, v in self.tokens.items() if k != name})
        log.warning("token %s (%s) revoked by %s", name, token.role, by or "?")
        return token

    async def _write(self, tokens: dict[str, Token]) -> None:
        if self.path is not None:  # on disk first (the root may be a slow share: a thread)
            document = {"tokens": [asdict(token) for token in tokens.values()]}
            await asyncio.to_thread(write_json_whole, self.path, document, 0o600, indent=2)
        self._set(tokens)
