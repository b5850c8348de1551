"""Leader duty: one build cycle under the leader lock and what follows it
(reconcile findings, the claim sweep, pool sizes for the dashboards, the
cycle's completion record, the report), and the standby's watch that
takes over at once from a leader that died mid-cycle."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
from collections.abc import Callable

from warmcache import deadline
from warmcache.agent_versions import pace_rollout
from warmcache.builders.cycle import BuildCycle
from warmcache.builders.findings import report_findings
from warmcache.builders.report import CycleReport
from warmcache.claims.claim_log import ClaimLog
from warmcache.claims.quotas import sweep_windows
from warmcache.context import ServiceContext
from warmcache.demand.ledger import DemandLedger
from warmcache.demand.sizing import Sizer
from warmcache.demand.targets import TargetView
from warmcache.errors import LeadershipLost, StoreError, UnknownRule, WarmCacheError
from warmcache.leader.election import LeaderElection, Leadership, watch_poll_s
from warmcache.logs import log_context
from warmcache.model import BuildRule, PoolSummary
from warmcache.networks import settle_addresses
from warmcache.placement.pipeline import default_pipeline

log = logging.getLogger(__name__)


class LeaderDuty:
    def __init__(
        self,
        ctx: ServiceContext,
        *,
        claims: ClaimLog,
        ledger: DemandLedger | None = None,
        targets: TargetView | None = None,
        pools: Callable[[], list[PoolSummary]],
        trigger: Callable[[], None],
        rng: random.Random,
        reclaim: Callable[[], object] | None = None,
    ) -> None:
        config = ctx.config
        self._config = config
        self._store = ctx.store
        self._keys = ctx.keys
        self.election = LeaderElection(
            ctx.store, ctx.keys.leader(), config.node, ttl_s=config.leader_ttl_s, clock=ctx.clock
        )
        self.cycle = BuildCycle(
            store=ctx.store,
            keys=ctx.keys,
            flavors=lambda: {f.name: f for f in ctx.catalog.list()},
            images=lambda: {i.id: i for i in ctx.catalog.images()},
            prefetch_parallel=config.image_prefetch_parallel,
            shrink_after_s=config.shrink_after_s,
            hosts=ctx.hosts,
            agent_for=ctx.agent_for,
            events=ctx.events,
            clock=ctx.clock,
            pipeline=default_pipeline(rng),
            concurrency=config.build_concurrency,
            retries=config.build_retries,
            release=ctx.addresses,
            sizer=Sizer(
                ctx.store,
                ctx.keys,
                ctx.clock,
                ctx.demand,
                cycle_interval_s=config.cycle_interval_s,
                ledger=ledger,
                targets=targets or TargetView(ctx.store, ctx.keys),
                emit=ctx.emit,
                costs=ctx.cost,
                schedules=ctx.schedules,
            ),
        )
        self._hosts = ctx.hosts
        self._claims = claims
        self._pools = pools
        self._alerts = ctx.alerts
        self._clock = ctx.clock
        self._emit = ctx.emit
        self._trigger = trigger
        self._reclaim = reclaim  # leases run out: released after each cycle
        self.last_cycle: CycleReport | None = None
        self._own_tokens: set[int] = set()
        self._claims_swept_at = float("-inf")
        self._addresses_reported: set[tuple[str, str]] = set()

    def run_cycle(self) -> CycleReport | None:
        """Run one build cycle if this instance wins the leader lock."""
        with self.election.lead(on_lost=self._leadership_lost) as leadership:
            if leadership is None:
                return None
            with log_context(cycle=leadership.token):
                return self._lead_cycle(leadership)

    def _lead_cycle(self, leadership: Leadership) -> CycleReport:
        """The cycle and what follows it; every log line says the cycle's token."""
        node = self._config.node
        self._own_tokens.add(leadership.token)
        self._emit("leader.elected", node=node, token=leadership.token)
        writer = self.election.writer(leadership)
        report = self.cycle.run(writer)
        self.last_cycle = report
        with contextlib.suppress(LeadershipLost, StoreError):
            report_findings(self._store, self._keys, writer, self._emit, self._alerts)
        with contextlib.suppress(LeadershipLost, StoreError):
            pace_rollout(
                self._store,
                self._keys,
                writer.txn,
                self._hosts.hosts(),
                self._clock.now(),
                self._config.agent_update_parallel,
                self._config.agent_update_timeout_s,
                self._emit,
            )
        with contextlib.suppress(LeadershipLost, StoreError):
            settle_addresses(
                self._store,
                self._keys,
                writer.txn,
                self._clock.now(),
                self._emit,
                self._addresses_reported,
            )
        self._sweep_claims()
        if self._reclaim is not None and not leadership.lost.is_set():
            try:
                self._reclaim()
            except StoreError as exc:
                log.warning("lease reclaim: %s", exc)
        with contextlib.suppress(StoreError):
            for pool in self._pools():  # pool sizes over time, for Kibana
                self._emit(
                    "pool.state",
                    az=pool.az,
                    flavor=pool.flavor,
                    target=pool.target,
                    ready=pool.ready,
                    reserved=pool.reserved,
                    building=pool.building,
                )
        if not leadership.lost.is_set():
            # Marks the cycle complete: standbys that see the lock go
            # away without this record take over at once.
            with contextlib.suppress(LeadershipLost):
                writer.put(
                    self._keys.last_cycle(),
                    json.dumps(
                        {"node": node, **report.summary(), "finished_at": report.finished_at}
                    ),
                )
        if not leadership.lost.is_set():
            self._emit("leader.released", node=node, token=leadership.token)
        if report.built or report.failed or report.problems:
            subject, body = report.render()
            self._alerts.alert(subject, body)
        return report

    def explain(self, az: str, flavor: str, rule: BuildRule | None) -> dict[str, object]:
        """What a cycle would build for one pool now (``warmcache explain``)."""
        if rule is None:
            raise UnknownRule(az, flavor)
        return self.cycle.dry_run(az, flavor, rule)

    def last_completed_at(self) -> float | None:
        """When the last complete cycle (any leader's) finished, from its
        record in the store; ``None`` if none did or the store does not answer."""
        try:
            with deadline.within(1.0):
                stored = self._store.get(self._keys.last_cycle())
        except StoreError:
            return None
        if stored is None:
            return None
        try:
            return float(json.loads(stored.value)["finished_at"])
        except (ValueError, KeyError, TypeError):
            return None

    def cycle_job(self) -> float:
        """One scheduled cycle; an unclean one is retried sooner."""
        report = self.run_cycle()
        if report is not None and not report.clean:
            return min(self._config.cycle_interval_s, self._config.retry_interval_s)
        return self._config.cycle_interval_s

    def _sweep_claims(self) -> None:
        """Named claims past their retention, and quota window counters
        past their window, go, at most once per ``claim_sweep_interval_s``
        (claims: only the expiry buckets that ended since the last sweep;
        quota counters: their whole folder)."""
        now = self._clock.now()
        if now - self._claims_swept_at < self._config.claim_sweep_interval_s:
            return
        self._claims_swept_at = now
        try:
            swept = self._claims.sweep(now)
        except StoreError as exc:
            log.warning("claim sweep: %s", exc)
            return
        if swept:
            self._emit("claims.swept", count=swept)
        try:
            ended = sweep_windows(self._store, self._keys, now)
        except StoreError as exc:
            log.warning("quota counter sweep: %s", exc)
            return
        if ended:
            self._emit("quotas.swept", count=ended)

    def _leadership_lost(self, leadership: Leadership, reason: str) -> None:
        node = self._config.node
        log.warning("%s lost leadership (token %d): %s", node, leadership.token, reason)
        self._emit("leader.lost", node=node, token=leadership.token, reason=reason)

    def watch(self, stop: threading.Event) -> None:
        """Standby duty: when the leader's lock goes away before its cycle
        was recorded complete (it died, or was cut off past its TTL), start
        a cycle now instead of at the next interval."""
        poll_s = watch_poll_s(self._config.leader_ttl_s)
        while not stop.is_set():
            try:
                token = self.election.wait_for_vacancy(stop, poll_s=poll_s)
                if token is None:
                    stop.wait(poll_s)
                    continue
                if token in self._own_tokens:
                    continue
                last = self._store.get(self._keys.last_cycle())
                if last is None or json.loads(last.value).get("token") != token:
                    self._trigger()  # first: nothing may delay the takeover
                    self._emit("leader.takeover", node=self._config.node, abandoned_token=token)
            except WarmCacheError as exc:
                log.warning("leader watch: %s", exc)
                stop.wait(poll_s)
