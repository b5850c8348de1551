"""Acquire modes (DESIGN.md §8) as small selector classes: pure, no I/O.

A selector gets the acquirable VMs of one pool and returns ``count`` of them
satisfying its mode, or ``None`` when the pool cannot satisfy it. Choices are
randomised among equally good VMs so that concurrent acquirers rarely reach
for the same record (fewer claim conflicts), while preferring to take from
the best-stocked racks and hypervisors so that the pool stays spread.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol

from warmcache.model import Mode, PoolInstance


class Selector(Protocol):
    def select(
        self, candidates: Sequence[PoolInstance], count: int, rng: random.Random
    ) -> list[PoolInstance] | None: ...


def _grouped(
    candidates: Sequence[PoolInstance], key: Callable[[PoolInstance], str], rng: random.Random
) -> list[list[PoolInstance]]:
    """Groups by ``key``, fullest first, ties and members in random order."""
    groups: dict[str, list[PoolInstance]] = defaultdict(list)
    for vm in candidates:
        groups[key(vm)].append(vm)
    out = list(groups.values())
    for members in out:
        rng.shuffle(members)
    rng.shuffle(out)
    out.sort(key=len, reverse=True)  # stable: random among equals
    return out


class DistinctBy:
    """Every returned VM differs in ``key`` (rack or hypervisor)."""

    def __init__(self, key: Callable[[PoolInstance], str]) -> None:
        self._key = key

    def select(
        self, candidates: Sequence[PoolInstance], count: int, rng: random.Random
    ) -> list[PoolInstance] | None:
        groups = _grouped(candidates, self._key, rng)
        if len(groups) < count:
            return None
        return [members[0] for members in groups[:count]]


class BestEffort:
    """Any ``count`` VMs, preferring distinct hypervisors, then distinct racks."""

    def select(
        self, candidates: Sequence[PoolInstance], count: int, rng: random.Random
    ) -> list[PoolInstance] | None:
        if len(candidates) < count:
            return None
        chosen: list[PoolInstance] = []
        groups = _grouped(candidates, lambda vm: vm.hypervisor, rng)
        # Round-robin over hypervisors: one from each before a second from any.
        depth = 0
        while len(chosen) < count:
            layer = [g[depth] for g in groups if len(g) > depth]
            chosen += layer[: count - len(chosen)]
            depth += 1
        return chosen


SELECTORS: dict[Mode, Selector] = {
    Mode.RACK_AWARE: DistinctBy(lambda vm: vm.rack),
    Mode.HYPERVISOR_AWARE: DistinctBy(lambda vm: vm.hypervisor),
    Mode.BEST_EFFORT: BestEffort(),
}


def satisfiable(candidates: Sequence[PoolInstance], count: int, mode: Mode) -> bool:
    """Whether some selection exists (for explanations and property tests)."""
    if mode is Mode.RACK_AWARE:
        return len({vm.rack for vm in candidates}) >= count
    if mode is Mode.HYPERVISOR_AWARE:
        return len({vm.hypervisor for vm in candidates}) >= count
    return len(candidates) >= count
