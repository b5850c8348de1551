"""Demand-driven pool sizing, the arithmetic: a pool's recent
acquisitions as counts per time bin, the demand they forecast over the next
build horizon, and a shared AZ budget split by the marginal value of one
more VM. Pure: no store, no clock (times are passed in); the leader keeps
the history and applies the targets.

* ``History``: VMs acquired per ``bin_s`` bin, the last ``keep`` bins
  (bounded: a week of 5-minute bins is 2,016 integers).
* ``forecast``: the distribution of demand over the horizon (the time a
  VM takes to build plus one cycle), as the sums of every window of that
  many bins in the history; with a day or more of history, only the
  windows starting within an hour of this time of day (seasonality by hour
  of day). The target is a quantile of it plus a margin.
* ``split``: one VM at a time to the pool whose demand is most likely to
  exceed what it has (the expected misses one more VM saves), after every
  pool's floor and never past its ceiling.

Not wired in yet (issue 17): no rule has ``sizing = "demand"``, the
leader keeps no history and ``bench/replay.py`` has no demand policy or
oracle; this is the arithmetic they will use, tested on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

DAY_S = 86_400.0


@dataclass
class History:
    bin_s: float = 300.0
    keep: int = 2016
    start: float = 0.0  # the start time of counts[0]
    counts: list[int] = field(default_factory=list)

    def record(self, at: float, n: int = 1) -> None:
        """``n`` VMs acquired at ``at`` (times before the history's start are dropped)."""
        if not self.counts:
            self.start = math.floor(at / self.bin_s) * self.bin_s
            self.counts = [0]
        index = int((at - self.start) // self.bin_s)
        if index < 0:
            return
        if index >= len(self.counts):
            self.counts.extend([0] * (index + 1 - len(self.counts)))
        self.counts[index] += n
        overflow = len(self.counts) - self.keep
        if overflow > 0:
            del self.counts[:overflow]
            self.start += overflow * self.bin_s

    def closed(self, now: float) -> list[int]:
        """Counts of the bins that ended by ``now`` (with empty bins up to it)."""
        if not self.counts:
            return []
        ended = int((now - self.start) // self.bin_s)
        counts = self.counts[: max(0, ended)]
        return counts + [0] * max(0, ended - len(self.counts))

    def as_dict(self) -> dict[str, object]:
        return {"bin_s": self.bin_s, "keep": self.keep, "start": self.start, "counts": self.counts}

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> History:
        counts = raw.get("counts", [])
        return cls(
            bin_s=float(raw.get("bin_s", 300.0)),  # type: ignore[arg-type]
            keep=int(raw.get("keep", 2016)),  # type: ignore[call-overload]
            start=float(raw.get("start", 0.0)),  # type: ignore[arg-type]
            counts=[int(c) for c in counts] if isinstance(counts, list) else [],
        )


@dataclass(frozen=True)
class Forecast:
    windows: tuple[int, ...]  # demand over the horizon, one sample per window seen
    seasonal: bool

    def quantile(self, q: float) -> int:
        if not self.windows:
            return 0
        ordered = sorted(self.windows)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def exceeds(self, n: int) -> float:
        """P(demand over the horizon > n): what one more VM beyond n saves."""
        if not self.windows:
            return 0.0
        return sum(1 for w in self.windows if w > n) / len(self.windows)


def forecast(history: History, now: float, horizon_s: float) -> Forecast:
    counts = history.closed(now)
    width = max(1, math.ceil(horizon_s / history.bin_s))
    if len(counts) < width:
        return Forecast((), False)
    sums = [0] * (len(counts) - width + 1)
    running = sum(counts[:width])
    sums[0] = running
    for i in range(1, len(sums)):
        running += counts[i + width - 1] - counts[i - 1]
        sums[i] = running
    span = len(counts) * history.bin_s
    if span < DAY_S:
        return Forecast(tuple(sums), False)
    # seasonality: the windows that start within an hour of this time of day
    base = history.start
    seasonal = tuple(
        s
        for i, s in enumerate(sums)
        if _circular_gap((base + i * history.bin_s) % DAY_S, now % DAY_S) <= 3600.0
    )
    return Forecast(seasonal or tuple(sums), bool(seasonal))


def _circular_gap(a: float, b: float) -> float:
    gap = abs(a - b) % DAY_S
    return min(gap, DAY_S - gap)


def target(fc: Forecast, quantile: float, margin: int, floor: int, ceiling: int) -> int:
    """What the pool should hold: the quantile of demand plus the margin,
    within the rule's ``min_instances`` and ``total_instances``."""
    return max(floor, min(ceiling, fc.quantile(quantile) + margin))


def split(
    budget: int,
    forecasts: Mapping[str, Forecast],
    floors: Mapping[str, int],
    ceilings: Mapping[str, int],
    weights: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """The budget (VMs, or vCPUs with ``weights`` = each pool's VM size)
    split over the pools: floors first (as far as the budget goes), then
    one VM at a time to the pool where it saves the most expected misses
    per unit of budget; ties to the pool that has less. Never past a
    pool's ceiling, never past the budget."""
    cost = {p: (weights or {}).get(p, 1) for p in forecasts}
    have = {p: 0 for p in forecasts}
    left = budget
    for p in sorted(forecasts, key=lambda p: -floors.get(p, 0)):
        n = min(floors.get(p, 0), ceilings.get(p, 0), left // cost[p])
        have[p] = n
        left -= n * cost[p]
    while True:
        best: tuple[float, int, str] | None = None
        for p, fc in forecasts.items():
            if have[p] >= ceilings.get(p, 0) or cost[p] > left:
                continue
            value = fc.exceeds(have[p]) / cost[p]
            if value <= 0:
                continue
            key = (value, -have[p], p)
            if best is None or key > best:
                best = key
        if best is None:
            return have
        have[best[2]] += 1
        left -= cost[best[2]]
