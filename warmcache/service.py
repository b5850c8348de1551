"""``WarmCache``: the handle an embedding service (or ``warmcache serve``) holds.

A facade over the rooms that do the work: ``acquire/`` hands VMs out,
``leader/duty`` runs build cycles under the leader lock, ``health/`` polls
and purges, ``approvals`` (over the ``actions`` registry) runs approved
changes, ``scheduler`` runs the periodic work. It is assembled by
``warmcache.bootstrap`` from config (the one place that builds adapters),
or by hand from ready adapters. ``start()`` runs the background work
(service registration; leader election and build cycles when
``run_builds``); ``stop()`` ends it. ``acquire`` and ``pools`` are
thread-safe and need no ``start()``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from warmcache.acquire.acquirer import Acquirer
from warmcache.acquire.claims import ClaimRecord
from warmcache.actions import ChangeContext
from warmcache.approvals import Approvals
from warmcache.builders.cycle import BuildCycle, CycleReport
from warmcache.config import Config, ServiceConfig
from warmcache.errors import UnknownRule
from warmcache.health.poller import HealthPoller
from warmcache.inventory import DrainView, HostView
from warmcache.layout import Keys
from warmcache.leader.duty import LeaderDuty
from warmcache.leader.election import LeaderElection
from warmcache.metrics import MetricsEvents
from warmcache.model import SERVICE_NAME, Mode, PoolInstance, PoolSummary
from warmcache.placement.pipeline import default_pipeline
from warmcache.ports import (
    AlertSink,
    Clock,
    CoordinationStore,
    Event,
    EventSink,
    FlavorCatalog,
    HostAgent,
)
from warmcache.readiness import Readiness
from warmcache.registration import ServiceRegistration
from warmcache.rules import RuleBook
from warmcache.scheduler import Scheduler

__all__ = ["SERVICE_NAME", "WarmCache"]


class WarmCache:
    def __init__(self, *, config: ServiceConfig, store: CoordinationStore,
                 catalog: FlavorCatalog, events: EventSink, alerts: AlertSink,
                 agent_for: Callable[[str], HostAgent], clock: Clock,
                 rng: random.Random | None = None,
                 on_close: Callable[[], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.catalog = catalog
        # Every event also feeds the Prometheus metrics (/metrics).
        self.metrics = events if isinstance(events, MetricsEvents) else MetricsEvents(events)
        self.events: EventSink = self.metrics
        self.alerts = alerts
        self.agent_for = agent_for
        self.clock = clock
        self.keys = Keys(config.prefix)
        self.rules = RuleBook(store, self.keys, catalog)
        rng = rng or random.Random()
        self._on_close = on_close
        self._cycle_wanted = threading.Event()
        self.election = LeaderElection(store, self.keys.leader(), config.node,
                                       ttl_s=config.leader_ttl_s, clock=clock)
        self.hosts = HostView(store, self.keys.hosts_dir())
        self.drains = DrainView(store, self.keys.drain())
        self.acquirer = Acquirer(config=config, store=store, keys=self.keys, catalog=catalog,
                                 hosts=self.hosts, drains=self.drains, clock=clock,
                                 emit=self._emit, trigger_cycle=self.trigger_cycle, rng=rng)
        self._cycle = BuildCycle(
            store=store, keys=self.keys, flavors=lambda: {f.name: f for f in catalog.list()},
            hosts=self.hosts, agent_for=agent_for, events=self.events, clock=clock,
            pipeline=default_pipeline(rng), concurrency=config.build_concurrency,
            retries=config.build_retries)
        self.duty = LeaderDuty(config=config, store=store, keys=self.keys,
                               election=self.election, cycle=self._cycle,
                               claims=self.acquirer.claimer.log, pools=self.pools,
                               alerts=alerts, clock=clock, emit=self._emit,
                               trigger=self.trigger_cycle)
        self.approvals = Approvals(
            ChangeContext(store, self.keys, clock, self.hosts, agent_for, self._emit),
            ttl_s=config.requests_ttl_s)
        self.health = HealthPoller(
            store=store, keys=self.keys, hosts=self.hosts, agent_for=agent_for,
            events=self.events, alerts=alerts, clock=clock, node=config.node,
            ttl_s=config.leader_ttl_s, failures_to_purge=config.health_failures_to_purge,
            interval_s=config.health_interval_s)
        self.metrics.watch_pools(self.pools, self.hosts.count, lambda: (
            self.acquirer.claimer.batches, self.acquirer.claimer.conflicts))
        self._readiness = Readiness({
            "store": lambda: store.get(self.keys.leader()),
            "catalog": lambda: catalog.get("readiness-probe"),
            "events": lambda: self.events.recent(1),
        }, config.readiness_timeout_s)
        self.registration = ServiceRegistration(store, config)
        self.scheduler = self._schedule()

    def _schedule(self) -> Scheduler:
        cfg = self.config
        jobs = Scheduler()
        jobs.every("service-registration", self.registration.beat,
                   retry_s=self.registration.retry_s)
        for view in self.acquirer.views:
            jobs.follow(f"view {view.prefix}", view.follow)
        jobs.follow("acquire-shares", self.acquirer.follow_shares)
        if cfg.run_health:
            jobs.every("health-poller", self.health.job, retry_s=cfg.health_interval_s)
        if cfg.run_builds:
            jobs.every("build-cycles", self.duty.cycle_job,
                       retry_s=min(cfg.cycle_interval_s, cfg.retry_interval_s),
                       wake=self._cycle_wanted)
            jobs.follow("leader-watch", self.duty.watch)
        return jobs

    @classmethod
    def from_config(cls, config: Config | str | Path) -> WarmCache:
        from warmcache.bootstrap import build

        return build(config)

    # --- lifecycle -------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self.scheduler.started

    def start(self) -> WarmCache:
        if not self.started:
            for view in self.acquirer.views:
                view.refresh()
            self.scheduler.start()
        return self

    def stop(self) -> None:
        self.scheduler.stop()
        self.registration.withdraw()

    def close(self) -> None:
        self.stop()
        self._readiness.close()
        if self._on_close:
            self._on_close()

    def __enter__(self) -> WarmCache:
        return self.start()

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None,
                 _tb: TracebackType | None) -> None:
        self.close()

    # --- operations ------------------------------------------------------------------

    def trigger_cycle(self) -> None:
        """Ask for a build cycle now instead of at the next interval."""
        self._cycle_wanted.set()

    @property
    def cycle_pending(self) -> bool:
        """A cycle was asked for (``trigger_cycle``) and has not started yet."""
        return self._cycle_wanted.is_set()

    def run_cycle(self) -> CycleReport | None:
        """Run one build cycle if this instance wins the leader lock."""
        return self.duty.run_cycle()

    @property
    def last_cycle(self) -> CycleReport | None:
        return self.duty.last_cycle

    def explain(self, az: str, flavor: str) -> dict[str, object]:
        """Dry-run placement for one pool (``warmcache explain``)."""
        rule = self.rules.get(az, flavor)
        if rule is None:
            raise UnknownRule(az, flavor)
        return self._cycle.dry_run(az, flavor, rule)

    def readiness(self) -> dict[str, dict[str, Any]]:
        """The store, the flavor catalog and the event sink, each asked with
        ``service.readiness_timeout_s`` (``GET /readyz``)."""
        return self._readiness.check()

    def leader(self) -> dict[str, Any] | None:
        return self.election.holder()

    def pools(self) -> list[PoolSummary]:
        """Every pool's counts, from the pool index (O(pools x racks))."""
        return self.acquirer.pools()

    def acquire(self, flavor: str, az: str, count: int, mode: Mode | str, *,
                use_reserve: bool = False, requester: str = "anonymous",
                claim_id: str | None = None) -> list[PoolInstance]:
        """Claim ``count`` ready VMs satisfying ``mode``, all or nothing,
        idempotent under ``claim_id`` when given
        (``warmcache.acquire.acquirer.Acquirer.acquire``; thread-safe)."""
        return self.acquirer.acquire(flavor, az, count, mode, use_reserve=use_reserve,
                                     requester=requester, claim_id=claim_id)

    def claim(self, claim_id: str) -> ClaimRecord:
        """A named claim that landed, with its VMs; ``UnknownClaim`` if none did."""
        return self.acquirer.claim(claim_id)

    def _emit(self, type_: str, **fields: object) -> None:
        self.events.emit(Event(type_, self.clock.now(), fields))
