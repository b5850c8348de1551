"""Objective-driven tier mixes (issue 29): the cheapest pool that meets an
objective. Pure: a forecast's miss curve in, a ``Mix`` out.

A pool holds ``running``, ``paused`` and ``saved`` VMs; a request takes
running VMs first, then paused, then saved (woken inside the claim). From
the forecast (``warmcache.demand.Forecast``): the share of requests a pool
of ``n`` VMs misses, ``misses(n) / requests per hour``. So a mix

* serves at once the share ``1 - miss(r + p + s)``;
* has a 99th-percentile acquisition latency of the slowest tier a request
  reaches in 99% of cases: the first tier ``k`` (in the order they are
  taken) whose cumulative count leaves at most 1% of requests beyond it
  pays that tier's wake latency (or, past every tier, a cold build);
* costs ``sum(count x weight)`` per hour while it waits ([cost]).

The objective asks for a share served (``served_at_once``) and optionally
a latency (``p99_acquire_ms``). The smallest pool that serves the share
needs ``n`` VMs; the latency asks that the first ``m`` of them, those a
request reaches in 99% of cases, be in tiers that wake fast enough. So
the cheapest mix puts ``m`` VMs in the cheapest fast-enough tier and the
rest in the cheapest tier; ``choose`` weighs every such placement (and the
single-tier pools an operator would otherwise pick) and keeps the
cheapest that meets the objective. ``tests/unit/test_objective.py`` checks
against every mix of small pools that none it rejected is cheaper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from warmcache.config import CostConfig
from warmcache.model import STANDBY_TIERS, Objective, Tiers

P99 = 0.01  # the share of requests a 99th percentile leaves beyond it
COLD = float("inf")  # a request the pool cannot serve: a cold build


@dataclass(frozen=True)
class TierCosts:
    """Per tier (in ``STANDBY_TIERS`` order): cost units per idle VM-hour,
    and the latency (ms, p99) an acquisition reaching it pays."""

    weight: tuple[float, float, float]
    wake_ms: tuple[float, float, float]

    @classmethod
    def of(cls, config: CostConfig) -> TierCosts:
        w = [config.weight(t) for t in STANDBY_TIERS]
        ms = [config.wake_ms(t) for t in STANDBY_TIERS]
        return cls((w[0], w[1], w[2]), (ms[0], ms[1], ms[2]))

    def cost(self, mix: Tiers) -> float:
        return sum(n * w for n, w in zip(_counts(mix), self.weight, strict=True))


@dataclass(frozen=True)
class Outlook:
    """What a mix is expected to do and cost."""

    mix: Tiers
    served: float  # share of requests served from the pool at once
    p99_ms: float  # COLD when more than 1% of requests miss the pool
    cost_per_h: float  # weighted, while every VM waits
    meets: bool
    fast: float = 0.0  # share served at once within the objective's latency

    def as_dict(self) -> dict[str, object]:
        return {
            "mix": self.mix.as_dict(),
            "served_at_once": round(self.served, 5),
            "p99_acquire_ms": None if self.p99_ms == COLD else round(self.p99_ms, 1),
            "cost_per_h": round(self.cost_per_h, 4),
            "meets_objective": self.meets,
        }


@dataclass(frozen=True)
class Mix:
    """The chosen mix and what else was weighed."""

    chosen: Outlook
    alternatives: tuple[Outlook, ...]
    reachable: bool  # False: nothing within the ceiling meets the objective

    def as_dict(self) -> dict[str, object]:
        return {
            "chosen": self.chosen.as_dict(),
            "objective_reachable": self.reachable,
            "alternatives": [a.as_dict() for a in self.alternatives],
        }


def _counts(mix: Tiers) -> tuple[int, int, int]:
    return mix.running, mix.paused, mix.saved


def _mix(counts: Sequence[int]) -> Tiers:
    return Tiers(running=counts[0], paused=counts[1], saved=counts[2])


class Evaluator:
    """``outlook(mix)`` for one pool: its miss curve, its request rate."""

    def __init__(
        self,
        misses_per_h: Callable[[int], float],
        requests_per_h: float,
        objective: Objective,
        costs: TierCosts,
    ) -> None:
        self._misses = misses_per_h
        self._rate = requests_per_h
        self._objective = objective
        self._costs = costs
        self._memo: dict[int, float] = {}

    def miss(self, n: int) -> float:
        """The share of requests a pool of ``n`` VMs misses."""
        if self._rate <= 0:
            return 0.0
        got = self._memo.get(n)
        if got is None:
            got = self._memo[n] = min(1.0, max(0.0, self._misses(n) / self._rate))
        return got

    def p99_ms(self, mix: Tiers) -> float:
        held, slowest = 0, 0.0
        for count, wake in zip(_counts(mix), self._costs.wake_ms, strict=True):
            if count:
                held += count
                slowest = max(slowest, wake)
            if self.miss(held) <= P99 and held:
                return slowest
        return self._costs.wake_ms[0] if self.miss(0) <= P99 else COLD

    def outlook(self, mix: Tiers) -> Outlook:
        served = 1.0 - self.miss(mix.total)
        p99 = self.p99_ms(mix)
        want = self._objective
        meets = served >= want.served_at_once - 1e-12 and (
            want.p99_acquire_ms is None or p99 <= want.p99_acquire_ms
        )
        quick = sum(
            n
            for n, ms in zip(_counts(mix), self._costs.wake_ms, strict=True)
            if want.p99_acquire_ms is None or ms <= want.p99_acquire_ms
        )
        fast = 1.0 - self.miss(quick) if quick else 0.0
        return Outlook(mix, served, p99, self._costs.cost(mix), meets, fast)

    def smallest(self, share_missed: float, floor: int, ceiling: int) -> int | None:
        """The fewest VMs (within floor..ceiling) missing at most
        ``share_missed`` of requests; None when even the ceiling misses more.
        Misses never grow with the pool: a binary search."""
        if self.miss(ceiling) > share_missed + 1e-12:
            return None
        lo, hi = floor, ceiling
        while lo < hi:
            mid = (lo + hi) // 2
            if self.miss(mid) <= share_missed + 1e-12:
                hi = mid
            else:
                lo = mid + 1
        return lo


def choose(
    misses_per_h: Callable[[int], float],
    requests_per_h: float,
    objective: Objective,
    costs: TierCosts,
    floor: int,
    ceiling: int,
) -> Mix:
    """The cheapest mix of at most ``ceiling`` (at least ``floor``) VMs that
    meets ``objective``; when none does, the one serving the most requests
    within the objective's latency, then the most in all, then the
    cheapest."""
    floor = min(floor, ceiling)
    ev = Evaluator(misses_per_h, requests_per_h, objective, costs)
    n = ev.smallest(1.0 - objective.served_at_once, floor, ceiling)
    reachable = n is not None
    total = ceiling if n is None else n
    fast_tiers = [
        i
        for i, ms in enumerate(costs.wake_ms)
        if objective.p99_acquire_ms is None or ms <= objective.p99_acquire_ms
    ]
    m = 0
    if objective.p99_acquire_ms is not None:
        got = ev.smallest(P99, 0, ceiling)
        if got is None:
            reachable = False
            got = ceiling
        m = got
        total = max(total, m)
    outlooks = _weigh(ev, costs, fast_tiers, total, m)
    meeting = [o for o in outlooks if o.meets]
    if meeting:
        best = meeting[0]
    else:  # the most the ceiling can serve (fast enough first), the cheapest of that
        reachable = False
        outlooks = _weigh(ev, costs, fast_tiers, ceiling, ceiling)
        best = max(outlooks, key=lambda o: (o.fast, o.served, -o.cost_per_h))
    return Mix(best, tuple(o for o in outlooks if o is not best), reachable)


def _weigh(
    ev: Evaluator, costs: TierCosts, fast_tiers: list[int], total: int, m: int
) -> list[Outlook]:
    """Pools of ``total`` VMs: ``m`` in a fast-enough tier and the rest in
    any, for every pair; and each single-tier pool. Cheapest first."""
    candidates: dict[tuple[int, int, int], Outlook] = {}

    def weigh(counts: list[int]) -> None:
        key = (counts[0], counts[1], counts[2])
        if key not in candidates:
            candidates[key] = ev.outlook(_mix(counts))

    for fast in fast_tiers or [0]:
        for tail in range(len(STANDBY_TIERS)):
            counts = [0, 0, 0]
            counts[fast] += min(m, total)
            counts[tail] += total - min(m, total)
            weigh(counts)
    for tier in range(len(STANDBY_TIERS)):  # what a single-tier pool of that size does
        counts = [0, 0, 0]
        counts[tier] = total
        weigh(counts)
    return sorted(candidates.values(), key=lambda o: (o.cost_per_h, _counts(o.mix)))
