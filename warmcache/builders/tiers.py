"""Keeping a pool's standby tiers at their targets (issue 29): which
waiting VMs the leader parks or wakes, and into which tier. Pure: the
cycle (``BuildCycle._park``) applies the moves through the agents."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from warmcache.layout import Stored
from warmcache.model import STANDBY_TIERS, InstanceState, PoolInstance, Tiers


def tier_moves(
    items: Sequence[Stored[PoolInstance]], targets: Tiers, *, park_surplus: bool = False
) -> list[tuple[Stored[PoolInstance], str]]:
    """Which of one pool's waiting VMs go to which tier so that each tier
    holds its target: VMs stay where they are up to their tier's target;
    the rest fill the tiers short of theirs, each from the nearest tier
    (a paused VM wakes before a saved one); with ``park_surplus`` (a
    tiered pool), VMs beyond the pool's total wait saved (the cheapest)
    until they retire, else in the pool's (largest) tier. ``parking`` VMs (left
    mid-move by an earlier leader) always get a move, to settle them."""
    want = targets.as_dict()
    surplus_vms = max(0, len(items) - targets.total)
    if park_surplus:
        want["saved"] += surplus_vms
    else:  # a one-state pool: every VM in that state, its surplus too
        want[max(STANDBY_TIERS, key=lambda t: want[t])] += surplus_vms
    order = {t: i for i, t in enumerate(STANDBY_TIERS)}
    ranked = sorted(items, key=lambda i: (i.record.state is InstanceState.PARKING, i.record.name))
    kept: Counter[str] = Counter()
    surplus: list[Stored[PoolInstance]] = []
    moves: list[tuple[Stored[PoolInstance], str]] = []
    for item in ranked:
        now = item.record.standby
        if kept[now] < want[now]:
            kept[now] += 1
            if item.record.state is InstanceState.PARKING:
                moves.append((item, now))
        else:
            surplus.append(item)
    for tier in STANDBY_TIERS:
        while kept[tier] < want[tier] and surplus:
            to = order[tier]
            nearest = min(surplus, key=lambda i: (abs(order[i.record.standby] - to), i.record.name))
            surplus.remove(nearest)
            kept[tier] += 1
            moves.append((nearest, tier))
    return moves
