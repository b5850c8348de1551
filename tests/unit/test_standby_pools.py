"""Standby pools through the service (simulated agents): the leader parks
pooled VMs in the rule's state after their first probe; an acquisition
resumes the VMs it takes before handing them out, all or nothing; a VM
that does not come back is purged and never handed out."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes import FakeAgent
from warmcache.errors import NoCapacity, ResumeFailed
from warmcache.model import InstanceState, PoolInstance
from warmcache.service import WarmCache


def pool(service: WarmCache) -> list[PoolInstance]:
    kvs, _ = service.store.range(service.keys.pool_dir("az1"))
    return [PoolInstance.model_validate_json(kv.value) for kv in kvs]


def acquired(service: WarmCache) -> list[str]:
    return [kv.key for kv in service.store.range(service.keys.acquired_dir("az1"))[0]]


def agent_of(agents: dict[str, FakeAgent], hv: str) -> FakeAgent:
    return next(a for a in agents.values() if a.current_facts().hypervisor == hv)


def put_rule(service: WarmCache, total: int = 6, **kw: Any) -> None:
    service.rules.put(
        "az1", "small", {"max_instance_per_cycle": total, "total_instances": total, **kw}
    )


@pytest.mark.parametrize("state", ["paused", "saved"])
def test_pooled_vms_wait_in_the_rules_state_and_wake_when_taken(
    service: WarmCache, agents: dict[str, FakeAgent], state: str
) -> None:
    put_rule(service, standby=state)
    service.run_cycle()
    recs = pool(service)
    assert len(recs) == 6 and {r.standby for r in recs} == {state}
    assert {r.state for r in recs} == {InstanceState.READY}
    assert all(agent_of(agents, r.hypervisor).standbys[r.name] == state for r in recs)
    assert len(service.events.recent(50, "vm.standby")) == 6
    service.health.poll()  # asleep as it should be: healthy, nothing purged
    assert len(pool(service)) == 6
    vms = service.acquire("small", "az1", 3, "rack-aware")
    assert [vm.standby for vm in vms] == ["running"] * 3
    for vm in vms:  # resumed through its agent before it was handed out
        agent = agent_of(agents, vm.hypervisor)
        assert agent.standbys[vm.name] == "running" and f"standby {vm.name} running" in agent.calls
    put_rule(service, standby="running")  # the rule changes back: the rest wake up
    service.run_cycle()
    assert {r.standby for r in pool(service)} == {"running"}


def test_a_vm_that_does_not_resume_is_swapped_and_never_handed_out(
    service: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    put_rule(service, total=4, standby="paused")
    service.run_cycle()
    bad = pool(service)[0]
    agent_of(agents, bad.hypervisor).wont_resume.add(bad.name)
    handed: list[str] = []
    with pytest.raises((NoCapacity, ResumeFailed)):
        for _ in range(5):  # whichever VM a claim picks, the bad one never comes out
            [vm] = service.acquire("small", "az1", 1, "best-effort")
            assert vm.standby == "running"
            handed.append(vm.name)
    assert len(handed) == 3 and bad.name not in handed  # the three good ones, one each
    assert bad.name not in {r.name for r in pool(service)}  # purged when it failed
    assert bad.name not in agent_of(agents, bad.hypervisor).vms


def test_when_too_few_come_back_nothing_is_claimed(
    service: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    put_rule(service, total=3, standby="saved")
    service.run_cycle()
    bad = pool(service)[1]
    agent_of(agents, bad.hypervisor).wont_resume.add(bad.name)
    with pytest.raises((NoCapacity, ResumeFailed)):
        service.acquire("small", "az1", 3, "best-effort", claim_id="all-three")
    assert acquired(service) == []  # every VM it held went back
    left = pool(service)
    assert sorted(r.name for r in left if not r.health_failures) == sorted(
        r.name for r in left if r.name != bad.name
    )
    assert len([r for r in left if r.name != bad.name and r.state is InstanceState.READY]) == 2
    assert bad.name not in agent_of(agents, bad.hypervisor).vms  # purged through its agent
    assert service.store.get(service.keys.claim("all-three")) is None
    assert service.events.recent(10, "vm.resume_failed")[0].fields["name"] == bad.name
