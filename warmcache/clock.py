"""Clocks: the real one, and a manual one that tests advance by hand."""

from __future__ import annotations

import threading
import time

# How often a ManualClock waiter looks at its event: threading.Event cannot
# notify another condition, so the waiter polls it (advance() wakes it at once).
_EVENT_POLL_S = 0.01


class SystemClock:
    def now(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(seconds)


class ManualClock:
    """A clock that moves only when told to (thread-safe).

    ``wait(event, seconds)`` returns True once ``event`` is set, or False once
    ``advance`` has moved the clock ``seconds`` past the call: a periodic
    thread (the leader's renewer) runs exactly when a test moves time.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._moved = threading.Condition()

    def now(self) -> float:
        with self._moved:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._moved:
            self._now += seconds
            self._moved.notify_all()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        with self._moved:
            until = self._now + seconds
            while not event.is_set():
                if self._now >= until:
                    return False
                self._moved.wait(_EVENT_POLL_S)
            return True
