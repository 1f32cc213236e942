"""Keeping Python's cycle collector off the queue's long-lived records.

A full collection walks every tracked object: with a million queued tasks (each a record,
its payload map and its argument list) that is several million objects and a pause of
the event loop of a second or more, taken at moments nobody chooses. The queue's records
live long and are freed by reference counting when a job is deleted, so the server moves
them out of the collector's sight (:func:`gc.freeze`) once a big job is queued, once it
ends (its results are final) and after a start; deleting a big job gives them back
(:func:`gc.unfreeze`) so that its cycles (a job and its tasks name each other) are
collected. While a big submit's tasks are being made, collections wait.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Jobs of at least this many tasks move the heap out of the collector's sight.
BIG_JOB = 10_000

_held = 0


def settle() -> None:
    """Freeze what is alive now: the long-lived records are never walked again. (No
    collection first: after a big submit the young generation holds the whole job, and
    collecting it would be the very pause this avoids. What garbage cycles exist this
    instant are kept: a few of a request's, once per big job.)"""
    gc.freeze()


def release() -> None:
    """A big job was deleted: its records (frozen) go back to the collector, which frees
    their cycles at its next full pass."""
    gc.unfreeze()


@contextlib.contextmanager
def building() -> Iterator[None]:
    """No collection while a big job's tasks are made (in pieces, between which other
    requests run): each would walk the growing job again."""
    global _held
    _held += 1
    gc.disable()
    try:
        yield
    finally:
        _held -= 1
        if not _held:
            gc.enable()
