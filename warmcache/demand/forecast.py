"""Demand-driven pool sizing, the arithmetic (issue 17): what a pool was
asked for, what that forecasts over the next build horizon, and a shared
AZ budget split by the marginal value of one more VM. Pure: no store, no
clock (times are passed in); ``warmcache.demand.ledger`` records the
demand, ``warmcache.demand.sizing`` applies the targets.

* ``Chunk``: one hour of one pool's demand as one instance saw it: VMs
  asked per ``bin_s`` bin, and requests by size (one request of 5 VMs is
  not five requests of one: a pool of 4 serves the latter, not the
  former). Instances write their own chunks; the leader sums them per pool
  into a ``PoolHistory``. Bounded: one chunk per hour per instance per
  pool, ``3600 / bin_s`` counts and at most ``MAX_SIZES`` sizes each.
* ``forecast``: from the recent ``lookback_s`` and, once the history
  covers a day, the same time of day (an hour either side) on every
  earlier day kept: the VMs asked over every horizon-wide window (the
  demand a pool must hold until the VMs a cycle starts are ready), and
  every request's *need*: its size plus the VMs the pool is expected to
  lose to others while a replacement builds (the recent rate times the
  build time).
* ``target``: the larger of the two quantiles plus a margin, within the
  rule's ``min_instances`` and ``total_instances``.
* ``split``: an AZ budget (VMs, or vCPUs) over its pools. VMs a pool holds
  are not taken back by the split itself (a pool left above its new
  target retires its surplus after ``service.shrink_after_s``:
  ``builders.upkeep``); floors
  first, as far as the budget goes; then VM by VM (looking a few VMs ahead,
  since a pool of 3 may be worth nothing more than 2 while a pool of 4
  serves every request for 4) to the pool where it saves the most missed
  requests per hour per unit of budget, never past a pool's own target;
  what is still left goes where the horizon's demand most often exceeds
  what a pool holds (among pools that already serve some of their requests).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

HOUR_S = 3600.0
DAY_S = 86_400.0
SEASON_S = 3600.0  # the same time of day on earlier days, this much either side
MAX_SIZES = 256  # distinct request sizes one chunk keeps (the largest merge into the top)
MAX_REQUEST = 100_000  # a request's size is capped here (rules' counts are)
LOOK_AHEAD = 16  # VMs the split looks ahead over a pool's value curve


def hour_of(at: float) -> float:
    return math.floor(at / HOUR_S) * HOUR_S


@dataclass
class Chunk:
    """One pool's demand in one hour, as one instance (or the sum of all)
    saw it. ``counts[i]``: VMs asked in ``[start + i * bin_s, ...)``;
    ``sizes[n]``: requests that asked for ``n`` VMs; ``released`` VMs given
    back in the hour after ``held_s`` seconds held in all (their lifetimes)."""

    start: float
    bin_s: float
    counts: list[int]
    sizes: Counter[int] = field(default_factory=Counter)
    released: int = 0
    held_s: float = 0.0

    @classmethod
    def empty(cls, start: float, bin_s: float) -> Chunk:
        return cls(start, bin_s, [0] * bins_per_hour(bin_s))

    def record(self, at: float, n: int) -> None:
        """A request for ``n`` VMs at ``at`` (within this hour)."""
        index = min(len(self.counts) - 1, max(0, int((at - self.start) // self.bin_s)))
        n = min(max(n, 0), MAX_REQUEST)
        self.counts[index] += n
        self.sizes[n] += 1
        self._bound()

    def release(self, held_s: float) -> None:
        """A VM given back after ``held_s`` seconds."""
        self.released += 1
        self.held_s += max(0.0, held_s)

    def add(self, other: Chunk) -> None:
        if other.start != self.start or other.bin_s != self.bin_s:
            raise ValueError("chunks of different hours or bins do not add")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sizes.update(other.sizes)
        self.released += other.released
        self.held_s += other.held_s
        self._bound()

    def _bound(self) -> None:
        if len(self.sizes) > MAX_SIZES:
            # The largest sizes merge into one entry just above the largest
            # kept: a pool is never sized by them (they exceed any sane
            # target), only counted.
            kept = sorted(self.sizes)[: MAX_SIZES - 1]
            top = sum(c for s, c in self.sizes.items() if s > kept[-1])
            self.sizes = Counter({s: self.sizes[s] for s in kept})
            self.sizes[max(self.sizes) + 1] += top

    @property
    def vms(self) -> int:
        return sum(self.counts)

    def to_json(self) -> str:
        return json.dumps(
            {
                "start": self.start,
                "bin_s": self.bin_s,
                "counts": self.counts,
                "sizes": {str(s): c for s, c in sorted(self.sizes.items())},
                "released": self.released,
                "held_s": round(self.held_s, 3),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Chunk:
        """Parse a stored chunk; ``ValueError`` for anything malformed (a
        bad chunk is skipped by the reader, never trusted)."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("a chunk is an object")
        start, bin_s = float(raw["start"]), float(raw["bin_s"])
        counts = raw["counts"]
        sizes = raw.get("sizes", {})
        if not isinstance(counts, list) or not isinstance(sizes, dict):
            raise ValueError("counts is a list, sizes an object")
        if start % HOUR_S or len(counts) != bins_per_hour(bin_s) or len(sizes) > MAX_SIZES:
            raise ValueError("a chunk holds one hour")
        parsed = [int(c) for c in counts]
        bag = Counter({int(s): int(c) for s, c in sizes.items()})
        released, held_s = int(raw.get("released", 0)), float(raw.get("held_s", 0.0))
        if any(c < 0 for c in parsed) or any(s < 0 or c < 0 for s, c in bag.items()):
            raise ValueError("negative counts")
        if released < 0 or held_s < 0:
            raise ValueError("negative counts")
        return cls(start, bin_s, parsed, bag, released, held_s)


