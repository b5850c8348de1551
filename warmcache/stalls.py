"""``StallWatch``: notices that this process stopped running for a while
(SIGSTOP, a long GC pause, a starved VM), so that what its views believe is
checked against the store before it is trusted for a definitive answer.

A thread ticks every ``tick_s``; a tick that comes more than ``late_s``
after the previous one means every thread of the process was stopped that
long, the change feeds included. ``stalled_since(t)`` is True if a stall
began after ``t`` or one is under way now (the ticker itself has not run
yet: the process was just resumed). A watch whose ticker never ran (a
library user who never started the service: its views catch up on every
request anyway) never reports a stall.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class StallWatch:
    def __init__(
        self,
        *,
        tick_s: float = 0.1,
        late_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tick_s = tick_s
        self.late_s = late_s
        self._clock = clock
        self._last_tick = clock()
        self._stalled_at = float("-inf")  # when the last stall was noticed
        self._ticking = False
        self.stalls = 0  # how many were noticed (for tests and logs)

    def tick(self) -> None:
        now = self._clock()
        if self._ticking and now - self._last_tick > self.late_s:
            self._stalled_at = now
            self.stalls += 1
        self._last_tick = now
        self._ticking = True

    def stalled_since(self, since: float) -> bool:
        if not self._ticking:
            return False
        now = self._clock()
        return now - self._last_tick > self.late_s or self._stalled_at > since

    def now(self) -> float:
        return self._clock()

    def run(self, stop: threading.Event) -> None:
        """The ticker (``Scheduler.follow``)."""
        self._last_tick = self._clock()
        while not stop.wait(self.tick_s):
            self.tick()
