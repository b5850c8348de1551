"""The service's background work in one list: what runs, how often, and
what wakes it early. ``WarmCache.start`` runs it on its ``Scheduler``."""

from __future__ import annotations

import threading
from collections.abc import Callable

from warmcache.acquire.acquirer import Acquirer
from warmcache.background import Scheduler
from warmcache.builders.duty import LeaderDuty
from warmcache.config import ServiceConfig
from warmcache.health.poller import HealthPoller
from warmcache.registration import ServiceRegistration


def service_jobs(
    config: ServiceConfig,
    *,
    registration: ServiceRegistration,
    acquirer: Acquirer,
    health: HealthPoller,
    duty: LeaderDuty,
    cycle_wanted: threading.Event,
    releases: Callable[[], float] | None = None,
    release_wanted: threading.Event | None = None,
    history: Callable[[], float] | None = None,
    approvals: Callable[[], float] | None = None,
) -> Scheduler:
    """Always: the service registration, the live views (the host view
    first, the pool index last) with the pool shares, and the demand
    ledger's flush, the release worker; with ``run_health``
    the health poller; with ``run_builds`` the build cycles (woken early by
    ``cycle_wanted``) and the standby's takeover watch."""
    jobs = Scheduler()
    jobs.every("service-registration", registration.beat, retry_s=registration.retry_s)
    for view in acquirer.views:
        jobs.follow(f"view {view.prefix}", view.follow)
    jobs.follow("acquire-shares", acquirer.follow_shares)
    jobs.follow("stall-watch", acquirer.stalls.run)  # refusals after a freeze
    jobs.every("demand-ledger", acquirer.ledger_job, retry_s=acquirer.flush_s)
    if releases is not None:  # every instance finishes the VMs given back
        jobs.every(
            "release-worker", releases, retry_s=config.release_interval_s, wake=release_wanted
        )
    if approvals is not None:  # approved requests whose runner died
        jobs.every("approvals-resume", approvals, retry_s=10.0)
    if history is not None:  # the dashboard's pool levels
        jobs.every("pool-history", history, retry_s=config.history_sample_s)
    if config.run_health:
        jobs.every("health-poller", health.job, retry_s=config.health_interval_s)
    if config.run_builds:
        jobs.every(
            "build-cycles",
            duty.cycle_job,
            retry_s=min(config.cycle_interval_s, config.retry_interval_s),
            wake=cycle_wanted,
        )
        jobs.follow("leader-watch", duty.watch)
    return jobs
