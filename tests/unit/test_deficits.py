from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from warmcache.builders.deficits import racks_required, to_build
from warmcache.model import BuildRule, InstanceState, below_low_water

S = InstanceState


def rule(**kw: object) -> BuildRule:
    return BuildRule.model_validate({"max_instance_per_cycle": 4, "total_instances": 10, **kw})


def test_deficit_is_capped_per_cycle_and_counts_building_and_reserved() -> None:
    assert to_build(rule(), Counter()) == 4
    assert to_build(rule(), Counter({S.READY: 5, S.RESERVED: 1, S.BUILDING: 2})) == 2
    assert to_build(rule(), Counter({S.READY: 12})) == 0  # over target: never negative
    assert to_build(rule(), Counter({S.ACQUIRED: 50, S.PURGING: 3})) == 4  # not pooled


def test_disabled_rule_builds_nothing_and_never_triggers() -> None:
    assert to_build(rule(enabled=False), Counter()) == 0
    assert not below_low_water(rule(enabled=False), 0, 0.5)


@given(st.integers(1, 50), st.integers(0, 100), st.integers(0, 100), st.integers(0, 100))
def test_deficit_never_overshoots_the_target(
    cap: int, total: int, ready: int, building: int
) -> None:
    r = BuildRule(max_instance_per_cycle=cap, total_instances=total)
    n = to_build(r, Counter({S.READY: ready, S.BUILDING: building}))
    assert 0 <= n <= cap
    assert ready + building + n <= max(total, ready + building)


def test_racks_required_is_capped_by_vms_built() -> None:
    assert racks_required(rule(min_fault_domain=3), 6) == 3
    assert racks_required(rule(min_fault_domain=3), 2) == 2


def test_low_water_mark() -> None:
    assert below_low_water(rule(), 4, 0.5)
    assert not below_low_water(rule(), 5, 0.5)
    assert not below_low_water(rule(total_instances=0), 0, 0.5)
