"""Pools that always refill and hold what they count (issue 27), through the
service with simulated hosts: each test reproduces a defect of the issue
first (it failed on the main of the day), then checks the fix."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from tests.fakes import FakeAgent
from warmcache.builders.upkeep import to_shrink
from warmcache.clock import ManualClock
from warmcache.errors import NoCapacity, UnknownHypervisor, UnknownPool, UnknownRack, UnknownVm
from warmcache.model import InstanceState, PoolInstance, PoolSummary
from warmcache.ports import Delete, Put
from warmcache.service import WarmCache

SHRINK_S = 600.0


@pytest.fixture
def svc(make_service: Callable[..., WarmCache]) -> WarmCache:
    return make_service(shrink_after_s=SHRINK_S)


def rule(svc: WarmCache, **kw: object) -> None:
    body = {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 1, **kw}
    svc.rules.put("az1", "small", body)


def pooled(svc: WarmCache) -> list[PoolInstance]:
    kvs, _ = svc.store.range(svc.keys.pool_dir("az1"))
    return [PoolInstance.model_validate_json(kv.value) for kv in kvs]


def pool(svc: WarmCache) -> PoolSummary:
    [found] = [p for p in svc.pools() if (p.az, p.flavor) == ("az1", "small")]
    return found


def take(svc: WarmCache, names: list[str]) -> None:
    """Hand these VMs out as a claim would (they keep their host's capacity)."""
    for name in names:
        kv = svc.store.get(svc.keys.pool("az1", name))
        assert kv is not None
        rec = PoolInstance.model_validate_json(kv.value).with_state(InstanceState.ACQUIRED)
        svc.store.txn(
            [],
            [Put(svc.keys.acquired("az1", name), rec.model_dump_json()), Delete(kv.key)],
        )


def on_host(agents: dict[str, FakeAgent], hv: str) -> FakeAgent:
    [agent] = [a for a in agents.values() if a.current_facts().hypervisor == hv]
    return agent


def change(svc: WarmCache, action: str, **params: object) -> dict[str, object]:
    asked = svc.approvals.ask(action, params, by="alice")
    done = svc.approvals.approve(asked.id, by="bob")
    assert done.state == "executed", done.result
    return done.result or {}


# --- 1. a pool always refills --------------------------------------------------------


@pytest.mark.parametrize("m", [2, 3])
def test_a_pool_whose_rack_was_emptied_refills_under_min_fault_domain(
    svc: WarmCache, m: int
) -> None:
    """The issue's first defect: every cycle placed both replacements on
    the emptied rack and then refused its own plan; the pool stayed 4/6."""
    rule(svc, min_fault_domain=m)
    svc.run_cycle()
    assert Counter(r.rack for r in pooled(svc)) == {"az1-r1": 2, "az1-r2": 2, "az1-r3": 2}
    take(svc, [r.name for r in pooled(svc) if r.rack == "az1-r1"])
    report = svc.run_cycle()
    assert report is not None and not report.problems
    assert report.built[("az1", "small")] == 2
    assert pool(svc).ready == 6
    new = [r for r in pooled(svc) if r.fencing_token == report.token]
    assert len({r.rack for r in new}) == 2  # the batch of 2 spans 2 racks


# --- 2. a dead host's VMs do not count, and come back as surplus -------------------------


def test_a_dead_hosts_vms_are_reported_apart_replaced_and_the_surplus_retired_on_return(
    svc: WarmCache, agents: dict[str, FakeAgent], clock: ManualClock
) -> None:
    rule(svc)
    svc.run_cycle()
    dead_hv = pooled(svc)[0].hypervisor
    dead = on_host(agents, dead_hv)
    on_dead = {r.name for r in pooled(svc) if r.hypervisor == dead_hv}
    dead.withdraw()
    summary = pool(svc)
    assert (summary.ready, summary.unreachable) == (6 - len(on_dead), len(on_dead))
    with pytest.raises(NoCapacity):  # what the pool says it has is what it hands out
        svc.acquire("small", "az1", 6, "best-effort")
    report = svc.run_cycle()
    assert report is not None and report.built[("az1", "small")] == len(on_dead)
    assert all(r.hypervisor != dead_hv for r in pooled(svc) if r.name not in on_dead)
    assert (pool(svc).ready, pool(svc).unreachable) == (6, len(on_dead))

    dead.attach(svc.store, "wc")  # the host is back, with its VMs
    assert (pool(svc).ready, pool(svc).unreachable) == (6 + len(on_dead), 0)
    report = svc.run_cycle()
    assert report is not None and not report.retired  # not before shrink_after_s
    clock.advance(SHRINK_S)
    report = svc.run_cycle()
    assert report is not None
    assert report.retired[("az1", "small", "surplus")] == len(on_dead)
    assert pool(svc).ready == 6


# --- 3. shrinking, with hysteresis -------------------------------------------------------


def test_lowering_the_target_retires_the_oldest_surplus_after_shrink_after_s(
    svc: WarmCache, agents: dict[str, FakeAgent], clock: ManualClock
) -> None:
    rule(svc, total_instances=3)
    svc.run_cycle()
    oldest = {r.name for r in pooled(svc)}
    clock.advance(60)
    rule(svc, total_instances=6)
    svc.run_cycle()
    assert pool(svc).ready == 6

    rule(svc, total_instances=3, replace_per_cycle=2)
    svc.run_cycle()
    assert pool(svc).ready == 6  # the surplus is noted, nothing retired yet
    clock.advance(SHRINK_S - 1)
    rule(svc, total_instances=6, replace_per_cycle=2)  # the target came back: no flapping
    svc.run_cycle()
    rule(svc, total_instances=3, replace_per_cycle=2)
    svc.run_cycle()
    clock.advance(SHRINK_S - 1)
    report = svc.run_cycle()
    assert report is not None and not report.retired and pool(svc).ready == 6

    clock.advance(1)
    report = svc.run_cycle()  # 2 per cycle (replace_per_cycle), oldest first
    assert report is not None and report.retired[("az1", "small", "surplus")] == 2
    report = svc.run_cycle()
    assert report is not None and report.retired[("az1", "small", "surplus")] == 1
    assert {r.name for r in pooled(svc)}.isdisjoint(oldest)
    assert pool(svc).ready == 3
    assert sum(len(a.vms) for a in agents.values()) == 3  # destroyed on their hosts
    assert svc.store.get(svc.keys.surplus("az1", "small")) is None


def test_the_surplus_retires_stale_then_failing_then_oldest() -> None:
    def vm(name: str, born: float, **kw: object) -> PoolInstance:
        return PoolInstance.model_validate(
            {
                "name": name,
                "az": "az1",
                "flavor": "small",
                "hypervisor": "h1",
                "rack": "r1",
                "state": "ready",
                "created_at": born,
                "ready_at": born,
                **kw,
            }
        )

    records = [
        vm("old", 1.0),
        vm("new-stale", 9.0, stale=True),
        vm("new-sick", 8.0, health_failures=1),
        vm("newest", 10.0),
        vm("building", 0.0, state="building"),
    ]
    assert [r.name for r in to_shrink(records, "small", 3)] == ["new-stale", "new-sick", "old"]


# --- 4. reserve moves ---------------------------------------------------------------------


def test_raising_and_lowering_reserve_cap_moves_ready_vms_both_ways(svc: WarmCache) -> None:
    rule(svc)
    svc.run_cycle()
    rule(svc, reserve_cap=2)
    svc.run_cycle()
    summary = pool(svc)
    assert (summary.ready, summary.reserved) == (4, 2)
    reserved = [r for r in pooled(svc) if r.state is InstanceState.RESERVED]
    assert len({r.rack for r in reserved}) == 2  # the reserve spreads over racks
    with pytest.raises(NoCapacity):
        svc.acquire("small", "az1", 5, "best-effort")
    assert len(svc.acquire("small", "az1", 5, "best-effort", use_reserve=True)) == 5
    svc.run_cycle()  # refilled: 6 again, 2 of them reserved
    rule(svc, reserve_cap=0)
    svc.run_cycle()
    assert (pool(svc).ready, pool(svc).reserved) == (6, 0)


# --- 5. deleting a rule -------------------------------------------------------------------


def test_deleting_a_rule_retires_its_pool_and_acquisitions_get_unknown_pool(
    svc: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    rule(svc)
    svc.run_cycle()
    [held] = svc.acquire("small", "az1", 1, "best-effort")
    result = change(svc, "delete_rule", az="az1", flavor="small")
    assert result == {"deleted": True, "purged": 5, "not_purged": []}
    assert pooled(svc) == []
    assert sum(len(a.vms) for a in agents.values() if a.current_facts().az == "az1") == 1
    with pytest.raises(UnknownPool):  # its AZ's only rule: still a known AZ (its hosts)
        svc.acquire("small", "az1", 1, "best-effort")
    assert svc.vm(held.name).state is InstanceState.ACQUIRED  # its holder keeps it
    report = svc.run_cycle()
    assert report is not None and report.built == Counter()


def test_a_vm_still_building_when_its_rule_went_is_retired_by_the_next_cycle(
    svc: WarmCache,
) -> None:
    rule(svc)
    svc.run_cycle()
    svc.store.delete(svc.keys.rule("az1", "small"))  # by hand: nothing retired it then
    report = svc.run_cycle()
    assert report is not None and report.retired[("az1", "small", "no_rule")] == 6
    assert pooled(svc) == []


# --- 6. drains both ways ------------------------------------------------------------------


def test_drain_now_retires_and_replaces_a_hosts_vms_and_undrain_puts_it_back(
    svc: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    rule(svc)
    svc.run_cycle()
    hv = pooled(svc)[0].hypervisor
    n = sum(1 for r in pooled(svc) if r.hypervisor == hv)
    change(svc, "drain_hypervisor", hypervisor=hv)
    assert (pool(svc).ready, pool(svc).drained) == (6 - n, n)
    report = svc.run_cycle()
    assert report is not None and report.retired[("az1", "small", "drained")] == n
    assert all(r.hypervisor != hv for r in pooled(svc)) and pool(svc).ready == 6
    assert not on_host(agents, hv).vms
    change(svc, "undrain_hypervisor", hypervisor=hv)
    rule(svc, total_instances=12, max_instance_per_cycle=12)
    svc.run_cycle()
    assert any(r.hypervisor == hv for r in pooled(svc))  # placed on again


def test_drain_as_acquired_keeps_handing_out_and_builds_elsewhere(svc: WarmCache) -> None:
    rule(svc)
    svc.run_cycle()
    hv = pooled(svc)[0].hypervisor
    change(svc, "drain_hypervisor", hypervisor=hv, evacuate="as_acquired")
    assert (pool(svc).ready, pool(svc).drained) == (6, 0)
    got = svc.acquire("small", "az1", 6, "best-effort")
    assert hv in {vm.hypervisor for vm in got}  # still handed out
    svc.run_cycle()
    assert pool(svc).ready == 6 and all(r.hypervisor != hv for r in pooled(svc))


def test_a_rack_drain_evacuates_every_host_of_the_rack(svc: WarmCache) -> None:
    rule(svc, min_fault_domain=2)
    svc.run_cycle()
    change(svc, "drain_rack", az="az1", rack="az1-r1")
    assert (pool(svc).ready, pool(svc).drained) == (4, 2)
    report = svc.run_cycle()
    assert report is not None and report.retired[("az1", "small", "drained")] == 2
    assert Counter(r.rack for r in pooled(svc)) == {"az1-r2": 3, "az1-r3": 3}
    change(svc, "undrain_rack", az="az1", rack="az1-r1")
    assert pool(svc).drained == 0


def test_drains_of_unknown_hosts_and_racks_are_refused_and_record_nothing(
    svc: WarmCache,
) -> None:
    with pytest.raises(UnknownHypervisor):
        svc.approvals.ask("drain_hypervisor", {"hypervisor": "nope"}, by="alice")
    with pytest.raises(UnknownRack):
        svc.approvals.ask("drain_rack", {"az": "az1", "rack": "az1-r9"}, by="alice")
    with pytest.raises(UnknownVm):
        svc.approvals.ask("purge_vm", {"name": "az1-small-nope"}, by="alice")
    assert svc.approvals.list() == []


# --- 7. purging one VM ----------------------------------------------------------------------


def test_purge_vm_destroys_a_pooled_vm_or_takes_a_handed_out_one_back(
    svc: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    rule(svc, on_release="recycle")
    svc.run_cycle()
    victim = pooled(svc)[0]
    assert change(svc, "purge_vm", name=victim.name) == {
        "name": victim.name,
        "was": "ready",
        "now": "purged",
    }
    assert victim.name not in on_host(agents, victim.hypervisor).vms
    [held] = svc.acquire("small", "az1", 1, "best-effort")
    assert change(svc, "purge_vm", name=held.name)["now"] == "releasing"
    assert svc.vm(held.name).release.reason == "purged"  # type: ignore[union-attr]
    svc.run_cycle()  # the pool is short: a recycle would put it back, a purge must not
    svc.lifecycle.worker.run_once()
    with pytest.raises(UnknownVm):
        svc.vm(held.name)
    assert held.name not in on_host(agents, held.hypervisor).vms
