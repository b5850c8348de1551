from __future__ import annotations

import itertools
import random

from warmcache.builders.plan import plan_az
from warmcache.model import BuildRule, Flavor, HostFacts
from warmcache.placement.pipeline import default_pipeline
from warmcache.placement.request import PlacementRequest

SMALL = Flavor(name="small", vcpus=2, memory_mib=2048, disk_gib=10)


def host(rack: int, hv: int, vcpus: int = 8, **kw: object) -> HostFacts:
    return HostFacts.model_validate({
        "hypervisor": f"r{rack}-h{hv}", "rack": f"r{rack}", "az": "az1",
        "vcpus_total": 8, "vcpus_free": vcpus, "memory_mib_total": 65536,
        "memory_mib_free": 65536, "disk_gib_total": 500, "disk_gib_free": 500, **kw})


def names() -> object:
    counter = itertools.count()
    return lambda az, flavor: f"{az}-{flavor}-{next(counter)}"


def test_pipeline_explains_how_many_hosts_each_validator_removed() -> None:
    hosts = [host(1, 1, vcpus=1), host(1, 2, healthy=False), host(2, 1, draining=True),
             host(2, 2, groups=("db",)), host(3, 1)]
    decision = default_pipeline(random.Random(1)).choose(
        hosts, PlacementRequest(SMALL, group="db"))
    assert decision.host is not None and decision.host.hypervisor == "r3-h1"
    assert decision.removed == {"host_healthy": 2, "has_capacity": 1, "numa_fit": 0,
                                "group_anti_affinity": 1}
    assert "has_capacity removed 1" in decision.explain()


def test_no_host_left_is_a_decision_without_a_host() -> None:
    decision = default_pipeline().choose([host(1, 1, vcpus=0)], PlacementRequest(SMALL))
    assert decision.host is None and decision.removed["has_capacity"] == 1


def test_plan_spreads_a_cycle_over_racks_then_hypervisors() -> None:
    hosts = [host(r, h) for r in (1, 2, 3) for h in (1, 2)]
    rule = BuildRule(max_instance_per_cycle=6, total_instances=6, min_fault_domain=3)
    plan = plan_az("az1", {"small": rule}, {"small": SMALL}, hosts, [], default_pipeline(),
                   names())
    assert len(plan.builds) == 6 and not plan.problems
    assert len({b.host.hypervisor for b in plan.builds}) == 6


def test_plan_never_counts_free_capacity_twice() -> None:
    hosts = [host(1, 1, vcpus=4), host(2, 1, vcpus=2)]
    rule = BuildRule(max_instance_per_cycle=10, total_instances=10)
    plan = plan_az("az1", {"small": rule}, {"small": SMALL}, hosts, [], default_pipeline(),
                   names())
    assert len(plan.builds) == 3
    assert "placed 3 of 10" in plan.problems["small"]


def test_group_hint_keeps_one_vm_of_a_group_per_hypervisor() -> None:
    hosts = [host(1, 1), host(2, 1)]
    rule = BuildRule(max_instance_per_cycle=4, total_instances=4, group_hint="db")
    plan = plan_az("az1", {"small": rule}, {"small": SMALL}, hosts, [], default_pipeline(),
                   names())
    assert sorted(b.host.hypervisor for b in plan.builds) == ["r1-h1", "r2-h1"]


def test_min_fault_domain_unmet_builds_nothing_and_says_why() -> None:
    hosts = [host(1, 1), host(1, 2), host(2, 1, vcpus=0)]
    rule = BuildRule(max_instance_per_cycle=4, total_instances=4, min_fault_domain=2)
    plan = plan_az("az1", {"small": rule}, {"small": SMALL}, hosts, [], default_pipeline(),
                   names())
    assert plan.builds == []
    assert "min_fault_domain=2 not met" in plan.problems["small"]


def test_unknown_flavor_in_a_rule_is_reported() -> None:
    rule = BuildRule(max_instance_per_cycle=1, total_instances=1)
    plan = plan_az("az1", {"ghost": rule}, {}, [host(1, 1)], [], default_pipeline(), names())
    assert plan.builds == [] and "not in the catalog" in plan.problems["ghost"]
