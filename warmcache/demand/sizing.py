"""Pool targets for a cycle (issue 17): static pools keep their rule's
``total_instances``; demand-sized pools get what their forecast asks for
(``warmcache.demand``), within the AZ's budget when it has one.

``size_az`` is the pure part: rules, demand histories, what each pool
holds and its measured build time in; a ``PoolSizing`` per pool out, which
also explains itself (``warmcache explain``). ``Sizer`` is the leader's
side: it reads the AZ's demand chunks (at most every ``demand.refresh_s``,
after writing its own instance's), the budget, and persists each changed
target with a fenced write and a ``pool.target`` event, so every instance
(``acquire.targets.TargetView``) measures its low water against it. Old
chunks (past ``demand.keep_h``) are deleted here.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from warmcache.config import CostConfig, DemandConfig
from warmcache.demand.budgets import COST_SCALE, Budget, BudgetBook
from warmcache.demand.forecast import HOUR_S, Ask, Forecast, PoolHistory, forecast, split, target
from warmcache.demand.ledger import DemandLedger
from warmcache.demand.records import DemandRecords
from warmcache.demand.targets import TargetView, target_value
from warmcache.layout import Keys
from warmcache.leader.election import FencedWriter
from warmcache.model import (
    HELD_STATES,
    POOLED_STATES,
    STANDBY_TIERS,
    BuildRule,
    Flavor,
    Objective,
    PoolInstance,
    Tiers,
)
from warmcache.objective import Mix, TierCosts, choose
from warmcache.ports import Clock, CoordinationStore
from warmcache.schedules import Schedule
from warmcache.schedules import floor as floor_of

log = logging.getLogger(__name__)
RECENT_BINS_SHOWN = 12


@dataclass(frozen=True)
class PoolSizing:
    flavor: str
    sizing: str  # static | demand
    target: int
    held: int  # ready + reserved + building (+ parking) now
    floor: int = 0
    ceiling: int = 0
    own: int = 0  # what the forecast asks for, before the budget
    horizon_s: float = 0.0
    build_s: float = 0.0
    forecast: Forecast | None = None
    history: PoolHistory | None = None
    quantile: float = 0.0
    margin: int = 0
    cost: int = 1  # budget units per VM
    budget: Budget | None = None  # the AZ's, when it has one
    objective: Objective | None = None
    mix: Mix | None = None  # the objective's choice, and what else it weighed
    tier_units: tuple[int, int, int] = (1, 1, 1)  # budget units per VM of each tier
    scheduled: int = 0  # running VMs a due [[schedules]] window holds at least

    @property
    def tiers(self) -> Tiers | None:
        return None if self.mix is None else self.mix.chosen.mix

    @property
    def share(self) -> int | None:
        """Budget units this pool's target takes (None: no budget)."""
        if self.budget is None:
            return None
        if self.tiers is not None:
            return _units(self.tiers, self.tier_units)
        return self.target * self.cost

    def explain(self, now: float, lookback_s: float) -> dict[str, object]:
        budget = self.budget
        out: dict[str, object] = {"sizing": self.sizing, "target": self.target, "held": self.held}
        if self.sizing != "demand":
            out["ceiling"] = self.target
            out["budget"] = _budget_part(budget, self.share)
            return out
        fc, history = self.forecast, self.history
        assert fc is not None and history is not None
        recent = history.bins(now - lookback_s, now)
        out.update(
            floor=self.floor,
            ceiling=self.ceiling,
            own_target=self.own,
            quantile=self.quantile,
            margin=self.margin,
            horizon_s=round(self.horizon_s, 3),
            build_s=round(self.build_s, 3),
            history={
                "bin_s": history.bin_s,
                "since": history.since,
                "hours": len(history.chunks),
                "recent_vms": sum(recent),
                "recent_bins": recent[-RECENT_BINS_SHOWN:],
            },
            forecast={
                "windows": len(fc.windows),
                "seasonal": fc.seasonal,
                "rate_per_h": round(fc.rate_per_h, 3),
                "window_p50": fc.window_quantile(0.5),
                "window_at_quantile": fc.window_quantile(self.quantile),
                "requests": fc.requests,
                "request_hours": round(fc.hours, 3),
                "need_shift": fc.shift,
                "need_at_quantile": fc.need_quantile(self.quantile),
                "misses_per_h_at_target": round(fc.misses_per_h(self.target), 3),
            },
            budget=_budget_part(budget, self.share),
        )
        if self.scheduled:
            out["scheduled_floor"] = self.scheduled
        if self.objective is not None and self.mix is not None:
            out["objective"] = {
                **self.objective.model_dump(),
                **self.mix.as_dict(),
            }
        return out


