"""Pool generations and rolling replacement: a change to what VMs are built
from makes the pool's VMs stale; the leader replaces them over cycles at
the rule's rate, new ones first, never below the ready floor; stale VMs are
handed out only when current ones cannot (or never); VMs past max_age_s are
recycled the same way."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from warmcache.builders.rollover import surge, to_retire
from warmcache.errors import NoCapacity
from warmcache.model import BuildRule, Flavor, InstanceState, PoolInstance, pool_generation
from warmcache.service import WarmCache

SMALL = Flavor(name="small", vcpus=2, memory_mib=4096, disk_gib=20, image_id="debian-12")
SCRIPT, OTHER = "ZWNobyBoaQ==", "ZWNobyB0d28="  # base64 of two first-boot scripts


def base_rule(**kw: Any) -> BuildRule:
    return BuildRule.model_validate({"max_instance_per_cycle": 6, "total_instances": 6, **kw})


def pool(service: WarmCache, az: str = "az1") -> list[PoolInstance]:
    kvs, _ = service.store.range(service.keys.pool_dir(az))
    return [PoolInstance.model_validate_json(kv.value) for kv in kvs]


def held(service: WarmCache) -> list[PoolInstance]:
    return [r for r in pool(service) if r.state in (InstanceState.READY, InstanceState.RESERVED)]


def put_rule(service: WarmCache, **kw: Any) -> None:
    fields = {"max_instance_per_cycle": 6, "total_instances": 6, "user_data": SCRIPT, **kw}
    service.rules.put("az1", "small", fields)


def test_the_generation_digests_what_a_vm_is_built_from_and_nothing_else() -> None:
    rule = base_rule(user_data=SCRIPT)
    same = pool_generation(SMALL, rule)
    assert same == pool_generation(SMALL, base_rule(user_data=SCRIPT, total_instances=60))
    assert same == pool_generation(SMALL, rule.model_copy(update={"replace_per_cycle": 3}))
    changed = [
        pool_generation(SMALL.model_copy(update={"image_id": "debian-13"}), rule),
        pool_generation(SMALL.model_copy(update={"provider_flavor_id": "m2"}), rule),
        pool_generation(SMALL.model_copy(update={"memory_mib": 8192}), rule),
        pool_generation(SMALL.model_copy(update={"extra_disks_gib": (10,)}), rule),
        pool_generation(SMALL, base_rule(user_data=OTHER)),
        pool_generation(SMALL, base_rule(user_data=SCRIPT, group_hint="db")),
        pool_generation(SMALL, rule, "a" * 64),  # the image's bytes
        pool_generation(SMALL, rule, "b" * 64),  # the same id, other bytes
        pool_generation(SMALL.model_copy(update={"preallocation": "full"}), rule),
    ]
    assert same not in changed and len(set(changed)) == len(changed)


@pytest.mark.parametrize(
    ("total", "rate", "held", "retiring", "want"),
    [
        (6, 2, 8, 6, 2),  # the surge is up: replace a full step
        (6, 2, 6, 6, 2),  # no surge (no room): down to the floor, 4
        (6, 2, 5, 6, 1),  # one acquired meanwhile: only down to the floor
        (6, 2, 4, 6, 0),  # at the floor: nothing
        (6, 2, 8, 1, 1),  # one left to replace
        (6, 10, 6, 6, 6),  # a rate above the target: the floor is 0
    ],
)
def test_retirement_respects_the_rate_and_the_floor(
    total: int, rate: int, held: int, retiring: int, want: int
) -> None:
    rule = base_rule(total_instances=total, replace_per_cycle=rate)
    assert to_retire(rule, held, retiring) == want
    assert held - want >= min(held, max(0, total - rate))
    assert surge(rule, retiring) == min(rate, retiring)
    assert to_retire(rule.model_copy(update={"enabled": False}), held, retiring) == 0


def test_a_rule_change_rolls_the_pool_over_new_vms_first(service: WarmCache) -> None:
    put_rule(service, replace_per_cycle=2)
    service.run_cycle()
    first = {r.name for r in held(service)}
    generation = {r.generation for r in held(service)}
    assert len(first) == 6 and len(generation) == 1 and "" not in generation
    put_rule(service, replace_per_cycle=2, user_data=OTHER)  # a new first-boot script
    lows, replaced_per_cycle, stale_seen = [], [], []
    for _ in range(6):
        report = service.run_cycle()
        assert report is not None
        replaced_per_cycle.append(report.replaced[("az1", "small")])
        ready = held(service)
        lows.append(len(ready))
        stale_seen.append(next(p.stale for p in service.pools() if p.flavor == "small"))
    assert replaced_per_cycle[:4] == [2, 2, 2, 0]  # at the configured rate, then done
    assert min(lows) >= 6  # built first: the pool never went below its target
    assert stale_seen[:4] == [4, 2, 0, 0]
    now = held(service)
    assert len(now) == 6 and not {r.name for r in now} & first
    assert not any(r.stale for r in now) and {r.generation for r in now} != generation
    events = service.events.recent(200, "vm.replaced")
    assert len(events) == 6 and {e.fields["reason"] for e in events} == {"stale"}
    assert len(service.events.recent(50, "pool.generation_changed")) == 1


def test_without_room_for_new_vms_the_floor_holds(service: WarmCache) -> None:
    """A full AZ (6 hosts x 8 small VMs): no surge fits, so the rollover
    goes down to total - replace_per_cycle, builds into the room it freed,
    and never below that floor."""
    put_rule(service, total_instances=48, max_instance_per_cycle=48, replace_per_cycle=8)
    service.run_cycle()
    assert len(held(service)) == 48
    put_rule(
        service, total_instances=48, max_instance_per_cycle=48, replace_per_cycle=8, user_data=OTHER
    )
    lows = []
    for _ in range(10):
        service.run_cycle()
        lows.append(len(held(service)))
        if not any(r.stale for r in pool(service)) and lows[-1] == 48:
            break
    assert min(lows) >= 40 and lows[-1] == 48
    assert not any(r.stale for r in pool(service))


def test_stale_vms_are_handed_out_only_when_current_ones_cannot(service: WarmCache) -> None:
    put_rule(service, replace_per_cycle=2)
    service.run_cycle()
    put_rule(service, replace_per_cycle=2, user_data=OTHER)
    service.run_cycle()  # 2 current built, 2 stale retired: 2 current + 4 stale
    states = Counter(r.stale for r in held(service))
    assert states == {False: 2, True: 4}
    first = service.acquire("small", "az1", 2, "best-effort")
    assert [vm.stale for vm in first] == [False, False]  # current ones first
    mixed = service.acquire("small", "az1", 3, "best-effort")
    assert all(vm.stale for vm in mixed)  # none current left: stale, and they say so
    put_rule(service, replace_per_cycle=2, user_data=OTHER, stale_handout="never", enabled=False)
    with pytest.raises(NoCapacity):
        service.acquire("small", "az1", 1, "best-effort")
    assert sum(r.stale for r in held(service)) == 1  # refused, not claimed


def test_vms_past_max_age_are_recycled_at_the_rate(service: WarmCache, clock: Any) -> None:
    put_rule(service, replace_per_cycle=3, max_age_s=3600)
    service.run_cycle()
    first = {r.name for r in held(service)}
    service.run_cycle()
    assert {r.name for r in held(service)} == first  # young: kept
    clock.advance(3601)
    report = service.run_cycle()
    assert report is not None and report.replaced[("az1", "small")] == 3
    assert len(held(service)) == 6 and len(first & {r.name for r in held(service)}) == 3
    service.run_cycle()
    assert not first & {r.name for r in held(service)}
    events = service.events.recent(50, "vm.replaced")
    assert len(events) == 6 and {e.fields["reason"] for e in events} == {"max_age"}


def test_vms_built_before_generations_are_not_rolled_over(service: WarmCache) -> None:
    put_rule(service)
    service.run_cycle()
    for kv in service.store.range(service.keys.pool_dir("az1"))[
        0
    ]:  # as an older release wrote them
        rec = PoolInstance.model_validate_json(kv.value).model_copy(update={"generation": ""})
        service.store.put(kv.key, rec.model_dump_json())
    before = {r.name for r in held(service)}
    report = service.run_cycle()
    assert report is not None and not report.replaced and {r.name for r in held(service)} == before
