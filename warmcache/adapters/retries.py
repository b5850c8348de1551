"""The one retry policy of the store adapters: an idempotent read that met
a transient failure (``StoreError``: a member restarting, a connection
reset) is sent again with jittered exponential backoff, a few times. Writes
are never retried here: each adapter knows when a failed write surely did
not apply and says so with ``StoreUnavailable``.

Inside a request's deadline (``warmcache.deadline``) there is one try: the
deadline, not the retries, bounds the request's time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from warmcache import deadline
from warmcache.errors import SessionExpired, StoreError

T = TypeVar("T")

READ_ATTEMPTS = 3


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, StoreError) and not isinstance(exc, SessionExpired)


class ReadRetry:
    def __init__(
        self, sleep: Callable[[float], None] = time.sleep, attempts: int = READ_ATTEMPTS
    ) -> None:
        self._retrying = Retrying(
            # an expired session is an answer, not a transient failure
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=0.1, max=1.0) + wait_random(0, 0.05),
            sleep=sleep,
            reraise=True,
        )

    def __call__(self, fn: Callable[[], T]) -> T:
        if deadline.current() is not None:
            return fn()
        return self._retrying(fn)
