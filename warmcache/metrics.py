"""Prometheus metrics for ``/metrics``, from what the core already says.

``MetricsEvents`` wraps the event sink: every event is passed on unchanged
and also counted (acquisitions and their latency, builds and their
durations, failures, purges, leadership). Pool sizes per state and live
hosts are read when Prometheus scrapes, from the service, so they are never
out of step with the store. One registry per service: several instances in
one process (tests, embedding) never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from warmcache.model import PoolSummary
from warmcache.ports import Event, EventSink


class _PoolCollector(Collector):
    def __init__(
        self,
        pools: Callable[[], list[PoolSummary]],
        hosts: Callable[[], int],
        claims: Callable[[], tuple[int, int]],
    ) -> None:
        self._pools = pools
        self._hosts = hosts
        self._claims = claims

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        vms = GaugeMetricFamily(
            "warmcache_pool_vms",
            "Pooled VMs per AZ, flavor and state",
            labels=["az", "flavor", "state"],
        )
        target = GaugeMetricFamily(
            "warmcache_pool_target_vms", "Target pool size (rule)", labels=["az", "flavor"]
        )
        for p in self._pools():
            for state in ("ready", "reserved", "building"):
                vms.add_metric([p.az, p.flavor, state], getattr(p, state))
            target.add_metric([p.az, p.flavor], p.target)
        yield vms
        yield target
        yield GaugeMetricFamily(
            "warmcache_agents_heartbeating",
            "Hypervisors whose agent heartbeat is live",
            value=self._hosts(),
        )
        # Acquisitions per transaction is how well group commit batches;
        # conflicts, how often instances reached for the same VM.
        transactions, conflicts = self._claims()
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


class MetricsEvents:
    """An ``EventSink`` that forwards every event and turns it into metrics."""

    def __init__(self, inner: EventSink) -> None:
        self._inner = inner
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

    def watch_pools(
        self,
        pools: Callable[[], list[PoolSummary]],
        hosts: Callable[[], int],
        claims: Callable[[], tuple[int, int]] = lambda: (0, 0),
    ) -> None:
        """``claims``: (transactions sent, conflicts lost) of the claimer."""
        self.registry.register(_PoolCollector(pools, hosts, claims))

    def emit(self, event: Event) -> None:
        self._inner.emit(event)
        f = event.fields
        if event.type == "acquisition":
            self.acquisitions.labels(f["az"], f["flavor"], f["mode"], "ok").inc()
            self.acquire_seconds.observe(float(f["latency_ms"]) / 1000)
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