def bins_per_hour(bin_s: float) -> int:
    per = HOUR_S / bin_s
    if bin_s <= 0 or per != int(per):
        raise ValueError(f"bin_s must divide an hour, got {bin_s}")
    return int(per)


@dataclass(frozen=True)
class PoolHistory:
    """One pool's demand: its chunks summed over every instance, by hour.
    Hours after the first with no chunk were quiet (instances write a chunk
    only when something was asked)."""

    bin_s: float
    chunks: Mapping[float, Chunk]

    @classmethod
    def of(cls, chunks: Iterable[Chunk], bin_s: float) -> PoolHistory:
        merged: dict[float, Chunk] = {}
        for chunk in chunks:
            if chunk.bin_s != bin_s:
                continue  # written under another bin_s: not comparable
            mine = merged.setdefault(chunk.start, Chunk.empty(chunk.start, bin_s))
            mine.add(chunk)
        return cls(bin_s, merged)

    @property
    def since(self) -> float | None:
        return min(self.chunks) if self.chunks else None

    def bins(self, t0: float, t1: float) -> list[int]:
        """VMs asked per bin for the bins that lie wholly in ``[t0, t1)``."""
        first = math.ceil(t0 / self.bin_s)
        last = math.floor(t1 / self.bin_s)  # exclusive
        out = []
        for b in range(first, last):
            at = b * self.bin_s
            chunk = self.chunks.get(hour_of(at))
            out.append(chunk.counts[int((at - chunk.start) // self.bin_s)] if chunk else 0)
        return out

    def sizes(self, t0: float, t1: float) -> tuple[Counter[int], float]:
        """Requests by size in the hours that overlap ``[t0, t1)``, and how
        many hours of history that is (an hour still running counts for
        its elapsed share, up to ``t1``)."""
        out: Counter[int] = Counter()
        hours = 0.0
        at = hour_of(t0)
        since = self.since
        while at < t1:
            if since is not None and at >= since:
                chunk = self.chunks.get(at)
                if chunk is not None:
                    out.update(chunk.sizes)
                hours += (min(t1, at + HOUR_S) - at) / HOUR_S
            at += HOUR_S
        return out, hours


@dataclass(frozen=True)
class Forecast:
    windows: tuple[int, ...]  # VMs asked over one horizon, one sample per window seen
    sizes: Mapping[int, int]  # requests by the VMs they asked for
    hours: float  # hours of history the sizes come from
    rate_per_h: float  # VMs asked per hour over the recent lookback
    drain: float  # VMs others take, on average, while one VM builds
    seasonal: bool  # earlier days' same time of day are in the samples

    @property
    def requests(self) -> int:
        return sum(self.sizes.values())

    @property
    def shift(self) -> int:
        """VMs a request's need adds to its size: the drain, rounded."""
        return math.floor(self.drain + 0.5)

    def window_quantile(self, q: float) -> int:
        return _quantile(sorted(self.windows), q)

    def window_exceeds(self) -> Callable[[int], float]:
        """P(demand over one horizon > n), as a function of n."""
        ordered = sorted(self.windows)
        total = len(ordered)

        def exceeds(n: int) -> float:
            return (total - bisect.bisect_right(ordered, n)) / total if total else 0.0

        return exceeds

    def need_quantile(self, q: float) -> int:
        """The quantile of request needs: size plus the drain while one builds."""
        total = self.requests
        if not total:
            return 0
        rank = min(total, max(1, math.ceil(q * total)))
        seen = 0
        for size, count in sorted(self.sizes.items()):
            seen += count
            if seen >= rank:
                return min(size + self.shift, MAX_REQUEST)
        raise AssertionError("unreachable")

    def misses_per_h(self, held: int) -> float:
        """Requests per hour a pool holding ``held`` VMs would miss."""
        return self.curve()(held)

    def curve(self) -> Callable[[int], float]:
        """``misses_per_h`` as a function. A request of ``s`` VMs finds a
        pool that holds ``n`` short when ``s > n``, or when others took more
        than ``n - s`` of it since its last refill started: taken as a
        Poisson count with mean ``drain``. O(log sizes + tail) per call."""
        sizes = sorted(self.sizes)
        counts = [self.sizes[s] for s in sizes]
        # above[i]: requests of sizes[i:] (and 0 past the end)
        above = [*reversed([*itertools.accumulate(reversed(counts))]), 0]
        tail = _poisson_tail(self.drain)
        reach = len(tail)  # drains beyond it are negligible
        hours = self.hours

        def misses(held: int) -> float:
            if hours <= 0 or not sizes:
                return 0.0
            i = bisect.bisect_right(sizes, held)  # sizes[i:] exceed the pool outright
            total = float(above[i])
            j = i - 1
            while j >= 0 and held - sizes[j] < reach:
                total += counts[j] * tail[held - sizes[j]]
                j -= 1
            return total / hours

        return misses


def _poisson_tail(mean: float, negligible: float = 1e-6) -> list[float]:
    """``P(X > k)`` for k = 0, 1, ... while it is not negligible."""
    if mean <= 0:
        return []
    out: list[float] = []
    term = math.exp(-mean)
    cdf = term
    k = 0
    while 1.0 - cdf > negligible and k < 100_000:
        out.append(1.0 - cdf)
        k += 1
        term *= mean / k
        cdf += term
    return out


def _quantile(ordered: list[int], q: float) -> int:
    if not ordered:
        return 0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def periods(
    since: float | None, now: float, lookback_s: float
) -> tuple[list[tuple[float, float]], bool]:
    """The stretches of history a forecast samples: the recent lookback,
    and the same time of day (``SEASON_S`` either side) on each earlier
    day the history covers."""
    out = [(now - lookback_s, now)]
    if since is None:
        return out, False
    day = 1
    while now - day * DAY_S - SEASON_S >= since:
        mid = now - day * DAY_S
        out.append((mid - SEASON_S, mid + SEASON_S))
        day += 1
    return out, day > 1


def forecast(
    history: PoolHistory, now: float, horizon_s: float, build_s: float, lookback_s: float
) -> Forecast:
    if history.since is None:
        return Forecast((), {}, 0.0, 0.0, 0.0, False)  # nothing known: the floor
    spans, seasonal = periods(history.since, now, lookback_s)
    width = max(1, math.ceil(horizon_s / history.bin_s))
    windows: list[int] = []
    sizes: Counter[int] = Counter()
    hours = 0.0
    for t0, t1 in spans:
        counts = history.bins(max(t0, history.since or t0), t1)
        running = sum(counts[:width])
        if len(counts) >= width:
            windows.append(running)
            for i in range(width, len(counts)):
                running += counts[i] - counts[i - width]
                windows.append(running)
        got, h = history.sizes(t0, t1)
        sizes.update(got)
        hours += h
    recent = history.bins(max(now - lookback_s, history.since), now)
    rate_per_h = sum(recent) / (len(recent) * history.bin_s) * HOUR_S if recent else 0.0
    drain = rate_per_h / HOUR_S * build_s
    return Forecast(tuple(windows), sizes, hours, rate_per_h, drain, seasonal)


def target(fc: Forecast, quantile: float, margin: int, floor: int, ceiling: int) -> int:
    """What the pool should hold: the larger of the quantile of demand over
    the horizon and the quantile of request needs, plus the margin, within
    the rule's ``min_instances`` and ``total_instances``. No history: the
    floor."""
    if not fc.windows and not fc.sizes:
        return min(floor, ceiling)
    asked = max(fc.window_quantile(quantile), fc.need_quantile(quantile)) + margin
    return min(ceiling, max(floor, asked))


@dataclass(frozen=True)
class Ask:
    """One pool's part in an AZ budget split."""

    have: int  # VMs it holds now (ready, reserved, building): never taken back
    floor: int  # rule min_instances
    ceiling: int  # its own target (``target``)
    cost: int  # budget units per VM: 1 (a VM budget) or its vCPUs
    forecast: Forecast


def split(budget: int, asks: Mapping[str, Ask], fixed: int = 0) -> dict[str, int]:
    """Targets for the pools of one AZ within ``budget`` units, of which
    ``fixed`` are already spent (static pools). A pool keeps what it holds
    (up to its ceiling); floors next, as far as the budget goes (largest
    floors first); then the rest goes, a few VMs at a time, where it saves
    the most missed requests per hour per unit, never past a ceiling. The
    result never asks for more than the budget beyond what pools already
    hold."""
    got = {p: min(a.have, a.ceiling) for p, a in asks.items()}
    left = budget - fixed - sum(a.have * a.cost for a in asks.values())
    for p in sorted(asks, key=lambda p: (-asks[p].floor, p)):
        a = asks[p]
        # below its floor, a pool holds less than it is given: each VM costs
        while got[p] < min(a.floor, a.ceiling) and a.cost <= left:
            left -= a.cost
            got[p] += 1
    # One pool's best step ahead: (-(misses saved per hour per unit), pool,
    # VMs); one entry per pool, replaced whenever it is popped.
    heap: list[tuple[float, str, int]] = []
    curves = {p: a.forecast.curve() for p, a in asks.items()}

    def push(p: str) -> None:
        a = asks[p]
        best: tuple[float, int] | None = None
        base = curves[p](got[p])
        for k in range(1, min(LOOK_AHEAD, a.ceiling - got[p]) + 1):
            if k * a.cost > left:
                break
            saved = base - curves[p](got[p] + k)
            value = saved / (k * a.cost)
            if value > 0 and (best is None or value > best[0]):
                best = (value, k)
        if best is not None:
            heapq.heappush(heap, (-best[0], p, best[1]))

    for p in sorted(asks):
        push(p)
    while heap:
        _, p, k = heapq.heappop(heap)
        cost = k * asks[p].cost
        if cost > left:
            push(p)  # the budget shrank since this step was priced
            continue
        got[p] += k
        left -= cost
        push(p)  # steps of other pools priced before may no longer fit: re-priced when popped
    # What is left fills pools towards their own targets, one VM at a time
    # where the horizon's demand most often exceeds what the pool will hold
    # (its requests drain it by their number, not only by their size); only
    # pools that already serve some of their requests (more VMs that serve
    # none are idle).
    exceeds = {p: a.forecast.window_exceeds() for p, a in asks.items()}
    smallest = {p: min(a.forecast.sizes, default=0) for p, a in asks.items()}
    while True:
        best: tuple[float, str] | None = None
        for p, a in sorted(asks.items()):
            if got[p] >= a.ceiling or a.cost > left or got[p] < smallest[p]:
                continue
            value = exceeds[p](got[p]) / a.cost
            if value > 0 and (best is None or value > best[0]):
                best = (value, p)
        if best is None:
            return got
        got[best[1]] += 1
        left -= asks[best[1]].cost
