"""The background work of one instance, in one place: periodic jobs (build
cycles, health polls, service registration) on APScheduler, and followers
(the views of the store's change feed, the leader watch), each on a thread
of its own.

A job runs once at ``start``, then returns how long to wait before its next
run; APScheduler runs it then (``IntervalTrigger`` with a jitter of
``JITTER`` of the wait, so the instances of a fleet do not poll in step),
with coalescing (missed runs become one) and ``max_instances=1`` (a slow run
is never overlapped). An error of the port family (``WarmCacheError``) is
logged and retried after the job's ``retry_s``; anything else is logged as a
crash and retried the same way, so one bad run never ends a job. ``wake``
runs a job at once (an early build cycle: low water, a takeover); a wake
that comes while it runs makes it run again as soon as it ends.
``started`` is explicit: ``start`` twice is one start, ``stop`` waits for
running jobs and joins every follower.

Scheduling is in real time; what the jobs do runs on the service's injected
``Clock`` (tests move it, or call a job's body directly).
"""

from __future__ import annotations

import datetime
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from warmcache.errors import WarmCacheError

log = logging.getLogger(__name__)
JITTER = 0.1  # of each wait, either way


@dataclass
class Job:
    name: str
    run: Callable[[], float]  # one run; returns the seconds to the next
    retry_s: float
    wake: threading.Event = field(default_factory=threading.Event)
    running: bool = False


class Scheduler:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._followers: list[tuple[str, Callable[[threading.Event], None]]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._aps: BackgroundScheduler | None = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self._aps is not None

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
        """``wake``: an event the caller sets to ask for a run now (then
        calls ``wake(name)``); cleared when that run starts."""
        job = Job(name, run, retry_s, wake or threading.Event())
        self._jobs[name] = job
        return job

    def follow(self, name: str, body: Callable[[threading.Event], None]) -> None:
        """``body(stop)`` runs until ``stop`` is set (it handles its own errors)."""
        self._followers.append((name, body))

    def wake(self, name: str) -> None:
        """Run job ``name`` now (or, if it is running, again once it ends)."""
        job = self._jobs[name]
        job.wake.set()
        with self._lock:
            if self._aps is None or job.running:
                return  # not started (the first run is at start), or it reruns at its end
            self._aps.modify_job(name, next_run_time=_now())

    def start(self) -> None:
        with self._lock:
            if self._aps is not None:
                return
            self._stop.clear()
            aps = BackgroundScheduler(
                timezone=datetime.UTC,
                executors={"default": ThreadPoolExecutor(max(1, len(self._jobs)))},
                job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            )
            for job in self._jobs.values():
                aps.add_job(
                    functools.partial(self._run, job),
                    IntervalTrigger(seconds=job.retry_s, jitter=job.retry_s * JITTER),
                    id=job.name,
                    name=job.name,
                    next_run_time=_now(),
                )
            aps.start()
            self._aps = aps
        for name, body in self._followers:
            thread = threading.Thread(
                target=functools.partial(body, self._stop), name=name, daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            aps, self._aps = self._aps, None
        if aps is not None:
            aps.shutdown(wait=True)
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def _run(self, job: Job) -> None:
        with self._lock:
            job.running = True
            job.wake.clear()
        wait = job.retry_s
        try:
            wait = job.run()
        except WarmCacheError as exc:
            log.warning("%s failed: %s", job.name, exc)
        except Exception:
            log.exception("%s crashed", job.name)
        with self._lock:
            job.running = False
            if self._aps is None or self._stop.is_set():
                return
            if job.wake.is_set() or wait <= 0:  # woken while it ran: once more, now
                self._aps.modify_job(job.name, next_run_time=_now())
            else:
                self._aps.reschedule_job(
                    job.name, trigger=IntervalTrigger(seconds=wait, jitter=wait * JITTER)
                )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
