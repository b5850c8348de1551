"""The background work of one instance, in one place: periodic jobs (build
cycles, health polls, service registration) and followers (the views of
the store's change feed, the leader watch), each on its own thread.

A job returns how long to wait before its next run; an error of the port
family (``WarmCacheError``) is logged and retried after the job's
``retry_s``; anything else is logged as a crash and retried the same way,
so one bad run never ends a loop. A job with a ``wake`` event runs again
at once when it is set (an early build cycle). ``started`` is explicit:
``start`` twice is one start, ``stop`` joins every thread.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from warmcache.errors import WarmCacheError

log = logging.getLogger(__name__)


@dataclass
class Job:
    name: str
    run: Callable[[], float]  # one run; returns the seconds to the next
    retry_s: float
    wake: threading.Event = field(default_factory=threading.Event)


class Scheduler:
    def __init__(self) -> None:
        self._jobs: list[Job] = []
        self._followers: list[tuple[str, Callable[[threading.Event], None]]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def started(self) -> bool:
        return bool(self._threads)

    @property
    def stopping(self) -> threading.Event:
        """Set once ``stop`` is called: what a follower waits on."""
        return self._stop

    def every(
        self,
        name: str,
        run: Callable[[], float],
        *,
        retry_s: float,
        wake: threading.Event | None = None,
    ) -> Job:
        job = Job(name, run, retry_s, wake or threading.Event())
        self._jobs.append(job)
        return job

    def follow(self, name: str, body: Callable[[threading.Event], None]) -> None:
        """``body(stop)`` runs until ``stop`` is set (it handles its own errors)."""
        self._followers.append((name, body))

    def start(self) -> None:
        if self.started:
            return
        self._stop.clear()
        for name, body in self._followers:
            self._spawn(name, functools.partial(body, self._stop))
        for job in self._jobs:
            self._spawn(job.name, functools.partial(self._loop, job))

    def stop(self) -> None:
        self._stop.set()
        for job in self._jobs:
            job.wake.set()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _loop(self, job: Job) -> None:
        while not self._stop.is_set():
            wait = job.retry_s
            try:
                wait = job.run()
            except WarmCacheError as exc:
                log.warning("%s failed: %s", job.name, exc)
            except Exception:
                log.exception("%s crashed", job.name)
            if self._stop.is_set():
                return
            job.wake.wait(wait)
            job.wake.clear()