def _budget_part(budget: Budget | None, share: int | None) -> dict[str, object] | None:
    if budget is None or share is None:
        return None
    if budget.unit == "cost":
        return {"unit": "cost", "total": budget.amount / COST_SCALE, "share": share / COST_SCALE}
    return {"unit": budget.unit, "total": budget.amount, "share": share}


def _units(mix: Tiers, per_vm: tuple[int, int, int]) -> int:
    return mix.running * per_vm[0] + mix.paused * per_vm[1] + mix.saved * per_vm[2]


def tier_units(
    budget: Budget | None, flavor: Flavor | None, costs: TierCosts
) -> tuple[int, int, int]:
    """Budget units one VM of each tier takes: 1 (VMs), its vCPUs, or its
    tier's weight (cost, in hundredths)."""
    if budget is not None and budget.unit == "cost":
        w = [max(1, round(x * COST_SCALE)) for x in costs.weight]
        return w[0], w[1], w[2]
    each = 1 if budget is None or budget.unit == "vms" or flavor is None else flavor.vcpus
    return each, each, each


def held_and_build_times(
    records: Sequence[PoolInstance],
) -> tuple[dict[str, int], dict[str, float]]:
    """In one pass over an AZ's records: VMs each pool holds (ready,
    reserved, building, parking), and the median build time of its VMs that
    have one (ready or reserved, with ``created_at`` and ``ready_at``)."""
    held: dict[str, int] = defaultdict(int)
    times: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.state in POOLED_STATES:
            held[r.flavor] += 1
        if (
            r.state in HELD_STATES
            and r.ready_at is not None
            and r.created_at is not None
            and r.ready_at >= r.created_at
        ):
            times[r.flavor].append(r.ready_at - r.created_at)
    return dict(held), {f: statistics.median(t) for f, t in times.items()}


