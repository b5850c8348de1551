"""Acquire modes (DESIGN.md §8) as small selector classes: pure, no I/O.

A selector gets the ``Stock`` of one pool (its acquirable VMs, indexed by
rack and hypervisor) and returns the names of ``count`` of them satisfying
its mode, or ``None`` when the pool cannot satisfy it. It touches O(count)
racks, hypervisors and VMs, never the whole pool. Choices prefer the
best-stocked racks and hypervisors (so that the pool stays spread) and are
random among equally good ones (so that concurrent acquirers rarely reach
for the same record).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from warmcache.acquire.stock import Stock
from warmcache.model import Mode, PoolInstance


class Selector(Protocol):
    def select(self, stock: Stock, count: int, rng: random.Random) -> list[str] | None: ...


class DistinctRacks:
    """Every returned VM on a different rack."""

    def select(self, stock: Stock, count: int, rng: random.Random) -> list[str] | None:
        if len(stock.racks) < count:
            return None
        return [stock.on_rack(rack).sample(1, rng)[0] for rack in stock.racks.top(count, rng)]


class DistinctHypervisors:
    """Every returned VM on a different hypervisor."""

    def select(self, stock: Stock, count: int, rng: random.Random) -> list[str] | None:
        if len(stock.hypervisors) < count:
            return None
        return [
            stock.on_hypervisor(hv).sample(1, rng)[0] for hv in stock.hypervisors.top(count, rng)
        ]


class BestEffort:
    """Any ``count`` VMs, on as many hypervisors as the pool allows: one from
    each of the best-stocked hypervisors before a second from any."""

    def select(self, stock: Stock, count: int, rng: random.Random) -> list[str] | None:
        if len(stock) < count:
            return None
        if len(stock.hypervisors) >= count:
            return DistinctHypervisors().select(stock, count, rng)
        # Fewer hypervisors than VMs wanted (so fewer than `count` of them to
        # visit): round-robin, fullest first, in layers of one per hypervisor.
        groups = [(n, hv) for n, hvs in stock.hypervisors.descending() for hv in hvs]
        take = dict.fromkeys((hv for _, hv in groups), 0)
        left, depth = count, 0
        while left:
            for n, hv in groups:
                if n > depth and left:
                    take[hv] += 1
                    left -= 1
            depth += 1
        return [
            name for hv, k in take.items() if k for name in stock.on_hypervisor(hv).sample(k, rng)
        ]


SELECTORS: dict[Mode, Selector] = {
    Mode.RACK_AWARE: DistinctRacks(),
    Mode.HYPERVISOR_AWARE: DistinctHypervisors(),
    Mode.BEST_EFFORT: BestEffort(),
}


def satisfiable(candidates: Sequence[PoolInstance], count: int, mode: Mode) -> bool:
    """Whether some selection exists (the reference for property tests)."""
    if mode is Mode.RACK_AWARE:
        return len({vm.rack for vm in candidates}) >= count
    if mode is Mode.HYPERVISOR_AWARE:
        return len({vm.hypervisor for vm in candidates}) >= count
    return len(candidates) >= count
