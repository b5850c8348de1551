"""The one place background work runs: a job that fails keeps its loop, a
wake runs it at once, start and stop are explicit."""

from __future__ import annotations

import threading

from tests.polling import wait_for
from warmcache.errors import StoreUnavailable
from warmcache.scheduler import Scheduler

LONG = 3600.0  # an interval no test waits out: only a wake or stop ends it


def test_a_failing_job_is_retried_and_a_crash_does_not_end_its_loop() -> None:
    runs: list[int] = []

    def job() -> float:
        runs.append(len(runs))
        if len(runs) == 1:
            raise StoreUnavailable("the store", "it is down")
        if len(runs) == 2:
            raise RuntimeError("a bug")
        return LONG

    jobs = Scheduler()
    jobs.every("flaky", job, retry_s=0.01)
    jobs.start()
    try:
        wait_for("the third run", lambda: len(runs) >= 3, 5)
    finally:
        jobs.stop()
    assert runs == [0, 1, 2]  # then it waits its interval


def test_a_wake_runs_the_job_now_and_stop_ends_every_thread() -> None:
    runs: list[float] = []
    wake = threading.Event()
    followed = threading.Event()

    def follower(stop: threading.Event) -> None:
        followed.set()
        stop.wait()

    def cycle() -> float:
        runs.append(1.0)
        return LONG

    jobs = Scheduler()
    jobs.every("cycles", cycle, retry_s=LONG, wake=wake)
    jobs.follow("watch", follower)
    assert not jobs.started
    jobs.start()
    jobs.start()  # a second start is the same start
    assert jobs.started
    wait_for("the first run", lambda: runs, 5)
    wake.set()
    wait_for("the woken run", lambda: len(runs) == 2, 5)
    assert followed.is_set()
    jobs.stop()
    assert not jobs.started
    assert not [t for t in threading.enumerate() if t.name in ("cycles", "watch")]
