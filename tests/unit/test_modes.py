"""Property tests of mode selection on random pools (DESIGN §12.3)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from warmcache.acquire.modes import SELECTORS, satisfiable
from warmcache.model import InstanceState, Mode, PoolInstance


def vm(i: int, rack: int, hv: int) -> PoolInstance:
    return PoolInstance(name=f"vm{i}", az="az1", flavor="small", rack=f"r{rack}",
                        hypervisor=f"r{rack}-h{hv}", state=InstanceState.READY, created_at=0)


pools = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), max_size=30).map(
    lambda spots: [vm(i, r, h) for i, (r, h) in enumerate(spots)]
)


@given(pools, st.integers(1, 12), st.sampled_from(list(Mode)), st.integers(0, 2**32))
def test_a_result_exists_exactly_when_the_mode_is_satisfiable(
    pool: list[PoolInstance], count: int, mode: Mode, seed: int
) -> None:
    chosen = SELECTORS[mode].select(pool, count, random.Random(seed))
    assert (chosen is not None) == satisfiable(pool, count, mode)
    if chosen is None:
        return
    assert len(chosen) == count
    assert len({v.name for v in chosen}) == count  # no VM twice
    assert {v.name for v in chosen} <= {v.name for v in pool}
    if mode is Mode.RACK_AWARE:
        assert len({v.rack for v in chosen}) == count
    if mode is Mode.HYPERVISOR_AWARE:
        assert len({v.hypervisor for v in chosen}) == count


@given(pools, st.integers(1, 12), st.integers(0, 2**32))
def test_best_effort_uses_as_many_hypervisors_as_it_can(
    pool: list[PoolInstance], count: int, seed: int
) -> None:
    chosen = SELECTORS[Mode.BEST_EFFORT].select(pool, count, random.Random(seed))
    if chosen is None:
        return
    distinct = len({v.hypervisor for v in pool})
    assert len({v.hypervisor for v in chosen}) == min(count, distinct)


def test_rack_aware_takes_from_the_best_stocked_racks() -> None:
    pool = [vm(0, 1, 0), vm(1, 1, 1), vm(2, 1, 2), vm(3, 2, 0), vm(4, 3, 0)]
    racks = Counter(
        v.rack for seed in range(50)
        for v in SELECTORS[Mode.RACK_AWARE].select(pool, 1, random.Random(seed)) or []
    )
    assert racks == {"r1": 50}
