"""Property tests of mode selection and of the indexes it runs on (DESIGN §12.3)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from warmcache.acquire.modes import SELECTORS, satisfiable
from warmcache.acquire.stock import Ranking, Stock
from warmcache.model import InstanceState, Mode, PoolInstance


def vm(i: int, rack: int, hv: int) -> PoolInstance:
    return PoolInstance(
        name=f"vm{i}",
        az="az1",
        flavor="small",
        rack=f"r{rack}",
        hypervisor=f"r{rack}-h{hv}",
        state=InstanceState.READY,
        created_at=0,
    )


def stock_of(pool: list[PoolInstance]) -> Stock:
    return Stock.of((v.name, v.rack, v.hypervisor) for v in pool)


pools = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), max_size=30).map(
    lambda spots: [vm(i, r, h) for i, (r, h) in enumerate(spots)]
)


@given(pools, st.integers(1, 12), st.sampled_from(list(Mode)), st.integers(0, 2**32))
def test_a_result_exists_exactly_when_the_mode_is_satisfiable(
    pool: list[PoolInstance], count: int, mode: Mode, seed: int
) -> None:
    chosen = SELECTORS[mode].select(stock_of(pool), count, random.Random(seed))
    assert (chosen is not None) == satisfiable(pool, count, mode)
    if chosen is None:
        return
    by_name = {v.name: v for v in pool}
    assert len(chosen) == count
    assert len(set(chosen)) == count  # no VM twice
    assert set(chosen) <= set(by_name)
    if mode is Mode.RACK_AWARE:
        assert len({by_name[n].rack for n in chosen}) == count
    if mode is Mode.HYPERVISOR_AWARE:
        assert len({by_name[n].hypervisor for n in chosen}) == count


@given(pools, st.integers(1, 12), st.integers(0, 2**32))
def test_best_effort_uses_as_many_hypervisors_as_it_can(
    pool: list[PoolInstance], count: int, seed: int
) -> None:
    chosen = SELECTORS[Mode.BEST_EFFORT].select(stock_of(pool), count, random.Random(seed))
    if chosen is None:
        return
    by_name = {v.name: v for v in pool}
    distinct = len({v.hypervisor for v in pool})
    assert len({by_name[n].hypervisor for n in chosen}) == min(count, distinct)


def test_rack_aware_takes_from_the_best_stocked_racks() -> None:
    pool = [vm(0, 1, 0), vm(1, 1, 1), vm(2, 1, 2), vm(3, 2, 0), vm(4, 3, 0)]
    stock = stock_of(pool)
    racks = Counter(
        n
        for seed in range(50)
        for n in SELECTORS[Mode.RACK_AWARE].select(stock, 1, random.Random(seed)) or []
    )
    assert set(racks) <= {"vm0", "vm1", "vm2"} and sum(racks.values()) == 50


def test_ties_are_broken_at_random() -> None:
    stock = stock_of([vm(i, i, 0) for i in range(6)])  # six racks of one VM
    picks = {
        tuple(SELECTORS[Mode.RACK_AWARE].select(stock, 1, random.Random(s)) or [])
        for s in range(40)
    }
    assert len(picks) > 3


# A Ranking against a plain Counter: after any sequence of +1/-1, the sizes
# agree and top(k) is k groups of the largest sizes.
ops = st.lists(st.tuples(st.sampled_from("abcdefg"), st.booleans()), max_size=200)


@given(ops, st.integers(1, 8), st.integers(0, 2**32))
def test_ranking_agrees_with_a_counter(steps: list[tuple[str, bool]], k: int, seed: int) -> None:
    ranking: Ranking[str] = Ranking()
    model: Counter[str] = Counter()
    for group, up in steps:
        if up:
            ranking.incr(group)
            model[group] += 1
        elif model[group]:
            ranking.decr(group)
            model[group] -= 1
    model = +model
    assert len(ranking) == len(model)
    assert all(ranking.count(g) == n for g, n in model.items())
    top = ranking.top(k, random.Random(seed))
    assert len(top) == min(k, len(model)) and len(set(top)) == len(top)
    sizes = sorted(model.values(), reverse=True)
    assert sorted((model[g] for g in top), reverse=True) == sizes[: len(top)]
    assert [n for n, _ in ranking.descending()] == sorted(set(model.values()), reverse=True)


@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 5), st.integers(0, 3), st.booleans()),
        max_size=120,
    )
)
def test_a_stock_agrees_with_its_members(steps: list[tuple[int, int, int, bool]]) -> None:
    stock = Stock()
    model: dict[str, tuple[str, str]] = {}
    for i, r, h, add in steps:
        name, rack, hv = f"vm{i}", f"r{r}", f"r{r}-h{h}"
        if add and name not in model:
            stock.add(name, rack, hv)
            model[name] = (rack, hv)
        elif not add and name in model:
            stock.remove(name, *model.pop(name))
    assert stock.members() == set(model) and len(stock) == len(model)
    assert len(stock.racks) == len({r for r, _ in model.values()})
    assert len(stock.hypervisors) == len({h for _, h in model.values()})
