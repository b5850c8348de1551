"""Request deadlines: how long the caller of this thread's work will wait.

An API request (or a library acquisition) runs ``within(seconds)``; store
adapters ask ``remaining(their own timeout)`` before each call and use the
smaller of the two, so a store that stopped answering costs the caller the
deadline (plus one connect), not the store timeout times its retries. A
call that would start after the deadline raises ``StoreUnavailable`` at once
(nothing was sent). Work without a deadline (build cycles, health polls)
keeps the adapters' own timeouts.

A context variable, so each thread (and each request) has its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from warmcache.errors import StoreUnavailable

# WSGI environ key: when the server had the whole request (time.monotonic()),
# set by warmcache serve's server (warmcache.web.waitress_glue).
RECEIVED_AT = "warmcache.received_at"

_deadline: ContextVar[float | None] = ContextVar("warmcache_deadline", default=None)


@contextmanager
def within(seconds: float | None) -> Iterator[None]:
    """Run the block under a deadline ``seconds`` from now (``None``: none),
    or under the one already set if it comes sooner."""
    current = _deadline.get()
    wanted = None if seconds is None else time.monotonic() + seconds
    if current is not None and (wanted is None or current < wanted):
        wanted = current
    token = _deadline.set(wanted)
    try:
        yield
    finally:
        _deadline.reset(token)


@contextmanager
def until(at: float | None) -> Iterator[None]:
    """Run the block under the absolute (monotonic) deadline ``at``."""
    token = _deadline.set(at)
    try:
        yield
    finally:
        _deadline.reset(token)


def enter(seconds: float, since: float | None = None) -> object:
    """``within`` for frameworks with separate before/after hooks: returns
    the token to give to ``leave`` (Flask's before_request/teardown).
    ``since``: when the request arrived (monotonic), if it waited in a
    queue before its handler ran: the deadline counts from there."""
    return _deadline.set((time.monotonic() if since is None else since) + seconds)


def leave(token: object) -> None:
    _deadline.reset(token)  # type: ignore[arg-type]


def current() -> float | None:
    """The absolute (monotonic) deadline of this context, if any."""
    return _deadline.get()


def remaining(timeout_s: float, what: str = "the store") -> float:
    """``timeout_s``, or less if the deadline comes first; raises
    ``StoreUnavailable`` when it has already passed (send nothing)."""
    at = _deadline.get()
    if at is None:
        return timeout_s
    left = at - time.monotonic()
    if left <= 0:
        raise StoreUnavailable(what, "the request's deadline passed")
    return min(timeout_s, left)
