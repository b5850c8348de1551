"""The demand model's arithmetic on synthetic traces with known answers:
chunks stay bounded and add up, the forecast is the demand of the windows
it saw (by time of day once a day is covered), request needs carry the
pool's own drain, and the budget goes where the missed requests are."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmcache.demand.forecast import (
    DAY_S,
    HOUR_S,
    MAX_SIZES,
    Ask,
    Chunk,
    Forecast,
    PoolHistory,
    forecast,
    split,
    target,
)

BIN = 60.0


def history(requests: list[tuple[float, int]], bin_s: float = BIN) -> PoolHistory:
    """``(at, size)`` requests as one instance's chunks."""
    chunks: dict[float, Chunk] = {}
    for at, n in requests:
        hour = at // HOUR_S * HOUR_S
        chunks.setdefault(hour, Chunk.empty(hour, bin_s)).record(at, n)
    return PoolHistory.of(chunks.values(), bin_s)


def fc(needs: dict[int, int], hours: float = 1.0, windows: tuple[int, ...] = ()) -> Forecast:
    return Forecast(windows, Counter(needs), hours, 0.0, 0, False)


def test_a_chunk_counts_vms_per_bin_and_requests_per_size() -> None:
    c = Chunk.empty(7200.0, BIN)
    c.record(7200.0 + 5, 3)
    c.record(7200.0 + 30, 1)
    c.record(7200.0 + 61, 3)
    assert len(c.counts) == 60 and c.counts[:3] == [4, 3, 0] and c.vms == 7
    assert c.sizes == Counter({3: 2, 1: 1})
    again = Chunk.from_json(c.to_json())
    assert again == c
    other = Chunk.empty(7200.0, BIN)
    other.record(7200.0 + 5, 2)
    c.add(other)
    assert c.counts[0] == 6 and c.sizes[2] == 1
    with pytest.raises(ValueError, match="different hours"):
        c.add(Chunk.empty(3600.0, BIN))


@pytest.mark.parametrize(
    "raw",
    [
        "[]",
        '{"start": 100, "bin_s": 60, "counts": [0], "sizes": {}}',  # not an hour start
        '{"start": 3600, "bin_s": 60, "counts": [0], "sizes": {}}',  # not an hour's bins
        '{"start": 3600, "bin_s": 60, "counts": ' + json.dumps([-1] * 60) + ', "sizes": {}}',
        '{"start": 3600, "bin_s": 7, "counts": [], "sizes": {}}',  # 7 s does not divide an hour
        '{"start": 3600, "bin_s": 60, "counts": ' + json.dumps([0] * 60) + ', "sizes": {"x": 1}}',
    ],
)
def test_a_malformed_chunk_is_refused(raw: str) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        Chunk.from_json(raw)


def test_a_chunk_keeps_a_bounded_number_of_sizes() -> None:
    c = Chunk.empty(0.0, BIN)
    for n in range(1, 2 * MAX_SIZES):
        c.record(1.0, n)
    assert len(c.sizes) <= MAX_SIZES
    assert sum(c.sizes.values()) == 2 * MAX_SIZES - 1  # every request still counted
    Chunk.from_json(c.to_json())


def test_quiet_hours_count_as_zero_and_instances_add_up() -> None:
    a = Chunk.empty(0.0, BIN)
    a.record(10.0, 2)
    b = Chunk.empty(0.0, BIN)
    b.record(20.0, 1)
    late = Chunk.empty(2 * HOUR_S, BIN)
    late.record(2 * HOUR_S + 1, 5)
    h = PoolHistory.of([a, b, late], BIN)
    assert h.since == 0.0
    assert h.bins(0.0, 2 * BIN) == [3, 0]
    assert sum(h.bins(HOUR_S, 2 * HOUR_S)) == 0  # no chunk: quiet
    sizes, hours = h.sizes(0.0, 2.5 * HOUR_S)
    assert sizes == Counter({2: 1, 1: 1, 5: 1}) and hours == pytest.approx(2.5)


def test_steady_demand_forecasts_its_rate_over_the_horizon() -> None:
    # one request of 3 VMs per minute for an hour
    h = history([(i * BIN + 1, 3) for i in range(60)])
    f = forecast(h, HOUR_S, horizon_s=180, build_s=0, lookback_s=HOUR_S)
    assert set(f.windows) == {9} and not f.seasonal
    assert f.rate_per_h == pytest.approx(180) and f.sizes == Counter({3: 60})
    assert target(f, 0.9, margin=1, floor=2, ceiling=100) == 10
    assert target(f, 0.9, margin=1, floor=2, ceiling=6) == 6  # the rule's ceiling
    empty = forecast(PoolHistory(BIN, {}), HOUR_S, 180, 0, HOUR_S)
    assert target(empty, 0.9, 1, floor=2, ceiling=6) == 2  # no history: the floor


def test_a_request_needs_its_size_plus_what_others_take_while_one_builds() -> None:
    h = history([(i * BIN + 1, 3) for i in range(60)])  # 3 VMs a minute
    f = forecast(h, HOUR_S, horizon_s=60, build_s=40, lookback_s=HOUR_S)
    assert f.drain == pytest.approx(2.0) and f.shift == 2  # 3 a minute x 40 s
    assert f.need_quantile(0.95) == 5
    # a request of 3 misses a pool of 3 whenever anything was taken from it,
    # a pool of 5 only when more than 2 were: Poisson with mean 2
    p_more_than = [
        1 - sum(math.exp(-2) * 2**i / math.factorial(i) for i in range(k + 1)) for k in range(4)
    ]
    assert f.misses_per_h(2) == pytest.approx(60)
    assert f.misses_per_h(3) == pytest.approx(60 * p_more_than[0], rel=1e-4)
    assert f.misses_per_h(5) == pytest.approx(60 * p_more_than[2], rel=1e-4)
    assert f.misses_per_h(30) == pytest.approx(0, abs=1e-4)


