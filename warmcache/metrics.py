"""Prometheus metrics for ``/metrics``, from what the core already says.

``MetricsEvents`` wraps the event sink: every event is passed on unchanged
and also counted (acquisitions and their latency, builds and their
durations, failures, purges, leadership). Pool sizes per state and live
hosts are read when Prometheus scrapes, from the service, so they are never
out of step with the store. One registry per service: several instances in
one process (tests, embedding) never collide.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from warmcache.config import CostConfig
from warmcache.model import STANDBY_TIERS, PoolSummary
from warmcache.pool_history import AcquisitionStats
from warmcache.ports import Event, EventSink


@dataclass(frozen=True)
class Readings:
    """What the service is asked at scrape time (each cheap: the pool index,
    the host view's per-AZ counts, one store read for the last cycle)."""

    pools: Callable[[], list[PoolSummary]]
    hosts_by_az: Callable[[], dict[str, int]]
    claims: Callable[[], tuple[int, int]] = lambda: (0, 0)  # (transactions, conflicts)
    share_instances: Callable[[], int] = lambda: 1  # instances the shares are dealt over
    last_cycle_finished_at: Callable[[], float | None] = lambda: None
    # Capacity per rack: (az, rack, heartbeating hosts, unreachable hosts,
    # {resource: free}) for every rack (warmcache.fleet).
    racks: Callable[[], list[tuple[str, str, int, int, dict[str, int]]]] = list
    low_water_ratio: float = 0.5
    cycle_interval_s: float = 900.0
    cost: CostConfig = field(default_factory=CostConfig)  # tier weights ([cost])
    now: Callable[[], float] = time.monotonic  # what idle cost is integrated over


class _PoolCollector(Collector):
    """Every instance exports the whole pool (the same numbers): dashboards
    and alerts take ``max`` over instances, never ``sum``."""

    def __init__(self, readings: Readings, served: Callable[[str, str], int]) -> None:
        self._r = readings
        self._served = served  # requests served per pool (this instance's)
        self._cost_lock = threading.Lock()
        self._idle_cost: dict[tuple[str, str], float] = {}  # cost units since start
        self._cost_rate: dict[tuple[str, str], float] = {}  # per hour, at the last scrape
        self._cost_at: float | None = None

    def _tiers(self, pools: list[PoolSummary]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Each tier's VMs and target, and what waiting VMs cost (issue 29):
        per hour now, integrated since this instance started (between
        scrapes, at the rate seen at the earlier one), and per request it
        served."""
        held = GaugeMetricFamily(
            "warmcache_pool_tier_vms",
            "Ready and reserved VMs that count, per standby tier",
            labels=["az", "flavor", "tier"],
        )
        wanted = GaugeMetricFamily(
            "warmcache_pool_tier_target_vms",
            "What each standby tier should hold (rule tiers, or an objective pool's mix)",
            labels=["az", "flavor", "tier"],
        )
        rate = GaugeMetricFamily(
            "warmcache_pool_idle_cost_per_hour",
            "Cost units per hour of the pool's waiting VMs, weighted by tier ([cost])",
            labels=["az", "flavor"],
        )
        total = CounterMetricFamily(
            "warmcache_pool_idle_cost_units",
            "Cost units the pool's waiting VMs have cost since this instance started",
            labels=["az", "flavor"],
        )
        per_request = GaugeMetricFamily(
            "warmcache_pool_idle_cost_per_served_request",
            "Idle cost units since start per request this instance served from the pool",
            labels=["az", "flavor"],
        )
        now = self._r.now()
        with self._cost_lock:
            since = self._cost_at
            self._cost_at = now
            for p in pools:
                pool = (p.az, p.flavor)
                if since is not None:
                    spent = self._cost_rate.get(pool, 0.0) * max(0.0, now - since) / 3600
                    self._idle_cost[pool] = self._idle_cost.get(pool, 0.0) + spent
                self._cost_rate[pool] = sum(
                    n * self._r.cost.weight(t) for t, n in p.standby.items()
                )
                for tier in STANDBY_TIERS:
                    held.add_metric([p.az, p.flavor, tier], p.standby.get(tier, 0))
                    wanted.add_metric([p.az, p.flavor, tier], p.tier_targets.get(tier, 0))
                rate.add_metric([p.az, p.flavor], self._cost_rate[pool])
                spent_total = self._idle_cost.get(pool, 0.0)
                total.add_metric([p.az, p.flavor], spent_total)
                served = self._served(p.az, p.flavor)
                if served:
                    per_request.add_metric([p.az, p.flavor], spent_total / served)
        yield held
        yield wanted
        yield rate
        yield total
        yield per_request

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        vms = GaugeMetricFamily(
            "warmcache_pool_vms",
            "Pooled VMs per AZ, flavor and state",
            labels=["az", "flavor", "state"],
        )
        target = GaugeMetricFamily(
            "warmcache_pool_target_vms",
            "Target pool size (the rule's total_instances, or a demand pool's current target)",
            labels=["az", "flavor"],
        )
        low_water = GaugeMetricFamily(
            "warmcache_pool_low_water_vms",
            "Acquirable VMs below which an acquisition triggers an early cycle",
            labels=["az", "flavor"],
        )
        per_rack = GaugeMetricFamily(
            "warmcache_pool_rack_ready_vms",
            "Ready VMs per pool and rack (what rack-aware acquisitions draw on)",
            labels=["az", "flavor", "rack"],
        )
        stale = GaugeMetricFamily(
            "warmcache_pool_stale_vms",
            "Ready or reserved VMs of an older generation, being rolled over",
            labels=["az", "flavor"],
        )
        pools = self._r.pools()
        for p in pools:
            stale.add_metric([p.az, p.flavor], p.stale)
            for rack, ready in sorted(p.ready_by_rack.items()):
                per_rack.add_metric([p.az, p.flavor, rack], ready)
            for state in ("ready", "reserved", "building"):
                vms.add_metric([p.az, p.flavor, state], getattr(p, state))
            target.add_metric([p.az, p.flavor], p.target)
            low_water.add_metric([p.az, p.flavor], p.target * self._r.low_water_ratio)
        yield vms
        yield target
        yield low_water
        yield per_rack
        yield stale
        yield from self._tiers(pools)
        heartbeating = GaugeMetricFamily(
            "warmcache_agents_heartbeating",
            "Hypervisors whose agent heartbeat is live, per AZ (0 for an AZ with pools)",
            labels=["az"],
        )
        by_az = {p.az: 0 for p in pools} | self._r.hosts_by_az()
        for az, count in sorted(by_az.items()):
            heartbeating.add_metric([az], count)
        yield heartbeating
        rack_free = GaugeMetricFamily(
            "warmcache_rack_free",
            "Free capacity per rack, net of agents' buffers (resource: vcpus, memory_mib, "
            "disk_gib, nvme); max over instances",
            labels=["az", "rack", "resource"],
        )
        rack_hosts = GaugeMetricFamily(
            "warmcache_rack_hosts",
            "Hosts per rack: heartbeating (up) or whose heartbeat expired with VMs on them "
            "(unreachable)",
            labels=["az", "rack", "status"],
        )
        for az, rack, up, unreachable, free in self._r.racks():
            rack_hosts.add_metric([az, rack, "up"], up)
            rack_hosts.add_metric([az, rack, "unreachable"], unreachable)
            for resource, amount in free.items():
                rack_free.add_metric([az, rack, resource], amount)
        yield rack_free
        yield rack_hosts
        finished_at = self._r.last_cycle_finished_at()
        if finished_at is not None:
            yield GaugeMetricFamily(
                "warmcache_last_cycle_finished_timestamp_seconds",
                "When the last complete build cycle (any leader) finished",
                value=finished_at,
            )
        yield GaugeMetricFamily(
            "warmcache_cycle_interval_seconds",
            "service.cycle_interval_s: build cycles come at least this often",
            value=self._r.cycle_interval_s,
        )
        # Acquisitions per transaction is how well group commit batches;
        # conflicts, how often instances reached for the same VM.
        transactions, conflicts = self._r.claims()
        yield CounterMetricFamily(
            "warmcache_claim_transactions",
            "Store transactions sent for claims (one per batch)",
            value=transactions,
        )
        yield CounterMetricFamily(
            "warmcache_claim_conflicts",
            "Claims that lost a compare to a concurrent change and selected again",
            value=conflicts,
        )
        yield GaugeMetricFamily(
            "warmcache_share_instances",
            "Service instances this one has dealt the pools' shares over (after a "
            "membership change, once every VM is re-dealt); differs between "
            "instances while the registry is out of step",
            value=self._r.share_instances(),
        )


class MetricsEvents:
    """An ``EventSink`` that forwards every event and turns it into metrics."""

    def __init__(self, inner: EventSink) -> None:
        self._inner = inner
        self.acquisitions_seen = AcquisitionStats()  # for the dashboard
        self.registry = CollectorRegistry()
        r = self.registry
        self.acquisitions = Counter(
            "warmcache_acquisitions",
            "Acquisitions by outcome",
            ["az", "flavor", "mode", "outcome"],
            registry=r,
        )
        self.acquire_seconds = Histogram(
            "warmcache_acquire_seconds",
            "Latency of successful acquisitions",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.tier_seconds = Histogram(
            "warmcache_acquire_tier_seconds",
            "Latency of successful acquisitions by the slowest standby tier they took from",
            ["tier"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.tier_vms = Counter(
            "warmcache_served_vms",
            "VMs handed out, per pool and the standby tier each waited in",
            ["az", "flavor", "tier"],
            registry=r,
        )
        self.builds = Counter(
            "warmcache_builds", "VM builds by outcome", ["az", "flavor", "outcome"], registry=r
        )
        self.build_seconds = Histogram(
            "warmcache_build_seconds",
            "Build duration, record to ready",
            ["az", "flavor"],
            registry=r,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        )
        self.purges = Counter("warmcache_purges", "VMs purged", ["az", "flavor"], registry=r)
        self.leader = Gauge(
            "warmcache_leader", "1 while this instance runs a build cycle", registry=r
        )
        self.leader_changes = Counter(
            "warmcache_leadership_events", "Leadership events", ["event"], registry=r
        )
        self.heartbeats_lost = Counter(
            "warmcache_agent_heartbeats_lost", "Hosts seen losing their heartbeat", registry=r
        )
        # Sinks that queue (SQLite, Elasticsearch) count what they had to drop.
        events_dropped = Gauge(
            "warmcache_events_dropped",
            "Events the event sink dropped (queue full, spool full, unwritten at close)",
            registry=r,
        )
        events_dropped.set_function(lambda: float(inner.dropped))

    def watch_pools(self, readings: Readings) -> None:
        """Export what ``readings`` reads at every scrape."""
        stats = self.acquisitions_seen
        self.registry.register(
            _PoolCollector(readings, lambda az, f: int(str(stats.of(az, f)["served"])))
        )

    def emit(self, event: Event) -> None:
        self._inner.emit(event)
        self.acquisitions_seen.observe(event)
        f = event.fields
        if event.type == "acquisition":
            self.acquisitions.labels(f["az"], f["flavor"], f["mode"], "ok").inc()
            self.acquire_seconds.observe(float(f["latency_ms"]) / 1000)
            tiers = f.get("tiers")
            if isinstance(tiers, dict):
                for tier, n in tiers.items():
                    self.tier_vms.labels(f["az"], f["flavor"], str(tier)).inc(float(n))
                self.tier_seconds.labels(str(f.get("tier", "running"))).observe(
                    float(f["latency_ms"]) / 1000
                )
        elif event.type == "acquisition.failed":
            self.acquisitions.labels(f["az"], f["flavor"], f["mode"], f["error"]).inc()
        elif event.type == "vm.build_finished":
            self.builds.labels(f["az"], f["flavor"], "ok").inc()
            self.build_seconds.labels(f["az"], f["flavor"]).observe(float(f["duration_s"]))
        elif event.type == "vm.build_failed":
            self.builds.labels(f["az"], f["flavor"], "failed").inc()
        elif event.type == "vm.purged":
            self.purges.labels(f["az"], f["flavor"]).inc()
        elif event.type.startswith("leader."):
            self.leader_changes.labels(event.type.split(".", 1)[1]).inc()
            if event.type == "leader.elected":
                self.leader.set(1)
            elif event.type in ("leader.released", "leader.lost"):
                self.leader.set(0)
        elif event.type == "agent.heartbeat_lost":
            self.heartbeats_lost.inc()

    def recent(self, limit: int = 100, type_prefix: str = "") -> list[Event]:
        return self._inner.recent(limit, type_prefix)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def close(self) -> None:
        self._inner.close()

    @property
    def dropped(self) -> int:
        return self._inner.dropped
