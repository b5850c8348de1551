"""``WarmCache``: the handle an embedding service (or ``warmcache serve``) holds.

It is assembled by ``warmcache.bootstrap`` from config, or by hand from
ready adapters. ``start()`` runs the background work (service registration;
leader election and build cycles when ``run_builds``); ``stop()`` ends it.
``acquire`` and ``pools`` are thread-safe and need no ``start()``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from warmcache import deadline
from warmcache.acquire.acquirer import Acquirer
from warmcache.acquire.claims import ClaimRecord
from warmcache.adapters.log_alerts import LogAlerts
from warmcache.approvals import Approvals
from warmcache.builders.cycle import BuildCycle, CycleReport
from warmcache.builders.findings import report_findings
from warmcache.config import Config, ServiceConfig
from warmcache.errors import (
    LeadershipLost,
    StoreError,
    UnknownRule,
    WarmCacheError,
)
from warmcache.health.poller import HealthPoller
from warmcache.health.purge import purge_vm
from warmcache.inventory import DrainView, HostView
from warmcache.layout import Keys
from warmcache.leader.election import LeaderElection, Leadership, watch_poll_s
from warmcache.metrics import MetricsEvents
from warmcache.model import (
    SERVICE_NAME,
    InstanceState,
    Mode,
    PoolInstance,
    PoolSummary,
)
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
from warmcache.rules import RuleBook

log = logging.getLogger(__name__)

__all__ = ["SERVICE_NAME", "WarmCache"]

STOP_DEADLINE_S = 2.0


class WarmCache:
    def __init__(
        self,
        *,
        config: ServiceConfig,
        store: CoordinationStore,
        catalog: FlavorCatalog,
        events: EventSink,
        agent_for: Callable[[str], HostAgent],
        clock: Clock,
        alerts: AlertSink | None = None,
        rng: random.Random | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.catalog = catalog
        # Every event also feeds the Prometheus metrics (/metrics).
        self.metrics = events if isinstance(events, MetricsEvents) else MetricsEvents(events)
        self.events: EventSink = self.metrics
        events = self.metrics
        self.alerts: AlertSink = alerts or LogAlerts()
        self.agent_for = agent_for
        self.clock = clock
        self.keys = Keys(config.prefix)
        self.rules = RuleBook(store, self.keys, catalog)
        self._rng = rng or random.Random()
        self._on_close = on_close
        self.election = LeaderElection(
            store, self.keys.leader(), config.node, ttl_s=config.leader_ttl_s, clock=clock
        )
        self.hosts = HostView(store, self.keys.hosts_dir())
        self.drains = DrainView(store, self.keys.drain())
        self.acquirer = Acquirer(config=config, store=store, keys=self.keys, catalog=catalog,
                                 hosts=self.hosts, drains=self.drains, clock=clock,
                                 emit=self._emit, trigger_cycle=self.trigger_cycle,
                                 rng=self._rng)
        self._cycle = BuildCycle(
            store=store, keys=self.keys,
            flavors=lambda: {f.name: f for f in catalog.list()},
            hosts=self.hosts, agent_for=agent_for, events=events, clock=clock,
            pipeline=default_pipeline(self._rng),
            concurrency=config.build_concurrency, retries=config.build_retries,
        )
        self.approvals = Approvals(store, self.keys, clock, ttl_s=config.requests_ttl_s,
                                   execute=self._execute_change, emit=self._emit)
        self.health = HealthPoller(
            store=store, keys=self.keys, hosts=self.hosts, agent_for=agent_for, events=events,
            alerts=self.alerts, clock=clock, node=config.node, ttl_s=config.leader_ttl_s,
            failures_to_purge=config.health_failures_to_purge,
        )
        self.metrics.watch_pools(self.pools, self.hosts.count, lambda: (
            self.acquirer.claimer.batches, self.acquirer.claimer.conflicts))
        self._readiness = Readiness({
            "store": lambda: store.get(self.keys.leader()),
            "catalog": lambda: catalog.get("readiness-probe"),
            "events": lambda: self.events.recent(1),
        }, config.readiness_timeout_s)
        self._stop = threading.Event()
        self._trigger = threading.Event()
        self._threads: list[threading.Thread] = []
        self.last_cycle: CycleReport | None = None
        self._own_tokens: set[int] = set()
        self._claims_swept_at = float("-inf")

    @classmethod
    def from_config(cls, config: Config | str | Path) -> WarmCache:
        from warmcache.bootstrap import build

        service: WarmCache = build(config)
        return service

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> WarmCache:
        if self._threads:
            return self
        self._stop.clear()
        self._spawn(self._register_loop, "service-registration")
        for view in self.acquirer.views:
            view.refresh()
            self._spawn(functools.partial(view.follow, self._stop), f"view {view.prefix}")
        self._spawn(functools.partial(self.acquirer.follow_shares, self._stop), "acquire-shares")
        if self.config.run_health:
            self._spawn(self._health_loop, "health-poller")
        if self.config.run_builds:
            self._spawn(self._builder_loop, "build-cycles")
            self._spawn(self._takeover_loop, "leader-watch")
        return self

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._trigger.set()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        try:
            # a stopping instance does not wait on a dead store: its
            # registration expires with its TTL anyway
            with deadline.within(STOP_DEADLINE_S):
                self.store.deregister_service(SERVICE_NAME, self.config.node)
        except WarmCacheError:
            log.warning("could not deregister %s", self.config.node)

    def close(self) -> None:
        self.stop()
        self._readiness.close()
        if self._on_close:
            self._on_close()

    def __enter__(self) -> WarmCache:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def _register_loop(self) -> None:
        address = f"http://{self.config.listen_host}:{self.config.listen_port}"
        interval = self.config.service_ttl_s / 2
        while not self._stop.is_set():
            try:
                self.store.register_service(SERVICE_NAME, self.config.node, address,
                                            self.config.service_ttl_s)
            except WarmCacheError as exc:
                log.warning("service registration failed: %s", exc)
                interval = min(interval, 5.0)
            self._stop.wait(interval)

    def _health_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.health.poll()
            except WarmCacheError as exc:
                log.warning("health poll failed: %s", exc)
            except Exception:
                log.exception("health poll crashed")
            self._stop.wait(self.config.health_interval_s)

    def _builder_loop(self) -> None:
        while not self._stop.is_set():
            wait = self.config.cycle_interval_s
            try:
                report = self.run_cycle()
                if report is not None and not report.clean:
                    wait = min(wait, self.config.retry_interval_s)
            except WarmCacheError as exc:
                log.warning("build cycle failed: %s", exc)
                wait = min(wait, self.config.retry_interval_s)
            except Exception:
                log.exception("build cycle crashed")
                wait = min(wait, self.config.retry_interval_s)
            self._trigger.wait(wait)
            self._trigger.clear()

    # --- operations ------------------------------------------------------------------

    def trigger_cycle(self) -> None:
        """Ask for a build cycle now instead of at the next interval."""
        self._trigger.set()

    def run_cycle(self) -> CycleReport | None:
        """Run one build cycle if this instance wins the leader lock."""
        with self.election.lead(on_lost=self._leadership_lost) as leadership:
            if leadership is None:
                return None
            self._own_tokens.add(leadership.token)
            self._emit("leader.elected", node=self.config.node, token=leadership.token)
            writer = self.election.writer(leadership)
            report = self._cycle.run(writer)
            self.last_cycle = report
            with contextlib.suppress(LeadershipLost, StoreError):
                report_findings(self.store, self.keys, writer, self._emit, self.alerts)
            self._sweep_claims()
            with contextlib.suppress(StoreError):
                for pool in self.pools():  # pool sizes over time, for Kibana
                    self._emit("pool.state", az=pool.az, flavor=pool.flavor, target=pool.target,
                               ready=pool.ready, reserved=pool.reserved, building=pool.building)
            if not leadership.lost.is_set():
                # Marks the cycle complete: standbys that see the lock go
                # away without this record take over at once.
                with contextlib.suppress(LeadershipLost):
                    writer.put(self.keys.last_cycle(), json.dumps(
                        {"node": self.config.node, **report.summary(),
                         "finished_at": report.finished_at}))
            if not leadership.lost.is_set():
                self._emit("leader.released", node=self.config.node, token=leadership.token)
            if report.built or report.failed or report.problems:
                subject, body = report.render()
                self.alerts.alert(subject, body)
            return report

    def _sweep_claims(self) -> None:
        """Named claims past their retention go, at most once per
        ``claim_sweep_interval_s`` (the sweep reads the whole claims directory)."""
        now = self.clock.now()
        if now - self._claims_swept_at < self.config.claim_sweep_interval_s:
            return
        self._claims_swept_at = now
        try:
            swept = self.acquirer.claimer.log.sweep(now)
        except StoreError as exc:
            log.warning("claim sweep: %s", exc)
            return
        if swept:
            self._emit("claims.swept", count=swept)

    def _leadership_lost(self, leadership: Leadership, reason: str) -> None:
        log.warning("%s lost leadership (token %d): %s", self.config.node, leadership.token,
                    reason)
        self._emit("leader.lost", node=self.config.node, token=leadership.token, reason=reason)

    def _takeover_loop(self) -> None:
        """Standby duty: when the leader's lock goes away before its cycle
        was recorded complete (it died, or was cut off past its TTL), start
        a cycle now instead of at the next interval."""
        poll_s = watch_poll_s(self.config.leader_ttl_s)
        while not self._stop.is_set():
            try:
                token = self.election.wait_for_vacancy(self._stop, poll_s=poll_s)
                if token is None:
                    self._stop.wait(poll_s)
                    continue
                if token in self._own_tokens:
                    continue
                last = self.store.get(self.keys.last_cycle())
                if last is None or json.loads(last.value).get("token") != token:
                    self.trigger_cycle()  # first: nothing may delay the takeover
                    self._emit("leader.takeover", node=self.config.node, abandoned_token=token)
            except WarmCacheError as exc:
                log.warning("leader watch: %s", exc)
                self._stop.wait(poll_s)

    def explain(self, az: str, flavor: str) -> dict[str, object]:
        """Dry-run placement for one pool (``warmcache explain``)."""
        rule = self.rules.get(az, flavor)
        if rule is None:
            raise UnknownRule(az, flavor)
        return self._cycle.dry_run(az, flavor, rule)

    def _execute_change(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        """Run an approved destructive change (see warmcache.approvals)."""
        if action == "delete_rule":
            return {"deleted": self.store.delete(self.keys.rule(params["az"], params["flavor"]))}
        if action == "drain_hypervisor":
            # No new VM is placed there and none of its pooled VMs is handed out.
            self.store.put(self.keys.drain(params["hypervisor"]),
                           json.dumps({"at": self.clock.now()}))
            return {"drained": params["hypervisor"]}
        return self._purge_pool(params["az"], params["flavor"])

    def _purge_pool(self, az: str, flavor: str) -> dict[str, Any]:
        self.hosts.catch_up()
        kvs, _ = self.store.range(self.keys.pool_dir(az))
        purged, kept = [], []
        for kv in kvs:
            rec = PoolInstance.model_validate_json(kv.value)
            if rec.flavor != flavor or rec.state not in (InstanceState.READY,
                                                         InstanceState.RESERVED):
                continue
            host = self.hosts.get(rec.hypervisor)
            agent = self.agent_for(host.endpoint) if host and host.endpoint else None
            if purge_vm(self.store.txn, kv.key, kv.mod_revision, rec, agent):
                purged.append(rec.name)
                self._emit("vm.purged", name=rec.name, az=az, flavor=flavor,
                           hypervisor=rec.hypervisor, reason="pool purge (approved)")
            else:
                kept.append(rec.name)
        return {"purged": len(purged), "not_purged": kept}

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
    ) -> list[PoolInstance]:
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
