"""Prometheus /metrics: pool sizes, acquisitions, builds, leadership."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from warmcache.adapters.sqlite_events import LogEvents
from warmcache.errors import NoCapacity
from warmcache.metrics import MetricsEvents
from warmcache.model import Mode
from warmcache.service import WarmCache
from warmcache.web import create_app


def samples(service: WarmCache) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = create_app(service).test_client().get("/metrics").get_data(as_text=True)
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_follow_what_the_service_does(service: WarmCache) -> None:
    service.rules.put(
        "az1", "small", {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 3}
    )
    service.run_cycle()
    service.acquire("small", "az1", 1, Mode.BEST_EFFORT)
    with pytest.raises(NoCapacity):
        service.acquire("small", "az1", 9, Mode.BEST_EFFORT)
    m = samples(service)
    pool = (("az", "az1"), ("flavor", "small"))
    assert m[("warmcache_pool_vms", (*pool, ("state", "ready")))] == 5
    assert m[("warmcache_pool_target_vms", pool)] == 6
    assert m[("warmcache_builds_total", (*pool, ("outcome", "ok")))] == 6
    assert m[("warmcache_build_seconds_count", pool)] == 6
    ok = (*pool, ("mode", "best-effort"), ("outcome", "ok"))
    assert m[("warmcache_acquisitions_total", ok)] == 1
    failed = (*pool, ("mode", "best-effort"), ("outcome", "no_capacity"))
    assert m[("warmcache_acquisitions_total", failed)] == 1
    assert m[("warmcache_acquire_seconds_count", ())] == 1
    assert m[("warmcache_leader", ())] == 0  # released after the cycle
    assert m[("warmcache_leadership_events_total", (("event", "elected"),))] == 1
    heartbeating = {k[1]: v for k, v in m.items() if k[0] == "warmcache_agents_heartbeating"}
    assert sum(heartbeating.values()) == 12 and heartbeating[(("az", "az1"),)] > 0
    assert m[("warmcache_pool_low_water_vms", pool)] == 3  # 6 x low_water_ratio 0.5
    racks = [v for k, v in m.items() if k[0] == "warmcache_pool_rack_ready_vms"]
    assert len(racks) == 3 and sum(racks) == 5  # min_fault_domain 3: on 3 racks
    last = m[("warmcache_last_cycle_finished_timestamp_seconds", ())]
    assert last == service.last_cycle.finished_at  # type: ignore[union-attr]
    assert m[("warmcache_cycle_interval_seconds", ())] == service.config.cycle_interval_s
    # one claim transaction: the failed acquisition never reached the store
    assert m[("warmcache_claim_transactions_total", ())] == 1
    assert m[("warmcache_claim_conflicts_total", ())] == 0
    assert m[("warmcache_share_instances", ())] == 1  # alone in the registry
    # Free capacity per rack: every rack, each resource; the 6 VMs of the
    # pool are booked off az1's racks.
    free = {k[1]: v for k, v in m.items() if k[0] == "warmcache_rack_free"}
    vcpus = {dict(k)["rack"]: v for k, v in free.items() if dict(k)["resource"] == "vcpus"}
    assert len(vcpus) == 6  # 3 racks in each of 2 AZs
    small = service.catalog.get("small")
    assert small is not None
    az1_free = sum(v for rack, v in vcpus.items() if rack.startswith("az1"))
    assert az1_free == 6 * 16 - 6 * small.vcpus
    up = (("az", "az2"), ("rack", "az2-r1"), ("status", "up"))
    assert m[("warmcache_rack_hosts", up)] == 2


def test_metrics_need_no_token(service: WarmCache) -> None:
    from warmcache.config import AuthConfig, TokenConfig
    from warmcache.web.auth import Authenticator

    app = create_app(
        service, Authenticator(AuthConfig(tokens=(TokenConfig(name="x", token=SecretStr("t")),)))
    )
    reply = app.test_client().get("/metrics")
    assert reply.status_code == 200 and b"warmcache_pool_vms" in reply.data


def test_events_the_sink_dropped_are_exported() -> None:
    """A queueing sink that had to drop events (tests/unit/test_events.py
    shows when) says how many on /metrics, read at scrape time."""

    class Dropping(LogEvents):
        dropped = 0

    sink = Dropping()
    metrics = MetricsEvents(sink)
    sink.dropped = 7
    families = text_string_to_metric_families(metrics.render().decode())
    dropped = next(f for f in families if f.name == "warmcache_events_dropped")
    assert dropped.samples[0].value == 7
