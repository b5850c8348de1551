"""Health polling and purge (DESIGN §9): a VM is never handed out after the
poll that caught it; N failures purge it; a dead agent's VMs are out at once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.fakes import FakeAgent, RecordingAlerts
from warmcache.errors import NoCapacity
from warmcache.model import InstanceState, Mode, PoolInstance
from warmcache.service import WarmCache


@pytest.fixture
def alerts() -> RecordingAlerts:
    return RecordingAlerts()


@pytest.fixture
def pool(make_service: Callable[..., WarmCache], alerts: RecordingAlerts) -> WarmCache:
    service = make_service(alerts=alerts, health_failures_to_purge=2)
    service.rules.put(
        "az1", "small", {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 3}
    )
    service.run_cycle()
    return service


def records(service: WarmCache) -> dict[str, PoolInstance]:
    kvs, _ = service.store.range(service.keys.pool_dir("az1"))
    recs = [PoolInstance.model_validate_json(kv.value) for kv in kvs]
    return {r.name: r for r in recs}


def sicken(agents: dict[str, FakeAgent], name: str) -> FakeAgent:
    host = next(a for a in agents.values() if name in a.vms)
    host.unhealthy.add(name)
    return host


def test_a_vm_caught_unhealthy_is_never_handed_out(
    pool: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    sick = sorted(records(pool))[0]
    sicken(agents, sick)
    report = pool.health.poll()
    assert report is not None and report.failed == [sick] and report.checked == 6
    assert records(pool)[sick].health_failures == 1
    with pytest.raises(NoCapacity):
        pool.acquire("small", "az1", 6, Mode.BEST_EFFORT)
    got = pool.acquire("small", "az1", 5, Mode.BEST_EFFORT)
    assert sick not in {vm.name for vm in got}


def test_consecutive_failures_purge_through_the_agent(
    pool: WarmCache, agents: dict[str, FakeAgent], alerts: RecordingAlerts
) -> None:
    sick = sorted(records(pool))[0]
    host = sicken(agents, sick)
    pool.health.poll()
    report = pool.health.poll()
    assert report is not None and report.purged == [sick]
    assert sick not in records(pool) and sick not in host.vms
    assert [e.fields["name"] for e in pool.events.recent(type_prefix="vm.purged")] == [sick]
    assert sick in alerts.sent[-1][0]  # after the cycle report, the purge alert


def test_a_purge_the_agent_refused_is_finished_by_a_later_poll(
    pool: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    sick = sorted(records(pool))[0]
    host = sicken(agents, sick)
    pool.health.poll()
    host.unavailable_times = 1  # the destroy fails: the record must stay, as purging
    report = pool.health.poll()
    assert report is not None and report.purged == []
    assert records(pool)[sick].state is InstanceState.PURGING and sick in host.vms
    with pytest.raises(NoCapacity):
        pool.acquire("small", "az1", 6, Mode.BEST_EFFORT)  # never handed out
    report = pool.health.poll()
    assert report is not None and report.purged == [sick]
    assert sick not in records(pool) and sick not in host.vms


def test_a_vm_that_answers_again_is_back(pool: WarmCache, agents: dict[str, FakeAgent]) -> None:
    sick = sorted(records(pool))[0]
    host = sicken(agents, sick)
    pool.health.poll()
    host.unhealthy.discard(sick)
    report = pool.health.poll()
    assert report is not None and report.recovered == [sick]
    assert records(pool)[sick].health_failures == 0
    assert len(pool.acquire("small", "az1", 6, Mode.BEST_EFFORT)) == 6


def test_vms_of_a_silent_agent_leave_the_acquirable_set_at_once(
    pool: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    dead = next(a for a in agents.values() if a.vms and a.current_facts().az == "az1")
    gone = set(dead.vms)
    dead.withdraw()  # its heartbeat key expired
    got = pool.acquire("small", "az1", 6 - len(gone), Mode.BEST_EFFORT)
    assert not gone & {vm.name for vm in got}
    with pytest.raises(NoCapacity):
        pool.acquire("small", "az1", 1, Mode.BEST_EFFORT)
    report = pool.health.poll()
    assert report is not None and report.hosts_lost == [dead.current_facts().hypervisor]
    assert all(records(pool)[n].state is InstanceState.READY for n in gone)  # not purged


def test_one_poller_at_a_time(pool: WarmCache, make_service: Callable[..., WarmCache]) -> None:
    other = make_service(node="wc-other")
    lead = other.health.election.try_acquire()
    assert lead is not None
    assert pool.health.poll() is None
    other.health.election.release(lead)
    assert pool.health.poll() is not None