def test_large_rare_requests_raise_the_target_only_at_a_high_quantile() -> None:
    requests = [(i * BIN + 1, 1) for i in range(60)] + [(30 * BIN + 2, 20)]
    f = forecast(history(requests), HOUR_S, horizon_s=60, build_s=0, lookback_s=HOUR_S)
    assert target(f, 0.9, 0, 0, 100) == 1
    assert target(f, 1.0, 0, 0, 100) == 21  # that minute's demand: 1 + 20


def test_with_a_day_of_history_the_forecast_follows_the_time_of_day() -> None:
    """Busy (10 VMs a minute) from 08:00 to 11:00, quiet otherwise, for two
    days: on the third, at 09:30 the forecast says busy although the recent
    hour was quiet (nothing was asked yet that day), at 03:00 quiet."""
    requests = []
    for i in range(int(2 * DAY_S / BIN)):
        at = i * BIN
        if 8 <= (at % DAY_S) / 3600 < 11:
            requests.append((at + 1, 10))
    h = history(requests)
    busy = forecast(h, 2 * DAY_S + 9.5 * 3600, horizon_s=BIN, build_s=0, lookback_s=HOUR_S)
    quiet = forecast(h, 2 * DAY_S + 3 * 3600, horizon_s=BIN, build_s=0, lookback_s=HOUR_S)
    assert busy.seasonal and quiet.seasonal
    assert busy.window_quantile(0.5) == 10 and quiet.window_quantile(0.99) == 0


def test_the_budget_goes_where_requests_would_be_missed() -> None:
    """Pool a: requests of 1 VM, 30 an hour; pool b: requests of 4 VMs, 10 an
    hour; pool c: nothing. Budget 6: a's first VM saves 30 misses an hour,
    b's four VMs save 10 an hour (2.5 per VM), a's second VM nothing."""
    asks = {
        "a": Ask(0, 0, 50, 1, fc({1: 30})),
        "b": Ask(0, 0, 50, 1, fc({4: 10})),
        "c": Ask(0, 1, 50, 1, fc({})),
    }
    assert split(6, asks) == {"a": 1, "b": 4, "c": 1}  # floors first, then misses saved
    assert split(4, asks) == {"a": 1, "b": 0, "c": 1}  # b's 4 no longer fit after a and c
    capped = {**asks, "b": Ask(0, 0, 3, 1, fc({4: 10}))}
    assert split(6, capped)["b"] == 0  # 3 VMs serve none of b's requests


def test_what_a_pool_holds_is_never_taken_back_and_counts_against_the_budget() -> None:
    asks = {
        "a": Ask(8, 0, 5, 1, fc({1: 1})),  # holds 8, its forecast asks for 5
        "b": Ask(0, 0, 50, 1, fc({1: 100, 2: 100})),
    }
    got = split(10, asks)
    assert got == {"a": 5, "b": 2}  # a keeps its 8 (builds nothing); b gets what is left


def test_a_vcpu_budget_weighs_each_pool_by_its_vm_size() -> None:
    asks = {
        "big": Ask(0, 0, 10, 4, fc({1: 10})),
        "small": Ask(0, 0, 10, 1, fc({1: 10})),
    }
    got = split(4, asks)
    assert got == {"big": 0, "small": 1}  # the same miss saved for a quarter of the vCPUs
    assert split(5, asks) == {"big": 1, "small": 1}


def test_static_pools_spend_their_part_of_the_budget_first() -> None:
    asks = {"a": Ask(0, 0, 50, 1, fc({1: 10, 2: 10, 3: 10}))}
    assert split(10, asks, fixed=8) == {"a": 2}


@settings(max_examples=200, deadline=None)
@given(
    budget=st.integers(0, 60),
    fixed=st.integers(0, 20),
    pools=st.lists(
        st.tuples(
            st.integers(0, 20),  # have
            st.integers(0, 10),  # floor
            st.integers(0, 30),  # ceiling
            st.sampled_from([1, 2, 4]),  # cost
            st.dictionaries(st.integers(1, 40), st.integers(1, 50), max_size=6),
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_the_split_keeps_its_promises(
    budget: int, fixed: int, pools: list[tuple[int, int, int, int, dict[int, int]]]
) -> None:
    asks = {
        f"p{i}": Ask(have, min(floor, ceiling), ceiling, cost, fc(needs))
        for i, (have, floor, ceiling, cost, needs) in enumerate(pools)
    }
    got = split(budget, asks, fixed)
    held = sum(a.have * a.cost for a in asks.values())
    built = sum(max(0, got[p] - a.have) * a.cost for p, a in asks.items())
    # never past a ceiling, never below what it holds (up to its ceiling)
    assert all(min(a.have, a.ceiling) <= got[p] <= max(a.ceiling, 0) for p, a in asks.items())
    # what it asks to build fits in the budget left after what is held
    assert built <= max(0, budget - fixed - held)
    # floors are met whenever the budget could meet them all
    need = sum(max(0, a.floor - a.have) * a.cost for a in asks.values())
    if need <= budget - fixed - held:
        assert all(got[p] >= a.floor for p, a in asks.items())


def test_the_split_handles_a_large_budget_over_many_pools() -> None:
    rng = random.Random(3)
    asks = {
        f"p{i}": Ask(
            0, 0, 5000, 1, fc({rng.randint(1, 400): rng.randint(1, 50) for _ in range(200)})
        )
        for i in range(40)
    }
    got = split(20_000, asks)
    assert sum(got.values()) <= 20_000