def size_az(
    rules: Mapping[str, BuildRule],
    flavors: Mapping[str, Flavor],
    histories: Mapping[str, PoolHistory],
    held: Mapping[str, int],
    build_s: Mapping[str, float],
    budget: Budget | None,
    now: float,
    *,
    bin_s: float,
    lookback_s: float,
    cycle_interval_s: float,
    forecasts: dict[tuple[str, float], Forecast] | None = None,
    costs: TierCosts | None = None,
    schedules: Sequence[Schedule] = (),
    az: str = "",
) -> dict[str, PoolSizing]:
    """Every pool's target in one AZ. Static pools are their rule's total
    (and take it from the budget first); objective pools, the cheapest tier
    mix that meets their objective (``warmcache.objective``), next, scaled
    down together when the budget cannot fund them all; demand pools, the
    forecast's ask within their floor and ceiling, then the budget's split
    of what is left. ``forecasts``: a cache by (flavor, build time) the
    caller keeps while ``histories`` and ``now`` are the same for its
    purpose. ``schedules`` due within a pool's horizon raise its running
    VMs to their floor (``warmcache.schedules``), budget or not."""
    costs = costs or TierCosts.of(CostConfig())
    out: dict[str, PoolSizing] = {}
    asks: dict[str, Ask] = {}
    fixed = 0
    for name, rule in sorted(rules.items()):
        flavor = flavors.get(name)
        units = tier_units(budget, flavor, costs)
        tier = STANDBY_TIERS.index(rule.standby)
        cost = units[tier]
        if rule.sizing != "demand" or flavor is None:
            out[name] = PoolSizing(
                name, rule.sizing, rule.total_instances, held.get(name, 0), cost=cost, budget=budget
            )
            if rule.enabled:
                fixed += _units(rule.tier_targets(), units)
            continue
        history = histories.get(name) or PoolHistory(bin_s, {})
        build = build_s[name]
        horizon = build + cycle_interval_s
        fc = forecasts.get((name, build)) if forecasts is not None else None
        if fc is None:
            fc = forecast(history, now, horizon, build, lookback_s)
            if forecasts is not None:
                forecasts[(name, build)] = fc
        ceiling = rule.total_instances if rule.enabled else 0
        scheduled = min(ceiling, floor_of(schedules, az, name, now, horizon))
        mix: Mix | None = None
        if rule.objective is not None:
            rate = fc.requests / fc.hours if fc.hours > 0 else 0.0
            mix = choose(
                fc.curve(), rate, rule.objective, costs, min(rule.min_instances, ceiling), ceiling
            )
            if mix.chosen.mix.running < scheduled:
                mix = _raised(mix, scheduled, ceiling)
            own = mix.chosen.mix.total
        else:
            own = target(fc, rule.demand_quantile, rule.demand_margin, rule.min_instances, ceiling)
            own = max(own, scheduled)
        out[name] = PoolSizing(
            name,
            "demand",
            own,
            held.get(name, 0),
            floor=max(min(rule.min_instances, ceiling), scheduled),
            ceiling=ceiling,
            own=own,
            horizon_s=horizon,
            build_s=build,
            forecast=fc,
            history=history,
            quantile=rule.demand_quantile,
            margin=rule.demand_margin,
            cost=cost,
            budget=budget,
            objective=rule.objective,
            mix=mix,
            tier_units=units,
            scheduled=scheduled,
        )
        if mix is None:
            asks[name] = Ask(
                held.get(name, 0), max(min(rule.min_instances, own), scheduled), own, cost, fc
            )
    objective = [n for n, p in out.items() if p.mix is not None]
    if budget is not None and objective:
        asked = sum(out[n].share or 0 for n in objective)
        if fixed + asked <= budget.amount:
            fixed += asked  # every objective pool's mix is funded
        else:
            # Not all fit: objective pools join the split, each VM priced at
            # its mix's average, and get the cheapest mix of what they are
            # given (their objective then out of reach, and explained so).
            for n in objective:
                p = out[n]
                assert p.forecast is not None and p.tiers is not None
                per_vm = max(1, -(-(p.share or 0) // max(1, p.tiers.total)))
                asks[n] = Ask(held.get(n, 0), min(p.floor, p.target), p.target, per_vm, p.forecast)
    if budget is not None and asks:
        shares = split(budget.amount, asks, fixed)
        for name, got in shares.items():
            if out[name].mix is not None:
                out[name] = _reshaped(out[name], got, costs)
            else:
                out[name] = dataclasses.replace(out[name], target=got)
    return out


def _reshaped(p: PoolSizing, total: int, costs: TierCosts) -> PoolSizing:
    """An objective pool given ``total`` VMs at its mix's average price by
    the budget's split: the cheapest mix of the largest pool (at most
    ``total`` VMs) whose units stay within what it was given (a smaller mix
    may keep more of its VMs in the dearer fast tiers). Unchanged when it
    got all it asked."""
    assert p.forecast is not None and p.objective is not None and p.mix is not None
    asked = p.mix.chosen.mix.total
    if total >= asked:
        return p
    per_vm = max(1, -(-(p.share or 0) // max(1, asked)))
    allowance = total * per_vm
    fc, objective = p.forecast, p.objective
    rate = fc.requests / fc.hours if fc.hours > 0 else 0.0
    curve = fc.curve()

    def mix_at(ceiling: int) -> Mix:
        return choose(curve, rate, objective, costs, min(p.floor, ceiling), ceiling)

    lo, hi = 0, total
    best = mix_at(0)
    while lo <= hi:  # the units of the chosen mix grow with the ceiling
        mid = (lo + hi) // 2
        got = mix_at(mid)
        if _units(got.chosen.mix, p.tier_units) <= allowance:
            best, lo = got, mid + 1
        else:
            hi = mid - 1
    return dataclasses.replace(p, target=best.chosen.mix.total, mix=best)


def _raised(mix: Mix, running: int, ceiling: int) -> Mix:
    """The chosen mix with at least ``running`` running VMs (a scheduled
    floor): its slower VMs woken first, then more, within the ceiling."""
    chosen = mix.chosen.mix
    add = running - chosen.running
    paused = max(0, chosen.paused - add)
    add -= chosen.paused - paused
    saved = max(0, chosen.saved - add)
    add -= chosen.saved - saved
    total = min(ceiling, running + paused + saved)
    raised = Tiers(running=running, paused=paused, saved=max(0, total - running - paused))
    return dataclasses.replace(mix, chosen=dataclasses.replace(mix.chosen, mix=raised))


class Sizer:
    def __init__(
        self,
        store: CoordinationStore,
        keys: Keys,
        clock: Clock,
        config: DemandConfig,
        *,
        cycle_interval_s: float,
        ledger: DemandLedger | None,
        targets: TargetView,
        emit: Callable[..., None],
        costs: CostConfig | None = None,
        schedules: Sequence[Schedule] = (),
    ) -> None:
        self._costs = TierCosts.of(costs or CostConfig())
        self._schedules = tuple(schedules)
        self._store = store
        self._keys = keys
        self._clock = clock
        self._config = config
        self._cycle_interval_s = cycle_interval_s
        self._ledger = ledger
        self._targets = targets
        self._emit = emit
        self._budgets = BudgetBook(store, keys)
        # az -> (read at, demand by flavor, forecasts made from it)
        self._histories: dict[
            str, tuple[float, dict[str, PoolHistory], dict[tuple[str, float], Forecast]]
        ] = {}
        self._build_s: dict[tuple[str, str], float] = {}
        self._pruned_at: dict[str, float] = {}  # AZs without demand pools: last prune

    def size(
        self,
        az: str,
        rules: Mapping[str, BuildRule],
        flavors: Mapping[str, Flavor],
        records: Sequence[PoolInstance],
        writer: FencedWriter | None = None,
    ) -> dict[str, PoolSizing]:
        """Every pool's sizing now. With ``writer`` (the leader): re-read
        history when due, delete chunks past ``keep_h``."""
        now = self._clock.now()
        demand = [f for f, r in rules.items() if r.sizing == "demand"]
        histories = self.histories(az, now, writer) if demand else {}
        forecasts = self._histories[az][2] if demand else None
        held, measured = held_and_build_times(records)
        build_s = {}
        for f in demand:
            if f in measured:
                self._build_s[(az, f)] = measured[f]  # kept while a drained pool has none
            build_s[f] = self._build_s.get((az, f), self._config.build_s)
        budget = self._budgets.get(az) if demand else None
        return size_az(
            rules,
            flavors,
            histories,
            held,
            build_s,
            budget,
            now,
            bin_s=self._config.bin_s,
            lookback_s=self._config.lookback_s,
            cycle_interval_s=self._cycle_interval_s,
            forecasts=forecasts,
            costs=self._costs,
            schedules=self._schedules,
            az=az,
        )

    def apply(
        self,
        az: str,
        rules: Mapping[str, BuildRule],
        flavors: Mapping[str, Flavor],
        records: Sequence[PoolInstance],
        writer: FencedWriter,
    ) -> dict[str, BuildRule]:
        """The rules as this cycle builds them (a demand pool's total is its
        target); changed targets written (fenced) with a ``pool.target``
        event each, targets of pools no longer demand-sized deleted."""
        self._targets.catch_up()
        demand = {f for f, r in rules.items() if r.sizing == "demand"}
        for f in rules:
            if f not in demand and self._targets.get(az, f) is not None:
                writer.delete(self._keys.target(az, f))
        if not demand:
            self._prune(az, writer)  # history the AZ's pools once recorded
            return dict(rules)
        sizes = self.size(az, rules, flavors, records, writer)
        out = dict(rules)
        now = self._clock.now()
        for f in sorted(demand):
            s = sizes[f]
            out[f] = rules[f].sized(s.target, s.tiers)
            found = self._targets.target(az, f)
            before = None if found is None else found.total
            if found == (s.target, s.tiers):
                continue
            share = s.share
            writer.put(self._keys.target(az, f), target_value(s.target, s.own, share, now, s.tiers))
            fc = s.forecast
            assert fc is not None
            self._emit(
                "pool.target",
                az=az,
                flavor=f,
                target=s.target,
                previous=before,
                own=s.own,
                share=share,
                held=s.held,
                window_at_quantile=fc.window_quantile(s.quantile),
                need_at_quantile=fc.need_quantile(s.quantile),
                rate_per_h=round(fc.rate_per_h, 3),
                **({} if s.tiers is None else {"tiers": s.tiers.as_dict()}),
            )
        return out

    def _prune(self, az: str, writer: FencedWriter) -> None:
        """Chunks past ``keep_h`` go in an AZ with no demand pool too (every
        instance records what each pool is asked for, demand-sized or not),
        at most once an hour per AZ."""
        now = self._clock.now()
        if now - self._pruned_at.get(az, -HOUR_S) < HOUR_S:
            return
        self._pruned_at[az] = now
        _, keys, _ = DemandRecords(self._store, self._keys).chunks(az)
        oldest = now - self._config.keep_h * HOUR_S
        for key in keys:
            if DemandRecords.hour(key) + HOUR_S <= oldest:
                writer.delete(key)

    def histories(
        self, az: str, now: float, writer: FencedWriter | None = None
    ) -> dict[str, PoolHistory]:
        """The AZ's demand by flavor (this instance's own counts written
        first), re-read at most every ``demand.refresh_s``."""
        cached = self._histories.get(az)
        if cached is not None and 0 <= now - cached[0] < self._config.refresh_s:
            return cached[1]
        if self._ledger is not None:
            self._ledger.flush()
        chunks, keys, bad = DemandRecords(self._store, self._keys).chunks(az)
        for key in bad:
            log.warning("demand chunk %s does not parse: skipped", key)
        oldest = now - self._config.keep_h * HOUR_S
        if writer is not None:
            for key in keys:
                if DemandRecords.hour(key) + HOUR_S <= oldest:
                    writer.delete(key)
        histories = {
            f: PoolHistory.of((c for c in cs if c.start + HOUR_S > oldest), self._config.bin_s)
            for f, cs in chunks.items()
        }
        self._histories[az] = (now, histories, {})
        return histories

    def explain(
        self,
        az: str,
        flavor: str,
        rules: Mapping[str, BuildRule],
        flavors: Mapping[str, Flavor],
        records: Sequence[PoolInstance],
    ) -> dict[str, object]:
        sizes = self.size(az, rules, flavors, records)
        return sizes[flavor].explain(self._clock.now(), self._config.lookback_s)
