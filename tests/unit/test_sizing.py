"""Demand-driven sizing wired in: instances record what they are asked for
(served or refused), the leader forecasts from it and builds demand-sized
pools to their target within the AZ's budget, every target change is an
event, and explain, the API, the CLI's client and the pools summary show
it. Injected clock throughout."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import ManualClock
from warmcache.config import DemandConfig
from warmcache.demand.budgets import Budget, CostBudget, VcpuBudget, VmBudget
from warmcache.demand.forecast import HOUR_S, Chunk, PoolHistory
from warmcache.demand.ledger import DemandLedger
from warmcache.demand.records import DemandRecords
from warmcache.demand.sizing import size_az
from warmcache.errors import InvalidRequest, NoCapacity, StoreUnavailable
from warmcache.layout import Keys
from warmcache.model import BuildRule, Flavor, Tiers
from warmcache.ports import CoordinationStore
from warmcache.service import WarmCache
from warmcache.web import create_app

KEYS = Keys("wc")
DEMAND = DemandConfig(bin_s=60, refresh_s=0, lookback_s=HOUR_S, build_s=30)


def chunks(store: CoordinationStore, az: str = "az1") -> dict[str, list[Chunk]]:
    return DemandRecords(store, KEYS).chunks(az)[0]


def rule(**kw: Any) -> BuildRule:
    return BuildRule.model_validate(
        {"max_instance_per_cycle": 20, "total_instances": 20, "sizing": "demand", **kw}
    )


# --- the ledger --------------------------------------------------------------------------


def test_the_ledger_writes_one_chunk_per_pool_and_hour_and_adds_up(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    clock.advance(-clock.now() + 10 * HOUR_S)  # a round hour
    ledger = DemandLedger(sqlite_store, KEYS, clock, "wc-1", bin_s=60, keep_h=48)
    ledger.record("az1", "small", 3)
    ledger.record("az1", "small", 1)
    ledger.record("az1", "large", 2)
    assert ledger.flush() == 2 and ledger.pending == 0
    clock.advance(90)
    ledger.record("az1", "small", 5)
    ledger.flush()
    small = chunks(sqlite_store)["small"]
    assert len(small) == 1 and small[0].counts[:2] == [4, 5]
    assert small[0].sizes == Counter({3: 1, 1: 1, 5: 1})
    # a restarted instance of the same name continues its chunk
    again = DemandLedger(sqlite_store, KEYS, clock, "wc-1", bin_s=60, keep_h=48)
    again.record("az1", "small", 2)
    again.flush()
    assert chunks(sqlite_store)["small"][0].sizes == Counter({3: 1, 1: 1, 5: 1, 2: 1})
    # another instance writes its own key; the next hour is a new chunk
    other = DemandLedger(sqlite_store, KEYS, clock, "wc-2", bin_s=60, keep_h=48)
    other.record("az1", "small", 7)
    clock.advance(HOUR_S)
    other.record("az1", "small", 1)
    other.flush()
    history = PoolHistory.of(chunks(sqlite_store)["small"], 60)
    assert len(chunks(sqlite_store)["small"]) == 3 and sorted(history.chunks) == [
        10 * HOUR_S,
        11 * HOUR_S,
    ]
    assert sum(history.chunks[10 * HOUR_S].sizes.values()) == 5


class DownStore(SqliteStore):
    down = False

    def put(self, key: str, value: str, session: str | None = None) -> int:
        if self.down:
            raise StoreUnavailable("sqlite", "down for the test")
        return super().put(key, value, session)


def test_a_flush_that_fails_keeps_its_counts_for_the_next(
    tmp_path: Any, clock: ManualClock
) -> None:
    store = DownStore(tmp_path / "down.db", clock=clock)
    try:
        ledger = DemandLedger(store, KEYS, clock, "wc-1", bin_s=60, keep_h=48)
        ledger.record("az1", "small", 3)
        store.down = True
        assert ledger.flush() == 0 and ledger.pending == 1
        ledger.record("az1", "small", 2)
        store.down = False
        assert ledger.flush() == 1
        (chunk,) = chunks(store)["small"]
        assert chunk.sizes == Counter({3: 1, 2: 1})
    finally:
        store.close()


def test_a_refused_named_claim_is_demand_once(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    ledger = DemandLedger(sqlite_store, KEYS, clock, "wc-1", bin_s=60, keep_h=48)
    for _ in range(5):
        ledger.record("az1", "small", 4, refused_claim="job-7")
    ledger.record("az1", "small", 4)
    ledger.flush()
    assert chunks(sqlite_store)["small"][0].sizes == Counter({4: 2})


def test_acquisitions_served_and_refused_are_recorded(
    make_service: Callable[..., WarmCache],
) -> None:
    svc = make_service()
    svc.rules.put("az1", "small", {"max_instance_per_cycle": 3, "total_instances": 3})
    svc.run_cycle()
    svc.acquire("small", "az1", 2, "best-effort")
    with pytest.raises(NoCapacity):
        svc.acquire("small", "az1", 5, "best-effort")
    with pytest.raises(InvalidRequest):
        svc.acquire("small", "az1", 0, "best-effort")  # not demand: never reached the pool
    svc.stop()  # flushes what it was asked for
    (chunk,) = chunks(svc.store)["small"]
    assert chunk.sizes == Counter({2: 1, 5: 1}) and chunk.vms == 7


# --- sizing, pure ------------------------------------------------------------------------

SMALL = Flavor(name="small", vcpus=2, memory_mib=4096, disk_gib=20)
LARGE = Flavor(name="large", vcpus=8, memory_mib=32768, disk_gib=80)
FLAVORS = {"small": SMALL, "large": LARGE}
NOW = 100 * HOUR_S


def steady(size: int, per_min: int = 1) -> PoolHistory:
    """The last hour: ``per_min`` requests of ``size`` VMs a minute."""
    c = Chunk.empty(NOW - HOUR_S, 60)
    for i in range(60):
        for _ in range(per_min):
            c.record(NOW - HOUR_S + i * 60 + 1, size)
    return PoolHistory.of([c], 60)


def sizes(
    rules: dict[str, BuildRule], histories: dict[str, PoolHistory], budget: Budget | None = None
) -> dict[str, int]:
    got = size_az(
        rules,
        FLAVORS,
        histories,
        {},
        dict.fromkeys(rules, 0.0),
        budget,
        NOW,
        bin_s=60,
        lookback_s=HOUR_S,
        cycle_interval_s=60,
    )
    return {f: s.target for f, s in got.items()}


def test_a_demand_pool_asks_for_its_horizon_demand_within_floor_and_ceiling() -> None:
    h = {"small": steady(2)}  # 2 VMs a minute; horizon 60 s
    assert sizes({"small": rule(demand_margin=1)}, h) == {"small": 3}
    assert sizes({"small": rule(demand_margin=0, total_instances=1)}, h) == {"small": 1}
    assert sizes({"small": rule(min_instances=5)}, h) == {"small": 5}
    assert sizes({"small": rule(min_instances=2)}, {}) == {"small": 2}  # no history: floor
    assert sizes({"small": rule(enabled=False, min_instances=2)}, h) == {"small": 0}


def test_a_budget_goes_to_the_pool_whose_requests_it_serves() -> None:
    """Budget 6: small gets requests of 1 (one VM saves 60 misses an hour),
    large requests of 5 (five VMs save 60); both fit (1 + 5 = 6)."""
    rules = {"small": rule(demand_margin=0), "large": rule(demand_margin=0)}
    h = {"small": steady(1), "large": steady(5)}
    assert sizes(rules, h, VmBudget(vms=6)) == {"small": 1, "large": 5}
    assert sizes(rules, h, VmBudget(vms=5)) == {"small": 1, "large": 0}  # 4 serve none of large's
    # in vCPUs: small costs 2 a VM, large 8: the same misses saved for 2 or 40 vCPUs
    assert sizes(rules, h, VcpuBudget(vcpus=41)) == {"small": 1, "large": 0}
    assert sizes(rules, h, VcpuBudget(vcpus=42)) == {"small": 1, "large": 5}
    assert sizes(rules, h, VcpuBudget(vcpus=40)) == {"small": 1, "large": 0}


def test_static_pools_take_their_total_from_the_budget_first() -> None:
    rules = {"small": rule(), "large": BuildRule(max_instance_per_cycle=3, total_instances=3)}
    h = {"small": steady(1, per_min=3)}
    assert sizes(rules, h, VmBudget(vms=5)) == {"small": 2, "large": 3}
    assert sizes(rules, h, None) == {"small": 4, "large": 3}  # 3 a minute + margin 1


# --- sizing in the cycle -----------------------------------------------------------------


def test_the_leader_builds_a_demand_pool_to_its_forecast_and_says_so(
    make_service: Callable[..., WarmCache], clock: ManualClock
) -> None:
    svc = make_service(demand=DEMAND, cycle_interval_s=60)

    def changes() -> list[dict[str, Any]]:
        return [dict(e.fields) for e in reversed(svc.events.recent(100, "pool.target"))]

    svc.rules.put(
        "az1",
        "small",
        {
            "max_instance_per_cycle": 20,
            "total_instances": 12,
            "sizing": "demand",
            "min_instances": 1,
            "demand_quantile": 1.0,
            "demand_margin": 0,
        },
    )
    svc.run_cycle()
    assert svc.pools()[0].target == 1 and svc.pools()[0].ready == 1  # no history: the floor
    # ten minutes of requests for 3 VMs: the pool is too small, all refused
    for _ in range(10):
        with pytest.raises(NoCapacity):
            svc.acquire("small", "az1", 3, "best-effort")
        clock.advance(60)
    svc.run_cycle()
    summary = svc.pools()[0]
    assert summary.target == 3 and summary.ready == 3
    assert [(c["previous"], c["target"]) for c in changes()] == [(None, 1), (1, 3)]
    explained = svc.explain("az1", "small")["sizing"]
    assert isinstance(explained, dict)
    assert explained["sizing"] == "demand" and explained["target"] == 3
    assert explained["forecast"]["window_at_quantile"] == 3
    svc.run_cycle()  # nothing changed: no event
    assert len(changes()) == 2
    # the rule goes back to static: its stored target goes
    svc.rules.put("az1", "small", {"max_instance_per_cycle": 5, "total_instances": 5})
    svc.run_cycle()
    svc.acquirer.targets.catch_up()
    assert svc.acquirer.targets.get("az1", "small") is None and svc.pools()[0].target == 5


def test_the_budget_holds_across_pools_in_a_cycle(
    make_service: Callable[..., WarmCache], clock: ManualClock
) -> None:
    svc = make_service(demand=DEMAND.model_copy(update={"build_s": 1.0}), cycle_interval_s=60)
    for f in ("small", "medium"):
        svc.rules.put("az1", f, rule(total_instances=10, demand_margin=0).model_dump())
    svc.budgets.put("az1", {"vms": 4})
    ledger = svc.acquirer.ledger
    for i in range(30):
        ledger.record("az1", "small", 1)  # many small requests
        if i % 10 == 0:
            ledger.record("az1", "medium", 3)  # a few of 3
        clock.advance(60)
    svc.run_cycle()
    got = {p.flavor: p for p in svc.pools()}
    # one small VM serves all 30 small requests, three medium VMs the 3 of
    # medium: both fit in 4 (with builds this fast, nothing drains a pool)
    assert got["small"].target == 1 and got["medium"].target == 3
    assert got["small"].ready + got["medium"].ready == 4


def test_the_leader_deletes_demand_history_past_keep_h(
    make_service: Callable[..., WarmCache], clock: ManualClock
) -> None:
    svc = make_service(demand=DemandConfig(keep_h=2, refresh_s=0), cycle_interval_s=60)
    svc.rules.put("az1", "small", rule().model_dump())
    svc.acquirer.ledger.record("az1", "small", 1)
    svc.acquirer.ledger.flush()
    svc.run_cycle()
    assert len(chunks(svc.store)["small"]) == 1
    clock.advance(3 * HOUR_S)
    svc.run_cycle()
    assert chunks(svc.store) == {}


def test_history_past_keep_h_goes_in_an_az_of_static_pools_too(
    make_service: Callable[..., WarmCache], clock: ManualClock
) -> None:
    """Issue 28, item 8: an AZ with only static pools never pruned its
    demand history (a 72-hour-old chunk survived 50 cycles)."""
    svc = make_service(demand=DemandConfig(keep_h=2, refresh_s=0), cycle_interval_s=60)
    svc.rules.put("az1", "small", {"max_instance_per_cycle": 2, "total_instances": 2})
    svc.acquirer.ledger.record("az1", "small", 1)  # every pool's demand is recorded
    svc.acquirer.ledger.flush()
    svc.run_cycle()
    assert len(chunks(svc.store)["small"]) == 1
    clock.advance(3 * HOUR_S)
    svc.run_cycle()
    assert chunks(svc.store) == {}


def test_low_water_and_the_pools_summary_use_the_target(
    make_service: Callable[..., WarmCache],
) -> None:
    svc = make_service(demand=DEMAND, low_water_ratio=0.0)
    svc.rules.put(
        "az1", "small", rule(total_instances=10, min_instances=4, low_water_ratio=1.0).model_dump()
    )
    svc.run_cycle()
    assert svc.pools()[0].target == 4 and not svc.cycle_pending
    svc.acquire("small", "az1", 1, "best-effort")
    assert svc.cycle_pending  # 3 left < 1.0 x target 4 (the rule's total is 10)


# --- the API and the client --------------------------------------------------------------


def test_budgets_over_http_are_validated_and_a_bad_one_changes_nothing(
    service: WarmCache,
) -> None:
    web = create_app(service).test_client()
    assert web.get("/v1/budgets").get_json() == {"budgets": []}
    assert web.get("/v1/budgets/az1").status_code == 404
    ok = web.put("/v1/budgets/az1", json={"vms": 40})
    forty = {"vms": 40}
    assert ok.status_code == 200 and ok.get_json() == {"az": "az1", "budget": forty}
    bad_ones: tuple[dict[str, object], ...] = (
        {"vms": 4, "vcpus": 8},
        {},
        {"vms": -1},
        {"vms": "4"},
        {"gpus": 2},
        {"cost": -1},
        {"cost": 2, "vms": 2},
        {"cost": "NaN"},
    )
    for bad in bad_ones:
        reply = web.put("/v1/budgets/az1", json=bad)
        assert reply.status_code == 400 and reply.get_json()["error"] == "invalid_request", bad
    assert web.put("/v1/budgets/bad%20az", json={"vms": 1}).status_code == 400
    assert web.get("/v1/budgets/az1").get_json()["budget"] == forty
    gone = web.delete("/v1/budgets/az1")
    assert gone.status_code == 200 and gone.get_json()["budget"] == forty
    assert web.delete("/v1/budgets/az1").status_code == 404
    in_cost = web.put("/v1/budgets/az1", json={"cost": 12.5})  # cost units per hour
    assert in_cost.status_code == 200 and in_cost.get_json()["budget"] == {"cost": 12.5}


def test_explain_over_http_shows_how_the_target_was_set(service: WarmCache) -> None:
    service.rules.put("az1", "small", {"max_instance_per_cycle": 2, "total_instances": 2})
    web = create_app(service).test_client()
    body = web.get("/v1/explain/az1/small").get_json()
    assert body["sizing"]["sizing"] == "static" and body["sizing"]["target"] == 2
    service.rules.put("az1", "small", rule(min_instances=1).model_dump())
    service.budgets.put("az1", {"vcpus": 16})
    body = web.get("/v1/explain/az1/small").get_json()
    sizing = body["sizing"]
    assert sizing["sizing"] == "demand" and sizing["target"] == 1
    assert sizing["budget"] == {"unit": "vcpus", "total": 16, "share": 2}
    assert sizing["history"]["hours"] == 0 and sizing["forecast"]["windows"] == 0


def test_a_rule_with_a_floor_above_its_ceiling_is_refused(service: WarmCache) -> None:
    from warmcache.errors import InvalidRule

    with pytest.raises(InvalidRule) as refused:
        service.rules.put(
            "az1", "small", rule(total_instances=3).model_dump() | {"min_instances": 4}
        )
    assert "min_instances (4) exceeds total_instances (3)" in str(refused.value.errors)
    assert service.rules.get("az1", "small") is None  # nothing stored


# --- objective pools (issue 29) ---------------------------------------------------------


def test_an_objective_pool_gets_the_cheapest_mix_and_explains_it(
    make_service: Callable[..., WarmCache], clock: ManualClock
) -> None:
    """A request for 2 VMs a minute, builds of 1 s: 3 VMs serve 99% (2 would
    miss the ones that find the last refill still building). A p99 of
    1,000 ms allows saved VMs (1,000 ms to restore): all saved, at a
    fiftieth of what running ones cost; a p99 of 200 ms makes them paused;
    the leader builds and parks that mix."""
    svc = make_service(demand=DEMAND.model_copy(update={"build_s": 1.0}), cycle_interval_s=60)
    objective = {"served_at_once": 0.99, "p99_acquire_ms": 1000}
    svc.rules.put("az1", "small", rule(total_instances=10, objective=objective).model_dump())
    for _ in range(30):
        svc.acquirer.ledger.record("az1", "small", 2)
        clock.advance(60)
    svc.run_cycle()
    [summary] = svc.pools()
    assert summary.target == 3 and summary.standby == {"saved": 3}
    web = create_app(svc).test_client()
    explained = web.get("/v1/explain/az1/small").get_json()["sizing"]["objective"]
    assert explained["served_at_once"] == 0.99 and explained["p99_acquire_ms"] == 1000
    chosen = explained["chosen"]  # as the pool stands now (its builds were measured)
    n = chosen["mix"]["saved"]
    assert chosen["mix"] == {"running": 0, "paused": 0, "saved": n} and n >= 2
    assert chosen["served_at_once"] >= 0.99 and explained["objective_reachable"]
    weighed = {json.dumps(a["mix"], sort_keys=True): a for a in explained["alternatives"]}
    running = weighed[json.dumps({"paused": 0, "running": n, "saved": 0}, sort_keys=True)]
    assert running["cost_per_h"] == n > chosen["cost_per_h"] == round(n * 0.02, 4)
    event = svc.events.recent(5, "pool.target")[0].fields
    assert event["tiers"] == {"running": 0, "paused": 0, "saved": 3}
    objective["p99_acquire_ms"] = 200
    svc.rules.put("az1", "small", rule(total_instances=10, objective=objective).model_dump())
    svc.run_cycle()
    # paused now; and its builds, measured at 0 s, make 2 enough: the third
    # waits saved, the cheapest, until it retires
    assert svc.pools()[0].standby == {"paused": 2, "saved": 1}
    assert len(svc.acquire("small", "az1", 2, "best-effort")) == 2


def test_a_cost_budget_scales_objective_pools_down_and_says_the_objective_is_missed() -> None:
    """Requests of 1 VM twice a minute, builds of 60 s: 7 VMs serve 99%; a
    p99 of 50 ms keeps them running. A budget of 3 cost units buys 3."""
    objective = {"served_at_once": 0.99, "p99_acquire_ms": 50}  # running VMs only

    def sized(budget: Budget | None) -> Any:
        return size_az(
            {"small": rule(objective=objective)}, FLAVORS, {"small": steady(1, per_min=2)}, {},
            {"small": 60.0}, budget, NOW, bin_s=60, lookback_s=HOUR_S, cycle_interval_s=60,
        )["small"]  # fmt: skip

    free = sized(None)
    assert free.tiers == Tiers(running=7) and free.mix.reachable
    got = sized(CostBudget(cost=3))
    assert got.target == 3 and got.tiers == Tiers(running=3)  # 3 cost units: 3 running
    assert got.mix is not None and not got.mix.reachable
    assert got.explain(NOW, HOUR_S)["budget"] == {"unit": "cost", "total": 3.0, "share": 3.0}


def test_objective_pools_over_a_budget_share_it_by_what_a_vm_serves() -> None:
    """Two running-only objective pools asking 5 and 16 VMs: 6 cost units
    go where they serve (requests of 1 VM), none to requests of 5 that 6
    VMs could serve only rarely; 12 fund part of both; never over."""
    objective = {"served_at_once": 0.99, "p99_acquire_ms": 50}
    rules = {"small": rule(objective=objective), "large": rule(objective=objective)}
    h = {"small": steady(1), "large": steady(5)}

    def sized(cost: float) -> dict[str, Any]:
        return size_az(
            rules, FLAVORS, h, {}, {"small": 60.0, "large": 60.0}, CostBudget(cost=cost), NOW,
            bin_s=60, lookback_s=HOUR_S, cycle_interval_s=60,
        )  # fmt: skip

    six = sized(6)
    assert six["small"].tiers == Tiers(running=5) and six["large"].target == 0
    twelve = sized(12)
    assert twelve["large"].target > 0 and twelve["small"].target > 0
    for got, budget in ((six, 600), (twelve, 1200)):
        assert sum(p.share for p in got.values()) <= budget
