"""Keeping the farm secret out of what people read, and repeated log lines out of the log:
the pure parts (no sockets), checked over many cases."""

from __future__ import annotations

import io
import itertools
import logging

from hypothesis import given
from hypothesis import strategies as st

from buildcat import auth
from buildcat.server.connections import RepeatFilter

SECRET = "k3Y-0f_the-farm_" + "x" * 27


@given(
    before=st.text(alphabet="abck3Y-_x\n", max_size=30),
    after=st.text(alphabet="abck3Y-_x\n", max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=100), max_size=8),
)
def test_a_task_log_never_holds_the_secret_however_it_is_written(
    before: str, after: str, cuts: list[int]
) -> None:
    text = before + SECRET + after + SECRET[:7]  # the end may look like the secret's start
    sink = io.StringIO()
    redactor = auth.Redactor(SECRET)  # what a task's log writes through
    points = sorted({min(cut, len(text)) for cut in cuts} | {0, len(text)})
    for start, end in itertools.pairwise(points):
        sink.write(redactor.feed(text[start:end]))
    sink.write(redactor.end())  # the task ends
    assert SECRET not in sink.getvalue()
    assert sink.getvalue() == text.replace(SECRET, auth.REDACTED)


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_masked_bytes_keep_their_length(before: bytes, after: bytes) -> None:
    data = before + SECRET.encode() + after
    masked = auth.redact_bytes(data, SECRET)
    assert len(masked) == len(data) and SECRET.encode() not in masked


def test_a_dashboard_cookie_is_neither_key_nor_secret_and_expires() -> None:
    cookie = auth.session_cookie(SECRET, "salt", 2_000_000_000)
    assert SECRET not in cookie and auth.dashboard_key(SECRET, "salt") not in cookie
    assert auth.session_cookie_valid(cookie, SECRET, "salt", now=1_999_999_999)
    assert not auth.session_cookie_valid(cookie, SECRET, "salt", now=2_000_000_000)
    assert not auth.session_cookie_valid(cookie, SECRET, "new salt", now=0)  # revoked
    assert not auth.session_cookie_valid(cookie, SECRET + "y", "salt", now=0)  # new secret
    for forged in ("", ".", "²." + cookie[11:], "9" * 13 + cookie[10:], cookie[:-1] + "0"):
        assert not auth.session_cookie_valid(forged, SECRET, "salt", now=0), forged


def test_a_repeating_message_is_written_once_then_with_a_count() -> None:
    repeat = RepeatFilter(window=3600)
    records = [
        logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "accept failed\nfd 7", (), None)
        for _ in range(98_007)
    ]
    assert sum(repeat.filter(record) for record in records) == 1
    repeat.window = 0  # the quiet spell is over: the next one says how many came meanwhile
    last = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "accept failed", (), None)
    assert repeat.filter(last)
    assert "98,006 more like it" in last.getMessage()
