"""Handed-out VMs come back (DESIGN.md §8, invariant 7): looked up in any
state, released by their holder or an admin (never by anyone else), deleted
once by their agent (never twice, whatever the concurrency), recycled back
into their pool when the rule says so, reclaimed when their lease runs out,
with nothing left in the store and their capacity and address back only
when the agent confirmed."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from tests.fakes import FakeAgent, RecordingAlerts
from warmcache.clock import ManualClock
from warmcache.config import QuotaLimit
from warmcache.errors import (
    ClaimReleased,
    Forbidden,
    QuotaExceeded,
    UnknownClaim,
    UnknownVm,
    VmNotHeld,
)
from warmcache.layout import Keys
from warmcache.model import InstanceState, PoolInstance
from warmcache.service import WarmCache

KEYS = Keys("wc")
RULE = {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 1}


def keys_of(service: WarmCache, name: str) -> list[str]:
    """Every key of the store that still names ``name``."""
    kvs, _ = service.store.range("wc/")
    return sorted(kv.key for kv in kvs if kv.key.endswith("/" + name))


def agent_of(agents: dict[str, FakeAgent], vm: PoolInstance) -> FakeAgent:
    return next(
        a
        for a in agents.values()
        if vm.name in a.vms or a.current_facts().hypervisor == vm.hypervisor
    )


@pytest.fixture
def svc(make_service: Callable[..., WarmCache]) -> WarmCache:
    service = make_service()
    service.rules.put("az1", "small", RULE)
    service.run_cycle()
    return service


def test_a_released_vm_is_deleted_once_and_leaves_nothing_behind(
    svc: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    [vm] = svc.acquire("small", "az1", 1, "best-effort", requester="ci")
    found = svc.vm(vm.name)
    assert found.state is InstanceState.ACQUIRED and found.acquired_by == "ci"
    assert svc.vm(vm.name, requester="ci").name == vm.name
    with pytest.raises(UnknownVm):
        svc.vm(vm.name, requester="someone-else")  # not theirs: as if it did not exist
    host = agent_of(agents, vm)
    free_before = host.current_facts().vcpus_free
    releasing = svc.release(vm.name, requester="ci")
    assert releasing.state is InstanceState.RELEASING and releasing.release is not None
    assert svc.vm(vm.name).state is InstanceState.RELEASING
    assert svc.release(vm.name, requester="ci").state is InstanceState.RELEASING  # harmless
    assert host.current_facts().vcpus_free == free_before  # nothing back before the agent
    assert svc.lifecycle.worker.run_once() == 1
    assert host.calls.count(f"delete {vm.name}") == 1
    assert host.current_facts().vcpus_free == free_before + 2
    with pytest.raises(UnknownVm):
        svc.vm(vm.name)
    with pytest.raises(UnknownVm):
        svc.release(vm.name, requester="ci")  # once gone: 404
    assert keys_of(svc, vm.name) == []  # no record, no holder index, no address
    events = [e.fields for e in svc.events.recent(type_prefix="vm.released")]
    assert [e["name"] for e in events] == [vm.name] and events[0]["holder"] == "ci"
    assert svc.lifecycle.worker.run_once() == 0


def test_only_the_holder_or_an_admin_may_release(svc: WarmCache) -> None:
    [vm] = svc.acquire("small", "az1", 1, "best-effort", requester="ci")
    with pytest.raises(Forbidden):
        svc.release(vm.name, requester="intruder")
    assert svc.vm(vm.name).state is InstanceState.ACQUIRED  # nothing changed
    ready = next(r.name for r in pool(svc) if r.state is InstanceState.READY)
    with pytest.raises(VmNotHeld):
        svc.release(ready)  # pooled: nothing to give back
    with pytest.raises(UnknownVm):
        svc.release("no-such-vm")
    assert svc.release(vm.name).state is InstanceState.RELEASING  # the library is an admin


def pool(svc: WarmCache) -> list[PoolInstance]:
    return [
        PoolInstance.model_validate_json(kv.value)
        for kv in svc.store.range(KEYS.pool_dir("az1"))[0]
    ]


def test_a_claim_is_released_whole_and_a_repeat_of_it_hands_nothing_out(svc: WarmCache) -> None:
    vms = svc.acquire("small", "az1", 3, "best-effort", requester="ci", claim_id="job-7")
    with pytest.raises(Forbidden):
        svc.release_claim("job-7", requester="intruder")
    released = svc.release_claim("job-7", requester="ci")
    assert sorted(v.name for v in released) == sorted(v.name for v in vms)
    with pytest.raises(ClaimReleased):
        svc.acquire("small", "az1", 3, "best-effort", requester="ci", claim_id="job-7")
    svc.lifecycle.worker.run_once()
    with pytest.raises(UnknownClaim):
        svc.release_claim("job-7", requester="ci")


def test_concurrent_releases_over_two_instances_release_once(
    make_service: Callable[..., WarmCache], agents: dict[str, FakeAgent]
) -> None:
    one = make_service(node="wc-1")
    two = make_service(node="wc-2")
    one.rules.put("az1", "small", RULE)
    one.run_cycle()
    vms = one.acquire("small", "az1", 4, "best-effort", requester="ci")
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def release(svc: WarmCache, name: str) -> None:
        barrier.wait()
        try:
            svc.release(name, requester="ci")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=release, args=(svc, vm.name)) for vm in vms for svc in (one, two)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    given_back = [e.fields["name"] for e in one.events.recent(100, "vm.releasing")]
    assert sorted(given_back) == sorted(vm.name for vm in vms)  # each moved once
    workers = [
        threading.Thread(target=svc.lifecycle.worker.run_once) for svc in (one, two, one, two)
    ]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    deletes = [c for a in agents.values() for c in a.calls if c.startswith("delete ")]
    assert sorted(deletes) == sorted(f"delete {vm.name}" for vm in vms)  # each exactly once
    released = [e.fields["name"] for e in one.events.recent(100, "vm.released")]
    assert sorted(released) == sorted(vm.name for vm in vms)
    assert len(one.store.range(KEYS.releasing_dir())[0]) == 0


def test_an_unreachable_agent_keeps_the_vm_releasing_and_it_is_reported_once(
    make_service: Callable[..., WarmCache],
    agents: dict[str, FakeAgent],
    clock: ManualClock,
) -> None:
    alerts = RecordingAlerts()
    svc = make_service(alerts=alerts, release_retry_s=5, release_stuck_after_s=60)
    svc.rules.put("az1", "small", RULE)
    svc.run_cycle()
    [vm] = svc.acquire("small", "az1", 1, "best-effort", requester="ci")
    host = agent_of(agents, vm)
    svc.release(vm.name, requester="ci")
    host.unavailable_times = 1000
    assert svc.lifecycle.worker.run_once() == 0
    rec = svc.vm(vm.name)
    assert rec.state is InstanceState.RELEASING and rec.release and rec.release.tries == 1
    assert "connection refused" in (rec.release.last_error or "")
    assert vm.name in host.vms  # still there: its capacity stays booked
    assert svc.lifecycle.worker.run_once() == 0 and svc.vm(vm.name).release.tries == 1  # type: ignore[union-attr]
    clock.advance(61)  # past the backoff, and past release_stuck_after_s
    svc.lifecycle.worker.run_once()
    clock.advance(61)
    svc.lifecycle.worker.run_once()
    stuck = svc.events.recent(10, "vm.release_stuck")
    assert len(stuck) == 1 and len([s for s, _ in alerts.sent if "stuck releasing" in s]) == 1
    host.unavailable_times = 0  # the agent is back
    clock.advance(600)
    assert svc.lifecycle.worker.run_once() == 1
    assert vm.name not in host.vms and keys_of(svc, vm.name) == []


def test_an_instance_that_took_a_release_and_died_is_taken_over(
    make_service: Callable[..., WarmCache], agents: dict[str, FakeAgent], clock: ManualClock
) -> None:
    one = make_service(node="wc-1")
    two = make_service(node="wc-2")
    one.rules.put("az1", "small", RULE)
    one.run_cycle()
    [vm] = one.acquire("small", "az1", 1, "best-effort", requester="ci")
    one.release(vm.name)
    item = one.store.range(KEYS.releasing_dir())[0][0]
    from warmcache.layout import Stored

    taken = one.lifecycle.worker._take(  # wc-1 takes it, then dies before acting
        [Stored(item.key, item.mod_revision, PoolInstance.model_validate_json(item.value))]
    )
    assert taken
    assert two.lifecycle.worker.run_once() == 0  # not while wc-1 may still be at it
    clock.advance(one.config.agent_timeout_s + 6)
    assert two.lifecycle.worker.run_once() == 1
    assert (
        keys_of(two, vm.name) == [] and agent_of(agents, vm).calls.count(f"delete {vm.name}") == 1
    )


def test_recycle_returns_the_vm_to_its_pool_when_the_pool_is_short(
    svc: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    svc.rules.put("az1", "small", {**RULE, "on_release": "recycle", "recycle_max_uses": 2})
    [vm] = svc.acquire("small", "az1", 1, "best-effort", requester="ci")
    svc.release(vm.name, requester="ci")
    assert svc.lifecycle.worker.run_once() == 1
    back = svc.vm(vm.name)
    assert back.state is InstanceState.READY and back.uses == 1
    assert back.acquired_by is None and back.release is None and back.expires_at is None
    host = agent_of(agents, vm)
    assert host.calls.count(f"recycle {vm.name}") == 1 and vm.name in host.vms
    assert svc.events.recent(10, "vm.recycled")[0].fields["uses"] == 1
    # a pool at its target does not take it back: deleted
    svc.run_cycle()  # (full again: the recycled one counts)
    [other] = svc.acquire("small", "az1", 1, "best-effort", requester="ci")
    svc.run_cycle()  # refilled to 6 while it is held
    svc.release(other.name, requester="ci")
    svc.lifecycle.worker.run_once()
    with pytest.raises(UnknownVm):
        svc.vm(other.name)


def test_recycle_gives_way_to_deletion_when_the_vm_is_stale_used_up_or_broken(
    svc: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    svc.rules.put("az1", "small", {**RULE, "on_release": "recycle", "recycle_max_uses": 1})
    vms = svc.acquire("small", "az1", 3, "best-effort", requester="ci")
    used_up = vms[0].model_copy(update={"uses": 1})
    key = KEYS.acquired("az1", used_up.name)
    svc.store.put(key, used_up.model_dump_json())
    broken = agent_of(agents, vms[1])
    broken.wont_recycle.add(vms[1].name)
    for vm in vms[:2]:
        svc.release(vm.name, requester="ci")
    svc.lifecycle.worker.run_once()
    for vm in vms[:2]:
        with pytest.raises(UnknownVm):
            svc.vm(vm.name)
    assert [e.fields["name"] for e in svc.events.recent(10, "vm.recycle_failed")] == [vms[1].name]
    # a new generation (the rule's user_data): the old VM is replaced, not recycled
    svc.rules.put("az1", "small", {**RULE, "on_release": "recycle", "user_data": "ZWNobw=="})
    svc.release(vms[2].name, requester="ci")
    svc.lifecycle.worker.run_once()
    with pytest.raises(UnknownVm):
        svc.vm(vms[2].name)


def test_leases_expire_renew_and_are_reclaimed_after_the_grace(
    make_service: Callable[..., WarmCache], clock: ManualClock
) -> None:
    svc = make_service(lease_grace_s=30)
    svc.rules.put("az1", "small", {**RULE, "lease_s": 600})
    svc.run_cycle()
    [short] = svc.acquire("small", "az1", 1, "best-effort", requester="ci", lease_s=60)
    [default] = svc.acquire("small", "az1", 1, "best-effort", requester="ci")
    [kept] = svc.acquire("small", "az1", 1, "best-effort", requester="ci", lease_s=60)
    now = clock.now()
    assert short.expires_at == pytest.approx(now + 60)
    assert default.expires_at == pytest.approx(now + 600)  # the rule's
    clock.advance(50)
    assert svc.renew(kept.name, 300, requester="ci").expires_at == pytest.approx(now + 350)
    with pytest.raises(Forbidden):
        svc.renew(kept.name, 300, requester="intruder")
    clock.advance(30)  # 80 s: past 60, not past 60 + 30 of grace
    svc.run_cycle()
    assert svc.vm(short.name).state is InstanceState.ACQUIRED
    clock.advance(20)  # 100 s
    svc.run_cycle()
    assert svc.vm(short.name).state is InstanceState.RELEASING
    assert svc.vm(kept.name).state is InstanceState.ACQUIRED  # renewed
    expired = svc.events.recent(10, "vm.expired")
    assert [e.fields["name"] for e in expired] == [short.name] and expired[0].fields[
        "by"
    ] == "lease"


def test_max_held_grants_exactly_the_limit_over_two_instances_and_comes_back_on_release(
    make_service: Callable[..., WarmCache],
) -> None:
    limit = QuotaLimit(requester="ci", max_held=3)
    one = make_service(node="wc-1", quotas=(limit,))
    two = make_service(node="wc-2", quotas=(limit,))
    one.rules.put("az1", "small", {"max_instance_per_cycle": 20, "total_instances": 20})
    one.run_cycle()
    got: list[PoolInstance] = []
    refused: list[QuotaExceeded] = []
    other: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(svc: WarmCache) -> None:
        barrier.wait()
        for _ in range(2):
            try:
                got.extend(svc.acquire("small", "az1", 1, "best-effort", requester="ci"))
            except QuotaExceeded as exc:
                refused.append(exc)
            except BaseException as exc:  # pragma: no cover - reported below
                other.append(exc)

    threads = [threading.Thread(target=worker, args=(svc,)) for svc in (one, two) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert other == [] and len(got) == 3 and len(refused) == 13
    two.release(got[0].name, requester="ci")  # one back: one more may be held
    assert len(one.acquire("small", "az1", 1, "best-effort", requester="ci")) == 1
    with pytest.raises(QuotaExceeded):
        two.acquire("small", "az1", 1, "best-effort", requester="ci")


def test_day_two_disks_for_the_holder(svc: WarmCache, agents: dict[str, FakeAgent]) -> None:
    [vm] = svc.acquire("small", "az1", 1, "best-effort", requester="ci")
    with_disk = svc.lifecycle.attach_disk(vm.name, 10, "metadata", "ci", admin=False)
    assert [(d.target, d.size_gib) for d in with_disk.data_disks] == [("vdb", 10)]
    second = svc.lifecycle.attach_disk(vm.name, 5, "off", "ci", admin=False)
    assert [d.target for d in second.data_disks] == ["vdb", "vdc"]
    host = agent_of(agents, vm)
    assert host.disks[vm.name] == {"vdb": 10, "vdc": 5}
    with pytest.raises(Forbidden):
        svc.lifecycle.attach_disk(vm.name, 1, "off", "intruder", admin=False)
    after = svc.lifecycle.detach_disk(vm.name, "vdb", "ci", admin=False)
    assert [d.target for d in after.data_disks] == ["vdc"] and host.disks[vm.name] == {"vdc": 5}
    svc.release(vm.name, requester="ci")
    with pytest.raises(VmNotHeld):
        svc.lifecycle.attach_disk(vm.name, 1, "off", "ci", admin=True)


def test_vms_are_listed_by_state_holder_and_page(svc: WarmCache) -> None:
    mine = svc.acquire("small", "az1", 3, "best-effort", requester="ci")
    svc.acquire("small", "az1", 1, "best-effort", requester="other")
    page, after = svc.lifecycle.vms(requester="ci", limit=2)
    names = sorted(v.name for v in mine)
    assert [v.name for v in page] == names[:2] and after == names[1]
    rest, after = svc.lifecycle.vms(requester="ci", limit=2, after=after)
    assert [v.name for v in rest] == names[2:] and after is None
    held, _ = svc.lifecycle.vms(state="acquired", limit=100)
    assert len(held) == 4
    ready, _ = svc.lifecycle.vms(state="ready", az="az1", flavor="small")
    assert all(v.state is InstanceState.READY for v in ready) and len(ready) == 2


def test_reconciliation_counts_releasing_vms_as_tracked(svc: WarmCache) -> None:
    from warmcache.layout import PoolRecords

    [vm] = svc.acquire("small", "az1", 1, "best-effort", requester="ci")
    svc.release(vm.name)
    on_host = PoolRecords(svc.store, KEYS).on_host("az1", vm.hypervisor)
    assert on_host[vm.name] == "releasing"


def test_held_keys_do_not_grow_with_acquire_and_release_cycles(svc: WarmCache) -> None:
    def count() -> int:
        return len(svc.store.range("wc/")[0])

    svc.run_cycle()
    before = count()
    for _ in range(20):
        [vm] = svc.acquire("small", "az1", 1, "best-effort", requester="ci")
        svc.release(vm.name, requester="ci")
        svc.lifecycle.worker.run_once()
        svc.run_cycle()  # refill
    assert count() <= before  # nothing left behind (no address pools here)
