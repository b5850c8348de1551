from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from warmcache.builders.plan import plan_az
from warmcache.model import BuildRule, Flavor, HostFacts, InstanceState, PoolInstance
from warmcache.placement.pipeline import PlacementSession, default_pipeline
from warmcache.placement.request import PlacementRequest

SMALL = Flavor(name="small", vcpus=2, memory_mib=2048, disk_gib=10)


def host(rack: int, hv: int, vcpus: int = 8, **kw: object) -> HostFacts:
    return HostFacts.model_validate(
        {
            "hypervisor": f"r{rack}-h{hv}",
            "rack": f"r{rack}",
            "az": "az1",
            "vcpus_total": 8,
            "vcpus_free": vcpus,
            "memory_mib_total": 65536,
            "memory_mib_free": 65536,
            "disk_gib_total": 500,
            "disk_gib_free": 500,
            **kw,
        }
    )


def names() -> Callable[[str, str], str]:
    counter = itertools.count()
    return lambda az, flavor: f"{az}-{flavor}-{next(counter)}"


def test_pipeline_explains_how_many_hosts_each_validator_removed() -> None:
    hosts = [
        host(1, 1, vcpus=1),
        host(1, 2, healthy=False),
        host(2, 1, draining=True),
        host(2, 2, groups=("db",)),
        host(3, 1),
    ]
    decision = default_pipeline(random.Random(1)).choose(hosts, PlacementRequest(SMALL, group="db"))
    assert decision.host is not None and decision.host.hypervisor == "r3-h1"
    assert decision.removed == {
        "host_healthy": 2,
        "has_capacity": 1,
        "numa_fit": 0,
        "group_anti_affinity": 1,
    }
    assert "has_capacity removed 1" in decision.explain()


def test_no_host_left_is_a_decision_without_a_host() -> None:
    decision = default_pipeline().choose([host(1, 1, vcpus=0)], PlacementRequest(SMALL))
    assert decision.host is None and decision.removed["has_capacity"] == 1


def test_plan_spreads_a_cycle_over_racks_then_hypervisors() -> None:
    hosts = [host(r, h) for r in (1, 2, 3) for h in (1, 2)]
    rule = BuildRule(max_instance_per_cycle=6, total_instances=6, min_fault_domain=3)
    plan = plan_az("az1", {"small": rule}, {"small": SMALL}, hosts, [], default_pipeline(), names())
    assert len(plan.builds) == 6 and not plan.problems
    assert len({b.host.hypervisor for b in plan.builds}) == 6


def test_plan_never_counts_free_capacity_twice() -> None:
    hosts = [host(1, 1, vcpus=4), host(2, 1, vcpus=2)]
    rule = BuildRule(max_instance_per_cycle=10, total_instances=10)
    plan = plan_az("az1", {"small": rule}, {"small": SMALL}, hosts, [], default_pipeline(), names())
    assert len(plan.builds) == 3
    assert "placed 3 of 10" in plan.problems["small"]


def test_group_hint_keeps_one_vm_of_a_group_per_hypervisor() -> None:
    hosts = [host(1, 1), host(2, 1)]
    rule = BuildRule(max_instance_per_cycle=4, total_instances=4, group_hint="db")
    plan = plan_az("az1", {"small": rule}, {"small": SMALL}, hosts, [], default_pipeline(), names())
    assert sorted(b.host.hypervisor for b in plan.builds) == ["r1-h1", "r2-h1"]


def test_min_fault_domain_with_too_few_racks_builds_one_per_rack_and_says_why() -> None:
    """Only one rack has room for a batch that should span two: one VM (a
    batch of one spans one rack), and the cycle says why, rather than
    nothing for ever."""
    hosts = [host(1, 1), host(1, 2), host(2, 1, vcpus=0)]
    rule = BuildRule(max_instance_per_cycle=4, total_instances=4, min_fault_domain=2)
    plan = plan_az("az1", {"small": rule}, {"small": SMALL}, hosts, [], default_pipeline(), names())
    assert [b.host.rack for b in plan.builds] == ["r1"]
    assert "min_fault_domain=2: only 1 rack(s) have room" in plan.problems["small"]


