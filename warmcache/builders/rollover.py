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

The arithmetic is pure (``retirable``, ``surge``, ``to_retire``); the
stage's writes are ``mark_generations`` and ``retire``. Every replacement
is a ``vm.replaced`` event; each cycle with a rollout under way emits
``pool.rollout`` (stale and aged VMs left).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from warmcache.builders.run import AzRun
from warmcache.layout import PoolRecords
from warmcache.model import HELD_STATES, BuildRule, InstanceState, PoolInstance
from warmcache.networks import AddressRelease
from warmcache.ports import Compare, Put
from warmcache.purge import purge_vm


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


def mark_generations(
    run: AzRun, records: list[PoolInstance], generations: Mapping[str, str]
) -> list[PoolInstance]:
    """Mark (or unmark) ``stale`` the AZ's pooled VMs whose generation is
    not their pool's; the records as they now are. A record changed
    meanwhile (acquired) keeps what it says."""
    marks = {
        r.name: mark
        for r in records
        if r.flavor in generations and (mark := stale_mark(r, generations[r.flavor])) is not None
    }
    if not marks:
        return records
    az, writer = run.az, run.writer
    stored = {item.record.name: item for item in PoolRecords(run.store, run.keys).read(az)[0]}
    out, newly = [], Counter[str]()
    for rec in records:
        mark = marks.get(rec.name)
        item = stored.get(rec.name)
        if mark is None or item is None or item.record != rec:
            out.append(rec)
            continue
        marked = rec.model_copy(update={"stale": mark})
        if writer.txn(
            [Compare.mod_revision(item.key, item.mod_revision)],
            [Put(item.key, marked.model_dump_json())],
        ).succeeded:
            out.append(marked)
            if mark:
                newly[rec.flavor] += 1
        else:
            out.append(rec)
    for flavor, n in sorted(newly.items()):
        run.emit(
            "pool.generation_changed",
            az=az,
            flavor=flavor,
            generation=generations[flavor],
            stale=n,
        )
    return out


def retire(
    run: AzRun,
    rules: Mapping[str, BuildRule],
    retiring: Mapping[str, list[tuple[PoolInstance, str]]],
    release: AddressRelease | None,
) -> None:
    """After the cycle's builds: purge up to ``replace_per_cycle`` of each
    pool's stale or aged VMs, as the ready floor allows (read again now:
    the builds and acquisitions of this cycle count)."""
    az, writer, report = run.az, run.writer, run.report
    items = PoolRecords(run.store, run.keys).read(az)[0]
    stored = {item.record.name: item for item in items}
    now_records = [item.record for item in items]
    for flavor, candidates in sorted(retiring.items()):
        rule = rules[flavor]
        live = [
            (stored[rec.name], why)
            for rec, why in candidates
            if rec.name in stored and stored[rec.name].record.state in HELD_STATES
        ]
        n = to_retire(rule, held_count(now_records, flavor), len(live))
        done: set[str] = set()
        for item, why in live[:n]:
            rec = item.record
            agent = run.agents.get(rec.hypervisor)
            if purge_vm(writer.txn, item.key, item.mod_revision, rec, agent, release):
                done.add(rec.name)
                run.emit(
                    "vm.replaced",
                    name=rec.name,
                    az=az,
                    flavor=flavor,
                    hypervisor=rec.hypervisor,
                    reason=why,
                    generation=rec.generation,
                )
            else:
                with run.lock:
                    report.problems.append(
                        f"{az}/{flavor}: {rec.name} ({why}) not replaced: acquired "
                        "meanwhile, or its agent could not destroy it"
                    )
        left = [why for item, why in live if item.record.name not in done]
        with run.lock:
            report.replaced[(az, flavor)] += len(done)
        run.emit(
            "pool.rollout",
            az=az,
            flavor=flavor,
            replaced_vms=len(done),
            stale_left=left.count("stale"),
            aged_left=left.count("max_age"),
        )
