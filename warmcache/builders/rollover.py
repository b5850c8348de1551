"""Rolling replacement: pools follow what their VMs are built from.

A pool's generation (``model.pool_generation``) digests the flavor's image,
provider flavor, sizes and disks and the rule's ``user_data`` and
``group_hint``. Each cycle, per AZ, the leader

1. marks ``stale`` every pooled VM built with another generation (and
   clears the mark if the change was undone): a fenced write conditional on
   the record's revision, so a VM acquired meanwhile is left alone;
2. plans a *surge*: up to ``replace_per_cycle`` VMs beyond the pool's target
   while it holds VMs to replace (stale, or older than ``max_age_s``), so
   the new ones are built first;
3. after the cycle's builds, retires (purges through the agent, the
   address to quarantine) up to ``replace_per_cycle`` of those VMs, oldest
   first, never taking the pool's ready count below ``total_instances -
   replace_per_cycle``.

Pure arithmetic here (``retirable``, ``surge``, ``to_retire``); the cycle
does the writes. Every replacement is a ``vm.replaced`` event; each cycle
with a rollout under way emits ``pool.rollout`` (stale and aged VMs left).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from warmcache.model import HELD_STATES, BuildRule, InstanceState, PoolInstance


def stale_mark(rec: PoolInstance, generation: str) -> bool | None:
    """The ``stale`` flag ``rec`` should carry for its pool's ``generation``,
    or None when it carries the right one already (or is not pooled)."""
    if rec.state not in (*HELD_STATES, InstanceState.BUILDING) or not rec.generation:
        return None
    stale = rec.generation != generation
    return stale if stale != rec.stale else None


def retirable(
    records: Iterable[PoolInstance], flavor: str, rule: BuildRule, now: float
) -> list[tuple[PoolInstance, str]]:
    """The pool's ready or reserved VMs to replace, oldest first, each with
    its reason (``stale`` before ``max_age``)."""
    out = []
    for rec in records:
        if rec.flavor != flavor or rec.state not in HELD_STATES:
            continue
        if rec.stale:
            out.append((rec, "stale"))
        elif rec.aged(rule, now):
            out.append((rec, "max_age"))
    out.sort(key=lambda item: (item[1] != "stale", _born(item[0])))
    return out


def surge(rule: BuildRule, retiring: int) -> int:
    """VMs to build beyond the target this cycle so replacements come first."""
    return min(rule.replace_rate, retiring) if rule.enabled else 0


def to_retire(rule: BuildRule, held: int, retiring: int) -> int:
    """How many of ``retiring`` to remove now: at most ``replace_rate``, and
    never leaving fewer than ``total_instances - replace_rate`` of the
    ``held`` (ready or reserved) VMs."""
    if not rule.enabled:  # nothing would replace them: a disabled pool is left as it is
        return 0
    floor = max(0, rule.total_instances - rule.replace_rate)
    return max(0, min(rule.replace_rate, retiring, held - floor))


def held_count(records: Sequence[PoolInstance], flavor: str) -> int:
    """Ready or reserved VMs of the pool that could be handed out (healthy)."""
    return sum(
        1
        for r in records
        if r.flavor == flavor and r.state in HELD_STATES and not r.health_failures
    )


def _born(rec: PoolInstance) -> float:
    return rec.ready_at if rec.ready_at is not None else rec.created_at