def test_a_batch_spans_its_racks_even_when_spreading_would_pick_one_rack() -> None:
    """The refill deadlock of issue 27: the pool's VMs sit on racks 2 and 3,
    rack 1 is empty, so spreading alone puts both replacements on rack 1;
    min_fault_domain 2 asks the batch to span two racks."""
    hosts = [host(r, h) for r in (1, 2, 3) for h in (1, 2)]
    pooled = [
        PoolInstance(
            name=f"vm-{r}-{h}",
            az="az1",
            flavor="small",
            hypervisor=f"r{r}-h{h}",
            rack=f"r{r}",
            state=InstanceState.READY,
            created_at=0.0,
        )
        for r in (2, 3)
        for h in (1, 2)
    ]
    for m in (2, 3):
        rule = BuildRule(max_instance_per_cycle=6, total_instances=6, min_fault_domain=m)
        plan = plan_az(
            "az1", {"small": rule}, {"small": SMALL}, hosts, pooled, default_pipeline(), names()
        )
        assert len(plan.builds) == 2 and not plan.problems
        assert len({b.host.rack for b in plan.builds}) == 2
        assert "r1" in {b.host.rack for b in plan.builds}  # the emptied rack still comes first


def test_unknown_flavor_in_a_rule_is_reported() -> None:
    rule = BuildRule(max_instance_per_cycle=1, total_instances=1)
    plan = plan_az("az1", {"ghost": rule}, {}, [host(1, 1)], [], default_pipeline(), names())
    assert plan.builds == [] and "not in the catalog" in plan.problems["ghost"]


@settings(max_examples=60, deadline=None)
@given(
    racks=st.integers(1, 6),
    per_rack=st.integers(1, 5),
    seed=st.integers(0, 10_000),
    vms=st.integers(1, 40),
    group=st.sampled_from([None, "db"]),
    span=st.integers(0, 4),
)
def test_a_session_decides_as_a_full_evaluation_would(
    racks: int, per_rack: int, seed: int, vms: int, group: str | None, span: int
) -> None:
    """The incremental session (re-scoring only the chosen host's rack) sees,
    before every placement, exactly what evaluating every host afresh sees:
    the same hosts removed by each validator, the same best candidates."""
    rng = random.Random(seed)
    hosts = [
        host(
            r,
            h,
            vcpus=rng.choice([0, 2, 4, 8]),
            healthy=rng.random() > 0.1,
            groups=("db",) if rng.random() < 0.2 else (),
        )
        for r in range(racks)
        for h in range(per_rack)
    ]
    per_rack_n: Counter[str] = Counter()
    per_hv: Counter[str] = Counter()
    batch: Counter[str] = Counter()
    request = PlacementRequest(SMALL, group, per_rack_n, per_hv, batch, min(span, vms))
    pipeline = default_pipeline(random.Random(seed))
    session = pipeline.session(hosts, request)
    current = {h.hypervisor: h for h in hosts}
    for i in range(vms):
        got = session.pick()
        fresh = PlacementSession(pipeline, list(current.values()), request)
        expected = fresh.pick()
        assert got.removed == expected.removed and got.tied == expected.tied
        if expected.host is None:
            assert got.host is None
            return
        assert got.host is not None
        assert pipeline.scores(got.host, request) == pipeline.scores(expected.host, request)
        chosen = current[got.host.hypervisor].minus(SMALL, f"vm-{i}", group)
        current[chosen.hypervisor] = chosen
        per_rack_n[chosen.rack] += 1
        per_hv[chosen.hypervisor] += 1
        met = request.span_met
        batch[chosen.rack] += 1
        session.placed(chosen)
        if request.span_met and not met:
            session.rescore()
