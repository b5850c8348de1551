"""Build cycles against in-memory agents: every rule field has behaviour."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from tests.fakes import FakeAgent
from warmcache.errors import AgentUnavailable
from warmcache.model import InstanceState, PoolInstance
from warmcache.ports import VmSpec
from warmcache.service import WarmCache
from warmcache.testing.polling import wait_for


def records(service: WarmCache, az: str = "az1") -> list[PoolInstance]:
    kvs, _ = service.store.range(service.keys.pool_dir(az))
    return [PoolInstance.model_validate_json(kv.value) for kv in kvs]


def rule(service: WarmCache, flavor: str = "small", az: str = "az1", **kw: object) -> None:
    service.rules.put(
        az, flavor, {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 3, **kw}
    )


def test_a_cycle_fills_to_the_per_cycle_cap_then_to_the_target(service: WarmCache) -> None:
    rule(service, total_instances=9, max_instance_per_cycle=6)
    report = service.run_cycle()
    assert report is not None and report.built[("az1", "small")] == 6
    assert service.run_cycle().built[("az1", "small")] == 3  # type: ignore[union-attr]
    assert service.run_cycle().built == Counter()  # type: ignore[union-attr]
    recs = records(service)
    assert len(recs) == 9 and all(r.state is InstanceState.READY for r in recs)
    assert len({r.rack for r in recs}) == 3
    assert all(r.fencing_token > 0 and r.server_id for r in recs)


def test_reserve_cap_holds_back_ready_vms(service: WarmCache) -> None:
    rule(service, reserve_cap=2)
    service.run_cycle()
    states = Counter(r.state for r in records(service))
    assert states == {InstanceState.READY: 4, InstanceState.RESERVED: 2}


def test_disabled_rule_builds_nothing(service: WarmCache) -> None:
    rule(service, enabled=False)
    service.run_cycle()
    assert records(service) == []


def test_user_data_and_group_reach_the_agent(
    service: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    seen: list[VmSpec] = []
    for agent in agents.values():
        agent.before_create = seen.append
    rule(service, user_data="ZWNobyBoaQ==", group_hint="db", total_instances=6)
    service.run_cycle()
    assert len(seen) == 6 and {s.user_data for s in seen} == {"ZWNobyBoaQ=="}
    per_hv = Counter(r.hypervisor for r in records(service))
    assert max(per_hv.values()) == 1  # group_hint: one per hypervisor


def test_transient_agent_errors_are_retried(
    service: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    flaky = next(iter(agents.values()))

    def once(spec: VmSpec) -> None:
        flaky.before_create = None
        raise AgentUnavailable(flaky.endpoint, "connection reset")

    flaky.before_create = once
    rule(service)
    report = service.run_cycle()
    assert report is not None and not report.failed
    assert len(records(service)) == 6


def test_a_vm_failing_its_first_health_probe_is_destroyed_and_forgotten(
    service: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    def sick(agent: FakeAgent) -> None:
        agent.before_create = lambda spec: agent.unhealthy.add(spec.name)

    for agent in agents.values():
        sick(agent)
    rule(service)
    report = service.run_cycle()
    assert report is not None and len(report.failed) == 6
    assert records(service) == []
    assert all(not a.vms for a in agents.values())
    failed = service.events.recent(type_prefix="vm.build_failed")
    assert len(failed) == 6 and all(e.fields["cleaned_up"] for e in failed)


def steal_leadership_at(service: WarmCache, agents: dict[str, FakeAgent], nth: int) -> list[str]:
    """Another node takes the lock while the nth create is running: our
    session expires and the leader key is recreated with a new token."""
    created: list[str] = []

    def steal(spec: VmSpec) -> None:
        created.append(spec.name)
        if len(created) == nth:
            service.clock.advance(service.config.leader_ttl_s + 1)  # type: ignore[attr-defined]
            service.election.try_acquire()

    for agent in agents.values():
        agent.before_create = steal
    return created


@pytest.mark.parametrize("concurrency", [1, 4])
def test_leadership_lost_mid_cycle_loses_no_vm(
    make_service: Callable[..., WarmCache], agents: dict[str, FakeAgent], concurrency: int
) -> None:
    service = make_service(build_concurrency=concurrency)
    rule(service, total_instances=6)
    created = steal_leadership_at(service, agents, 2)
    report = service.run_cycle()
    assert report is not None and report.leadership_lost
    on_hosts = {n for a in agents.values() for n in a.vms}
    recs = {r.name: r for r in records(service)}
    assert on_hosts == set(created)
    assert on_hosts <= set(recs), "a VM the stale leader created is untracked"
    # What the stale leader could not mark ready stays `building` for the next
    # leader to settle; nothing it wrote after the steal landed.
    assert recs[created[1]].state is InstanceState.BUILDING
    assert [e.type for e in service.events.recent(type_prefix="leader.lost")] == ["leader.lost"]


def test_a_lost_leader_starts_no_new_vm(
    make_service: Callable[..., WarmCache], agents: dict[str, FakeAgent]
) -> None:
    service = make_service(build_concurrency=1)
    rule(service, total_instances=6)
    created = steal_leadership_at(service, agents, 2)
    service.run_cycle()
    assert len(created) == 2  # the VM in flight finished; none was started after


def test_a_lost_leader_never_destroys_a_vm_its_successor_may_adopt(
    make_service: Callable[..., WarmCache], agents: dict[str, FakeAgent]
) -> None:
    """The VM in flight when the lock was taken comes up sick: cleaning it
    up is the successor's job (its adoption destroys it, or adopts it if it
    recovers); a stale leader deleting it could pull it from under a record
    the successor just marked ready."""
    service = make_service(build_concurrency=1)
    rule(service, total_instances=6)
    created = steal_leadership_at(service, agents, 1)
    hook = next(iter(agents.values())).before_create
    assert hook is not None

    def steal_and_sicken(spec: VmSpec) -> None:
        hook(spec)
        for agent in agents.values():
            agent.unhealthy.add(spec.name)

    for agent in agents.values():
        agent.before_create = steal_and_sicken
    report = service.run_cycle()
    assert report is not None and report.leadership_lost
    [name] = created
    host = next(a for a in agents.values() if name in a.vms)
    assert f"delete {name}" not in host.calls
    assert {r.name: r.state for r in records(service)}[name] is InstanceState.BUILDING
    kinds = [e.type for e in service.events.recent(type_prefix="vm.build_")]
    assert "vm.build_abandoned" in kinds and "vm.build_failed" not in kinds


def test_a_lost_leader_stops_retrying_an_unavailable_agent(
    make_service: Callable[..., WarmCache], agents: dict[str, FakeAgent]
) -> None:
    service = make_service(build_concurrency=1, leader_ttl_s=2, build_retries=8)
    rule(service, total_instances=1, min_fault_domain=1)
    attempts: list[str] = []

    def expire_then_go_down(spec: VmSpec) -> None:
        attempts.append(spec.name)
        if len(attempts) == 1:
            service.clock.advance(5.0)  # type: ignore[attr-defined]  # the session expires
            wait_for(
                "the renewer to notice",
                lambda: service.events.recent(type_prefix="leader.lost"),
                10,
            )
            for agent in agents.values():
                agent.unavailable_times = 100

    for agent in agents.values():
        agent.before_create = expire_then_go_down
    report = service.run_cycle()
    assert report is not None and report.leadership_lost
    assert len(attempts) == 1  # without the stop: 8 attempts over ~10 s of backoff
    assert all(not a.vms for a in agents.values())


def test_only_one_instance_leads_a_cycle(service: WarmCache) -> None:
    other = service.election
    lead = other.try_acquire()
    assert lead is not None
    assert service.run_cycle() is None
    other.release(lead)
    rule(service)
    assert service.run_cycle() is not None


@pytest.mark.parametrize("flavor", ["small", "medium"])
def test_pools_summary_counts_by_state_and_rack(service: WarmCache, flavor: str) -> None:
    rule(service, flavor, reserve_cap=1)
    service.run_cycle()
    pool = next(p for p in service.pools() if p.flavor == flavor)
    assert (pool.target, pool.ready, pool.reserved, pool.building) == (6, 5, 1, 0)
    assert sum(pool.ready_by_rack.values()) == 5


def orphan(
    service: WarmCache, agents: dict[str, FakeAgent], name: str, on_agent: bool, token: int = 1
) -> None:
    """A `building` record left by an earlier leader (token 1)."""
    agent = next(iter(agents.values()))
    facts = agent.facts()
    rec = PoolInstance(
        name=name,
        az="az1",
        flavor="small",
        hypervisor=facts.hypervisor,
        rack=facts.rack,
        state=InstanceState.BUILDING,
        created_at=0,
        fencing_token=token,
    )
    service.store.put(service.keys.pool("az1", name), rec.model_dump_json())
    if on_agent:
        flavor = service.catalog.get("small")
        assert flavor is not None
        agent.create(VmSpec(name, flavor))


def test_a_new_leader_adopts_or_forgets_what_a_dead_leader_left_building(
    service: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    rule(service, total_instances=6)
    orphan(service, agents, "made-it", on_agent=True)
    orphan(service, agents, "never-made", on_agent=False)
    orphan(service, agents, "came-up-sick", on_agent=True)
    next(iter(agents.values())).unhealthy.add("came-up-sick")
    report = service.run_cycle()
    assert report is not None
    recs = {r.name: r for r in records(service)}
    assert recs["made-it"].state is InstanceState.READY
    assert recs["made-it"].fencing_token == report.token
    assert "never-made" not in recs and "came-up-sick" not in recs
    assert all("came-up-sick" not in a.vms for a in agents.values())
    assert len(recs) == 6  # the adopted VM counts: only 5 new ones were built
    assert report.built[("az1", "small")] == 5
    kinds = {e.type for e in service.events.recent(type_prefix="vm.build_")}
    assert {"vm.build_adopted", "vm.build_forgotten", "vm.build_failed"} <= kinds


def test_an_orphan_still_being_created_is_settled_by_a_cycle_soon_after(
    service: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    """The old leader lost its lock while its agent was still booting the
    VM: the new leader's cycle cannot settle it yet, so it must not call
    itself clean (a clean cycle waits a whole interval); the retry adopts it."""
    rule(service, total_instances=6)
    orphan(service, agents, "still-booting", on_agent=True)
    next(iter(agents.values())).creating.add("still-booting")
    first = service.run_cycle()
    assert first is not None and not first.clean
    assert [u.split(":")[0] for u in first.unsettled] == ["still-booting"]
    assert first.built[("az1", "small")] == 5  # the orphan counts towards the target
    assert {r.name: r.state for r in records(service)}["still-booting"] is InstanceState.BUILDING
    next(iter(agents.values())).creating.clear()
    second = service.run_cycle()
    assert second is not None and second.clean and second.built == Counter()
    recs = records(service)
    assert len(recs) == 6 and all(r.state is InstanceState.READY for r in recs)


def test_the_cycle_report_reads_as_an_email(service: WarmCache) -> None:
    rule(service, total_instances=3, min_fault_domain=1)
    rule(service, "medium", total_instances=4, min_fault_domain=4)  # only 3 racks
    report = service.run_cycle()
    assert report is not None and not report.clean
    subject, body = report.render()
    assert subject.startswith(f"warmcache cycle {report.token}: built 6 VM(s)")
    assert "az1/small: 3" in body and "az1/medium: 3" in body
    assert "min_fault_domain=4: only 3 rack(s) have room for medium; built 3 of 4" in body


def test_a_host_whose_heartbeat_is_gone_is_not_built_on(
    service: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    dead = [a for a in agents.values() if a.current_facts().rack == "az1-r1"]
    for agent in dead:
        agent.withdraw()
    rule(service, total_instances=4, min_fault_domain=2)
    service.run_cycle()
    assert {r.rack for r in records(service)} == {"az1-r2", "az1-r3"}
    assert all(not a.vms for a in dead)


def test_group_hint_keeps_a_group_off_a_hypervisor_that_has_one(service: WarmCache) -> None:
    # Six "db" VMs fill the six hypervisors of az1 one each; a seventh VM of
    # the group (another flavor, so another pool) then has nowhere to go:
    # the spread preferences alone would happily put it beside one of them.
    rule(service, group_hint="db", total_instances=6)
    service.run_cycle()
    service.rules.put(
        "az1", "medium", {"max_instance_per_cycle": 1, "total_instances": 1, "group_hint": "db"}
    )
    report = service.run_cycle()
    assert report is not None and report.built[("az1", "medium")] == 0
    assert [r for r in records(service) if r.flavor == "medium"] == []
    plan = service.explain("az1", "medium")
    assert plan["to_build"] == 1 and plan["placements"] == []
    assert "group_anti_affinity" in str(plan["problem"])
