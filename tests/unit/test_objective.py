"""The objective sizer's tier mix (warmcache.objective): on synthetic demand
with known best mixes, and as a property: no mix it rejected meets the
objective at a lower cost."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from warmcache.config import CostConfig
from warmcache.demand.forecast import Forecast
from warmcache.model import Objective, Tiers
from warmcache.objective import COLD, Evaluator, TierCosts, choose

COSTS = TierCosts.of(CostConfig())  # 1 / 0.5 / 0.02; 2 / 150 / 1000 ms


def steps(rate: float, need: dict[int, float]) -> tuple[float, Callable[[int], float]]:
    """A miss curve: ``need[n]`` = the share of requests a pool of n misses."""

    def misses(n: int) -> float:
        share = min((v for k, v in need.items() if k <= n), default=1.0)
        return rate * share

    return rate, misses


def test_a_latency_the_saved_tier_meets_makes_the_whole_pool_saved() -> None:
    rate, misses = steps(100.0, {0: 1.0, 5: 0.2, 10: 0.005})
    mix = choose(misses, rate, Objective(served_at_once=0.99, p99_acquire_ms=1000), COSTS, 0, 50)
    assert mix.chosen.mix == Tiers(saved=10)
    assert mix.reachable and mix.chosen.meets and mix.chosen.served >= 0.99
    assert mix.chosen.p99_ms == 1000
    # the single-tier pools of the same size were weighed, and cost more
    running = next(a for a in mix.alternatives if a.mix == Tiers(running=10))
    assert running.cost_per_h == 10 > mix.chosen.cost_per_h


def test_a_tight_latency_keeps_the_first_vms_fast_and_the_tail_saved() -> None:
    """p99 <= 200 ms: the VMs 99% of requests reach wake in 150 ms (paused,
    cheaper than running); the share served needs more, which sleep saved."""
    rate, misses = steps(100.0, {0: 1.0, 4: 0.05, 8: 0.01, 12: 0.001})
    mix = choose(misses, rate, Objective(served_at_once=0.999, p99_acquire_ms=200), COSTS, 0, 50)
    assert mix.chosen.mix == Tiers(paused=8, saved=4)
    assert mix.chosen.p99_ms == 150 and mix.chosen.meets
    mix = choose(misses, rate, Objective(served_at_once=0.999, p99_acquire_ms=50), COSTS, 0, 50)
    assert mix.chosen.mix == Tiers(running=8, saved=4)


def test_an_objective_beyond_the_ceiling_serves_what_it_can_and_says_so() -> None:
    rate, misses = steps(100.0, {0: 1.0, 10: 0.1, 20: 0.0})
    mix = choose(misses, rate, Objective(served_at_once=0.99), COSTS, 0, 12)
    assert not mix.reachable and not mix.chosen.meets
    assert mix.chosen.mix.total == 12 and mix.chosen.served == 0.9


def test_no_demand_holds_the_floor_in_the_cheapest_tier() -> None:
    mix = choose(lambda _n: 0.0, 0.0, Objective(served_at_once=0.99), COSTS, 3, 40)
    assert mix.chosen.mix == Tiers(saved=3) and mix.chosen.meets


def test_the_evaluator_reads_p99_from_the_tier_a_request_reaches() -> None:
    rate, misses = steps(100.0, {0: 1.0, 3: 0.5, 6: 0.0})
    ev = Evaluator(misses, rate, Objective(served_at_once=0.9), COSTS)
    assert ev.p99_ms(Tiers(running=6)) == 2
    assert ev.p99_ms(Tiers(running=3, saved=3)) == 1000  # half the requests reach saved
    assert ev.p99_ms(Tiers(running=3)) == COLD


def test_a_real_forecast_curve_gives_a_mix_that_meets_it() -> None:
    fc = Forecast((3, 5, 8, 2), {1: 50, 2: 20, 4: 5}, 1.0, 90.0, 0.5, False)
    mix = choose(fc.curve(), fc.requests / fc.hours, Objective(served_at_once=0.99), COSTS, 0, 60)
    assert mix.chosen.meets and mix.chosen.served >= 0.99
    assert mix.chosen.mix.running == 0  # no latency asked: nothing runs


@st.composite
def problems(draw: st.DrawFn) -> tuple[object, ...]:
    rate = draw(st.floats(1.0, 500.0))
    decay = draw(st.floats(0.3, 5.0))
    ceiling = draw(st.integers(0, 14))
    floor = draw(st.integers(0, ceiling))
    served = draw(st.sampled_from([0.5, 0.8, 0.9, 0.95, 0.99]))
    p99 = draw(st.sampled_from([None, 1, 10, 100, 200, 1000, 5000]))
    weights = sorted(draw(st.lists(st.floats(0.01, 2.0), min_size=3, max_size=3)), reverse=True)
    wakes = sorted(draw(st.lists(st.floats(0.0, 2000.0), min_size=3, max_size=3)))
    return rate, decay, floor, ceiling, served, p99, weights, wakes


@settings(max_examples=300, deadline=None)
@given(problems())
def test_no_rejected_mix_meets_the_objective_at_a_lower_cost(problem: tuple[object, ...]) -> None:
    rate, decay, floor, ceiling, served, p99, weights, wakes = problem
    assert isinstance(rate, float) and isinstance(decay, float)
    assert isinstance(floor, int) and isinstance(ceiling, int)
    assert isinstance(weights, list) and isinstance(wakes, list)

    def misses(n: int) -> float:
        return rate * math.exp(-n / decay)

    objective = Objective(served_at_once=served, p99_acquire_ms=p99)  # type: ignore[arg-type]
    costs = TierCosts((weights[0], weights[1], weights[2]), (wakes[0], wakes[1], wakes[2]))
    mix = choose(misses, rate, objective, costs, floor, ceiling)
    ev = Evaluator(misses, rate, objective, costs)
    every = [
        ev.outlook(Tiers(running=r, paused=p, saved=s))
        for r, p, s in itertools.product(range(ceiling + 1), repeat=3)
        if floor <= r + p + s <= ceiling
    ]
    meeting = [o for o in every if o.meets]
    assert mix.chosen.mix.total <= ceiling
    if meeting:
        assert mix.reachable and mix.chosen.meets
        assert mix.chosen.cost_per_h <= min(o.cost_per_h for o in meeting) + 1e-9
    else:  # the most requests served within the latency asked, then the most in all
        assert not mix.chosen.meets and not mix.reachable
        best = max((o.fast, o.served) for o in every)
        assert (mix.chosen.fast, mix.chosen.served) >= (best[0] - 1e-12, best[1] - 1e-12)
