"""Build-rule arithmetic (DESIGN.md §5, §6): pure functions, no I/O."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from warmcache.model import BuildRule, InstanceState, PoolInstance


def state_counts(records: Iterable[PoolInstance], flavor: str) -> Counter[InstanceState]:
    return Counter(r.state for r in records if r.flavor == flavor)


def to_build(rule: BuildRule, counts: Counter[InstanceState], surge: int = 0) -> int:
    """``min(max_instance_per_cycle, total + surge - (ready + reserved +
    building))``, never negative; zero for a disabled rule. ``surge``: VMs
    built ahead of the ones a rollover replaces (``rollover.surge``)."""
    if not rule.enabled:
        return 0
    pooled = (
        counts[InstanceState.READY]
        + counts[InstanceState.RESERVED]
        + counts[InstanceState.BUILDING]
        + counts[InstanceState.PARKING]
    )
    return max(0, min(rule.max_instance_per_cycle, rule.total_instances + surge - pooled))


def racks_required(rule: BuildRule, building: int) -> int:
    """Distinct racks the VMs of one cycle must span: ``min_fault_domain``,
    capped by how many VMs are being built (one VM spans one rack)."""
    return min(rule.min_fault_domain, building)
