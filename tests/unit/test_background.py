"""The one place background work runs: a job that fails keeps its loop, a
wake runs it at once, start and stop are explicit."""

from __future__ import annotations

import threading

from warmcache.background import Scheduler
from warmcache.errors import StoreUnavailable
from warmcache.testing.polling import wait_for

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
    jobs.wake("cycles")
    wait_for("the woken run", lambda: len(runs) == 2, 5)
    assert not wake.is_set()  # cleared when the woken run started
    assert followed.is_set()
    before = {t.name for t in threading.enumerate()}
    jobs.stop()
    assert not jobs.started
    left = {t.name for t in threading.enumerate()}
    assert "watch" not in left and "APScheduler" in before and "APScheduler" not in left


def test_a_wake_during_a_run_runs_it_again_when_it_ends() -> None:
    """An early cycle asked for while a cycle runs is not lost (nor run
    beside it: max_instances=1)."""
    runs: list[int] = []
    inside, release = threading.Event(), threading.Event()
    overlapped: list[bool] = []
    running = threading.Lock()

    def cycle() -> float:
        overlapped.append(not running.acquire(blocking=False))
        try:
            runs.append(1)
            if len(runs) == 1:
                inside.set()
                release.wait(5)
        finally:
            running.release()
        return LONG

    jobs = Scheduler()
    jobs.every("cycles", cycle, retry_s=LONG)
    jobs.start()
    try:
        wait_for("the first run to be running", inside.is_set, 5)
        jobs.wake("cycles")
        jobs.wake("cycles")  # two asks while it runs: one more run
        release.set()
        wait_for("the run asked for", lambda: len(runs) == 2, 5)
    finally:
        jobs.stop()
    assert runs == [1, 1] and overlapped == [False, False]
