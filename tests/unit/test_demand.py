"""The demand model's arithmetic on synthetic traces with known answers:
the history stays bounded, the forecast is the demand of the windows it
saw (by time of day once a day is covered), and the budget goes where the
misses are."""

from __future__ import annotations

import random

import pytest

from warmcache.demand import DAY_S, Forecast, History, forecast, split, target

BIN = 300.0


def steady(per_bin: int, bins: int) -> History:
    h = History(bin_s=BIN)
    for i in range(bins):
        h.record(i * BIN + 1, per_bin)
    return h


def test_the_history_is_bounded_and_counts_by_bin() -> None:
    h = History(bin_s=BIN, keep=12)
    for i in range(100):
        h.record(i * BIN + 10, 2)
    assert len(h.counts) == 12 and h.counts == [2] * 12
    assert h.start == 88 * BIN
    h.record(0.0)  # older than what it keeps: dropped
    assert sum(h.counts) == 24
    again = History.from_dict(h.as_dict())
    assert again == h


def test_steady_demand_forecasts_its_rate_over_the_horizon() -> None:
    h = steady(3, 48)
    fc = forecast(h, 48 * BIN, horizon_s=900)  # three bins
    assert set(fc.windows) == {9} and not fc.seasonal
    assert target(fc, 0.9, margin=1, floor=2, ceiling=100) == 10
    assert target(fc, 0.9, margin=1, floor=2, ceiling=6) == 6  # the rule's ceiling
    assert target(forecast(History(), 0, 900), 0.9, 1, floor=2, ceiling=6) == 2  # no history


def test_a_still_open_bin_is_not_counted_and_quiet_bins_are() -> None:
    h = steady(4, 10)
    h.record(20 * BIN + 1, 50)  # the bin still open at 20 * BIN + 2
    fc = forecast(h, 20 * BIN + 2, horizon_s=BIN)  # ten quiet bins before it
    assert sorted(fc.windows) == [0] * 10 + [4] * 10
    assert fc.quantile(0.5) == 0 and fc.quantile(0.9) == 4
    assert fc.exceeds(3) == pytest.approx(10 / 20)


def test_with_a_day_of_history_the_forecast_follows_the_hour_of_day() -> None:
    """Busy (10 per bin) from 09:00 to 10:00, quiet otherwise, two days:
    at 09:00 the forecast says busy, at 03:00 quiet."""
    h = History(bin_s=BIN)
    for i in range(int(2 * DAY_S / BIN)):
        at = i * BIN
        hour = (at % DAY_S) / 3600
        h.record(at + 1, 10 if 9 <= hour < 10 else 0)
    busy = forecast(h, 2 * DAY_S + 9 * 3600, horizon_s=BIN)
    quiet = forecast(h, 2 * DAY_S + 3 * 3600, horizon_s=BIN)
    assert busy.seasonal and quiet.seasonal
    assert busy.quantile(0.9) == 10 and quiet.quantile(0.9) == 0


def test_the_budget_goes_to_the_pools_that_would_miss() -> None:
    always = Forecast((5,) * 10, False)  # 5 VMs every window
    rare = Forecast((0,) * 9 + (5,), False)  # 5 VMs one window in ten
    never = Forecast((0,) * 10, False)
    got = split(8, {"a": always, "b": rare, "c": never}, {"c": 1}, {"a": 50, "b": 50, "c": 50})
    assert got == {"a": 5, "b": 2, "c": 1}  # floors first, then where misses are likeliest
    assert sum(got.values()) == 8
    capped = split(8, {"a": always, "b": rare}, {}, {"a": 3, "b": 50})
    assert capped == {"a": 3, "b": 5}  # a ceiling is a hard limit


def test_a_vcpu_budget_weighs_each_pool_by_its_vm_size() -> None:
    fc = Forecast((4,) * 10, False)
    got = split(16, {"big": fc, "small": fc}, {}, {"big": 10, "small": 10}, {"big": 4, "small": 1})
    assert 4 * got["big"] + got["small"] <= 16 and got["small"] == 4


def test_the_split_never_exceeds_the_budget_on_random_inputs() -> None:
    rng = random.Random(5)
    for _ in range(200):
        pools = {
            f"p{i}": Forecast(tuple(rng.randint(0, 9) for _ in range(20)), False) for i in range(4)
        }
        floors = {p: rng.randint(0, 3) for p in pools}
        ceilings = {p: rng.randint(0, 12) for p in pools}
        budget = rng.randint(0, 30)
        got = split(budget, pools, floors, ceilings)
        assert sum(got.values()) <= budget
        assert all(got[p] <= ceilings[p] for p in pools)
