"""``WarmCache``: the handle an embedding service (or ``warmcache serve``) holds.

A facade over the feature packages that do the work: ``acquire/`` hands VMs out,
``builders/duty`` runs build cycles under the leader lock, ``health/`` polls
and purges, ``approvals`` (over the ``actions`` registry) runs approved
changes, ``jobs`` lists the periodic work its ``Scheduler`` runs; each package is
built from one ``ServiceContext`` (``context``). It is assembled by
``warmcache.bootstrap`` from config (the one place that builds adapters),
or by hand from ready adapters. ``start()`` runs the background work
(service registration; leader election and build cycles when
``run_builds``); ``stop()`` ends it. ``acquire`` and ``pools`` are
thread-safe and need no ``start()``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from warmcache.acquire.acquirer import Acquirer
from warmcache.agent_versions import AgentVersions
from warmcache.approvals import Approvals
from warmcache.builders.duty import LeaderDuty
from warmcache.builders.report import CycleReport
from warmcache.claims.claim_log import ClaimRecord
from warmcache.claims.quota_limits import seed
from warmcache.config import Config, CostConfig, DemandConfig, QuotaLimit, ServiceConfig
from warmcache.context import ServiceContext
from warmcache.demand.budgets import BudgetBook
from warmcache.demand.ledger import DemandLedger
from warmcache.demand.targets import TargetView
from warmcache.errors import StoreError
from warmcache.fleet import RESOURCES, FleetView
from warmcache.health.poller import HealthPoller
from warmcache.jobs import service_jobs
from warmcache.metrics import MetricsEvents, Readings
from warmcache.model import SERVICE_NAME, Mode, PoolInstance, PoolSummary
from warmcache.networks import NetworkBook
from warmcache.pool_history import PoolHistory, read_held
from warmcache.ports import (
    AlertSink,
    Clock,
    CoordinationStore,
    EventSink,
    FlavorCatalog,
    HostAgent,
)
from warmcache.readiness import Readiness
from warmcache.registration import ServiceRegistration
from warmcache.rules import RuleBook
from warmcache.schedules import Schedule
from warmcache.vms.lifecycle import Lifecycle

__all__ = ["SERVICE_NAME", "WarmCache"]

log = logging.getLogger(__name__)


class WarmCache:
    def __init__(
        self,
        *,
        config: ServiceConfig,
        store: CoordinationStore,
        catalog: FlavorCatalog,
        events: EventSink,
        alerts: AlertSink,
        agent_for: Callable[[str], HostAgent],
        clock: Clock,
        rng: random.Random | None = None,
        on_close: Callable[[], None] | None = None,
        demand: DemandConfig | None = None,
        quotas: Sequence[QuotaLimit] = (),
        cost: CostConfig | None = None,
        schedules: Sequence[Schedule] = (),
    ) -> None:
        self.config = config
        self.cost = cost or CostConfig()
        self.store = store
        self.catalog = catalog
        # Every event also feeds the Prometheus metrics (/metrics).
        self.metrics = events if isinstance(events, MetricsEvents) else MetricsEvents(events)
        self.events: EventSink = self.metrics
        self.alerts = alerts
        self.agent_for = agent_for
        self.clock = clock
        ctx = ServiceContext.assemble(
            config,
            store,
            catalog,
            agent_for,
            self.events,
            alerts,
            clock,
            demand,
            quotas,
            cost,
            schedules,
        )
        self.keys, self.hosts, self.drains = ctx.keys, ctx.hosts, ctx.drains
        self.rules = RuleBook(store, self.keys, catalog)
        self.networks = NetworkBook(store, self.keys)
        self.budgets = BudgetBook(store, self.keys)
        self.agent_versions = AgentVersions(store, self.keys, self.hosts)
        rng = rng or random.Random()
        self._on_close = on_close
        self._config_quotas = tuple(quotas)
        self._cycle_wanted = threading.Event()
        self._release_wanted = threading.Event()
        # Demand sizing's shared parts: what this instance is asked for (the
        # ledger, written by acquisitions, flushed before the leader sizes)
        # and the targets every instance follows (low water, /v1/pools).
        ledger = DemandLedger(
            store,
            self.keys,
            clock,
            config.node,
            bin_s=ctx.demand.bin_s,
            keep_h=ctx.demand.keep_h,
        )
        targets = TargetView(store, self.keys)
        self.acquirer = Acquirer(
            ctx, trigger_cycle=self.trigger_cycle, rng=rng, ledger=ledger, targets=targets
        )
        # Hosts, their capacity and VMs, rolled up per rack and AZ (/v1/hosts).
        self.fleet = FleetView(
            self.hosts,
            self.drains,
            self.acquirer.index.states_on,
            clock.now,
            catch_up=self.acquirer.catch_up,
        )
        self.lifecycle = Lifecycle(
            ctx,
            rules=self.acquirer.rules,
            held=self.acquirer.held,
            pools=self.acquirer.index,
            targets=targets,
            ledger=ledger,
            wake_worker=self._wake_releases,
        )
        self.duty = LeaderDuty(
            ctx,
            claims=self.acquirer.claimer.log,
            ledger=ledger,
            targets=targets,
            pools=self.pools,
            trigger=self.trigger_cycle,
            rng=rng,
            reclaim=self.lifecycle.reclaim_expired,
        )
        self.election = self.duty.election
        self.approvals = Approvals(
            dataclasses.replace(
                ctx,
                release_vm=lambda name: self.lifecycle.release(
                    name, "operator", admin=True, reason="purged"
                ),
            ),
            ttl_s=config.requests_ttl_s,
        )
        self.health = HealthPoller(ctx)
        self.registration = ServiceRegistration(store, config)
        self.metrics.watch_pools(self._readings())
        self._readiness = Readiness.of_service(ctx)
        self.history = PoolHistory(
            self.pools,
            lambda: read_held(store, self.keys),
            clock.now,
            every_s=config.history_sample_s,
            keep_s=360 * config.history_sample_s,
        )
        self.scheduler = service_jobs(
            config,
            registration=self.registration,
            acquirer=self.acquirer,
            health=self.health,
            duty=self.duty,
            cycle_wanted=self._cycle_wanted,
            releases=self.lifecycle.worker_job,
            release_wanted=self._release_wanted,
            history=self.history.sample,
            approvals=self.approvals.resume_job,
        )

    def _readings(self) -> Readings:
        """What /metrics reads at every scrape, handed to the metrics as
        callables (the metrics know no service)."""
        claimer = self.acquirer.claimer
        return Readings(
            pools=self.pools,
            hosts_by_az=self.hosts.count_by_az,
            racks=lambda: [
                (
                    r.az,
                    r.rack,
                    r.capacity.hosts,
                    r.unreachable,
                    {res: r.capacity.of(res)["free"] for res in RESOURCES},
                )
                for r in self.fleet.racks()
            ],
            claims=lambda: (claimer.batches, claimer.conflicts),
            share_instances=lambda: self.acquirer.index.dealt_instances,
            last_cycle_finished_at=self.duty.last_completed_at,
            low_water_ratio=self.config.low_water_ratio,
            cycle_interval_s=self.config.cycle_interval_s,
            cost=self.cost,
        )

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
            self._seed_quotas()
            for view in self.acquirer.views:
                view.refresh()
            self.scheduler.start()
        return self

    def _seed_quotas(self) -> None:
        """The config file's ``[[quotas.limits]]`` go into the store for
        requesters that have none there (``acquire.quota_limits``)."""
        if not self._config_quotas:
            return
        try:
            seed(self.store, self.keys, self._config_quotas, self.clock.now())
        except StoreError as exc:  # the next start seeds; the file's limits apply meanwhile
            log.warning("quota limits not seeded into the store: %s", exc)

    def stop(self) -> None:
        self.scheduler.stop()
        self.acquirer.ledger.flush()  # what this instance was asked for since the last flush
        self.registration.withdraw()

    def close(self) -> None:
        self.stop()
        self.lifecycle.worker.close()
        self._readiness.close()
        if self._on_close:
            self._on_close()

    def __enter__(self) -> WarmCache:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    # --- operations ------------------------------------------------------------------

    def trigger_cycle(self) -> None:
        """Ask for a build cycle now instead of at the next interval."""
        self._cycle_wanted.set()
        if self.config.run_builds:
            self.scheduler.wake("build-cycles")

    def _wake_releases(self) -> None:
        self._release_wanted.set()
        if self.started:
            self.scheduler.wake("release-worker")

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
        return self.duty.explain(az, flavor, self.rules.get(az, flavor))

    def readiness(self) -> dict[str, dict[str, Any]]:
        """The store, the flavor catalog and the event sink, each asked with
        ``service.readiness_timeout_s`` (``GET /readyz``)."""
        return self._readiness.check()

    def leader(self) -> dict[str, Any] | None:
        return self.election.holder()

    def pools(self) -> list[PoolSummary]:
        """Every pool's counts, from the pool index (O(pools x racks))."""
        return self.acquirer.pools()

    def acquire(
        self,
        flavor: str,
        az: str,
        count: int,
        mode: Mode | str,
        *,
        use_reserve: bool = False,
        requester: str = "anonymous",
        claim_id: str | None = None,
        lease_s: float | None = None,
    ) -> list[PoolInstance]:
        """Claim ``count`` ready VMs satisfying ``mode``, all or nothing,
        idempotent under ``claim_id`` when given, held until released (or
        ``lease_s``) (``warmcache.acquire.acquirer.Acquirer.acquire``;
        thread-safe)."""
        return self.acquirer.acquire(
            flavor,
            az,
            count,
            mode,
            use_reserve=use_reserve,
            requester=requester,
            claim_id=claim_id,
            lease_s=lease_s,
        )

    # --- handed-out VMs (warmcache.vms): ``requester`` set: only its own -------------

    def vm(self, name: str, requester: str | None = None) -> PoolInstance:
        """A VM in any state (``UnknownVm``)."""
        return self.lifecycle.vm(name, requester).record

    def release(self, name: str, requester: str | None = None) -> PoolInstance:
        """Give a handed-out VM back: it is releasing now, deleted (or
        recycled) by its agent soon."""
        return self.lifecycle.release(name, requester or "library", admin=requester is None)

    def release_claim(self, claim_id: str, requester: str | None = None) -> list[PoolInstance]:
        return self.lifecycle.release_claim(
            claim_id, requester or "library", admin=requester is None
        )

    def renew(self, name: str, lease_s: float, requester: str | None = None) -> PoolInstance:
        return self.lifecycle.renew(name, lease_s, requester or "library", admin=requester is None)

    def claim(self, claim_id: str) -> ClaimRecord:
        """A named claim that landed, with its VMs; ``UnknownClaim`` if none did."""
        return self.acquirer.claim(claim_id)
