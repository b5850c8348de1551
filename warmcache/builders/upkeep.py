"""Pool upkeep after a cycle's builds: a pool holds what it counts, no more.

Per AZ, the leader

1. leaves out of every pool's arithmetic the ready and reserved VMs that
   cannot be handed out (``away``): on a host whose heartbeat is gone
   (``unreachable``) or that is evacuating (``drained``, ``warmcache.drains``);
   the cycle builds their replacements like any deficit;
2. retires the VMs of evacuating hosts (destroyed through their agents,
   ``vm.retired`` reason ``drained``) and every ready or reserved VM of a
   pool whose rule is gone (reason ``no_rule``);
3. retires a pool's surplus (more VMs counted than its target: the target
   lowered, a host back from an outage) once it has lasted the rule's
   ``decay_after_s`` or ``service.shrink_after_s`` (hysteresis: a surplus
   that ends, a burst back, starts the count afresh; a tiered pool's
   surplus waits saved meanwhile; the time it was first seen is kept in the
   store, ``Keys.surplus``, so a new leader goes on counting), stale and
   oldest first, at most ``replace_per_cycle`` per cycle (reason
   ``surplus``);
4. moves ready VMs to ``reserved`` and back so the pool holds its rule's
   ``reserve_cap`` (reserved ones spread over racks).

Every write goes through the leader's fence and is conditional on the
record's revision: an acquisition that got there first keeps its VM. Pure
choices here (``away``, ``to_shrink``, ``reserve_moves``); ``PoolUpkeep``
does the writes.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from warmcache.builders.run import AzRun
from warmcache.drains import Drains
from warmcache.layout import Keys, PoolRecords, Stored
from warmcache.leader.election import FencedWriter
from warmcache.model import (
    HELD_STATES,
    POOLED_STATES,
    BuildRule,
    HostFacts,
    InstanceState,
    PoolInstance,
)
from warmcache.networks import AddressRelease
from warmcache.ports import Compare, CoordinationStore, Delete, HostAgent, Put
from warmcache.purge import purge_vm

log = logging.getLogger(__name__)


def away(records: Iterable[PoolInstance], live: Iterable[str], drains: Drains) -> dict[str, str]:
    """Name -> why (``unreachable``, ``drained``) for each ready or reserved
    VM that cannot be handed out as its host stands."""
    alive = set(live)
    out = {}
    for rec in records:
        if rec.state not in HELD_STATES:
            continue
        if rec.hypervisor not in alive:
            out[rec.name] = "unreachable"
        elif drains.evacuating(rec.hypervisor, rec.az, rec.rack):
            out[rec.name] = "drained"
    return out


def counted(records: Iterable[PoolInstance], flavor: str) -> int:
    """What counts towards the pool's target (``away`` VMs left out first)."""
    return sum(1 for r in records if r.flavor == flavor and r.state in POOLED_STATES)


def to_shrink(records: Sequence[PoolInstance], flavor: str, n: int) -> list[PoolInstance]:
    """The ``n`` ready or reserved VMs of a pool to retire first: stale ones,
    then those failing health checks, then the oldest."""
    held = [r for r in records if r.flavor == flavor and r.state in HELD_STATES]
    held.sort(key=lambda r: (not r.stale, not r.health_failures, _born(r), r.name))
    return held[:n]


def reserve_moves(
    rule: BuildRule, records: Sequence[PoolInstance], flavor: str
) -> tuple[list[PoolInstance], list[PoolInstance]]:
    """(ready VMs to reserve, reserved VMs to hand back to ready) so that the
    pool holds ``reserve_cap`` reserved VMs, as far as it can. VMs to
    reserve come from the racks with the most ready VMs first, so the
    reserve spreads over racks; VMs failing checks are not moved."""
    healthy = [r for r in records if r.flavor == flavor and not r.health_failures]
    reserved = [r for r in healthy if r.state is InstanceState.RESERVED]
    ready = [r for r in healthy if r.state is InstanceState.READY]
    short = rule.reserve_cap - len(reserved)
    if short < 0:
        return [], sorted(reserved, key=lambda r: r.name)[:-short]
    if short == 0 or not ready:
        return [], []
    by_rack: dict[str, list[PoolInstance]] = defaultdict(list)
    for rec in sorted(ready, key=lambda r: r.name):
        by_rack[rec.rack].append(rec)
    in_reserve = Counter(r.rack for r in reserved)
    chosen: list[PoolInstance] = []
    while len(chosen) < short and any(by_rack.values()):
        # the rack holding the fewest reserved VMs, then the most ready ones
        rack = min(
            (r for r, vms in by_rack.items() if vms),
            key=lambda r: (in_reserve[r], -len(by_rack[r]), r),
        )
        chosen.append(by_rack[rack].pop())
        in_reserve[rack] += 1
    return chosen, []


def _born(rec: PoolInstance) -> float:
    return rec.ready_at if rec.ready_at is not None else rec.created_at


@dataclass
class UpkeepReport:
    retired: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # az, flavor, why
    moved: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # az, flavor, to state
    problems: list[str] = field(default_factory=list)


class PoolUpkeep:
    """The writes of steps 2-4 for one AZ (see the module doc)."""

    def __init__(
        self,
        store: CoordinationStore,
        keys: Keys,
        emit: Callable[..., None],
        now: Callable[[], float],
        shrink_after_s: float,
        release: AddressRelease | None = None,
    ) -> None:
        self._store = store
        self._keys = keys
        self._emit = emit
        self._now = now
        self.shrink_after_s = shrink_after_s
        self._release = release

    def settle(
        self,
        run: AzRun,
        rules: Mapping[str, BuildRule],
        facts: Mapping[str, HostFacts],
        drains: Drains,
    ) -> None:
        """The cycle's last stage for an AZ: retire what evacuating hosts,
        gone rules and surplus leave over; keep the reserve at its cap (the
        records read again now: this cycle's builds and acquisitions count)."""
        items = PoolRecords(run.store, run.keys).read(run.az)[0]
        gone = away((item.record for item in items), facts, drains)
        done = self.run(run.az, rules, items, gone, run.agents, run.writer)
        with run.lock:
            run.report.retired += done.retired
            run.report.problems += done.problems

    def run(
        self,
        az: str,
        rules: Mapping[str, BuildRule],
        items: Sequence[Stored[PoolInstance]],
        gone: Mapping[str, str],
        agents: Mapping[str, HostAgent],
        writer: FencedWriter,
    ) -> UpkeepReport:
        """``items``: the AZ's pool records as read now; ``gone``: ``away``'s
        answer for them; ``rules``: the AZ's rules as sized this cycle
        (none: every pool of the AZ lost its rule)."""
        report = UpkeepReport()
        if writer.leadership.lost.is_set():
            return report
        by_name = {item.record.name: item for item in items}
        for name, why in sorted(gone.items()):
            item = by_name.get(name)
            if item is not None and why == "drained":
                self._retire(item, "drained", agents, writer, report)
        orphans = [
            item
            for item in items
            if item.record.flavor not in rules and item.record.state in HELD_STATES
        ]
        for item in orphans:
            self._retire(item, "no_rule", agents, writer, report)
        left = [
            item for item in items if item.record.name not in gone and item.record.flavor in rules
        ]
        self._shrink(az, rules, left, agents, writer, report)
        self._move_reserve(az, rules, left, writer, report)
        return report

    # --- surplus ----------------------------------------------------------------------

    def _shrink(
        self,
        az: str,
        rules: Mapping[str, BuildRule],
        items: Sequence[Stored[PoolInstance]],
        agents: Mapping[str, HostAgent],
        writer: FencedWriter,
        report: UpkeepReport,
    ) -> None:
        records = [item.record for item in items]
        stored = {item.record.name: item for item in items}
        for flavor, rule in sorted(rules.items()):
            key = self._keys.surplus(az, flavor)
            extra = counted(records, flavor) - rule.total_instances
            since = self._since(key)
            if extra <= 0 or not rule.enabled:
                if since is not None:
                    writer.txn([], [Delete(key)])
                continue
            now = self._now()
            after = self.shrink_after_s if rule.decay_after_s is None else rule.decay_after_s
            if since is None:
                writer.txn(
                    [], [Put(key, json.dumps({"since": now, "target": rule.total_instances}))]
                )
                self._emit(
                    "pool.surplus",
                    az=az,
                    flavor=flavor,
                    surplus=extra,
                    target=rule.total_instances,
                    retire_after_s=after,
                )
                since = now
            if now - since < after:
                continue
            before = report.retired[(az, flavor, "surplus")]
            for rec in to_shrink(records, flavor, min(extra, rule.replace_rate)):
                self._retire(stored[rec.name], "surplus", agents, writer, report)
            if report.retired[(az, flavor, "surplus")] - before >= extra:
                writer.txn([], [Delete(key)])  # no surplus left

    def _since(self, key: str) -> float | None:
        kv = self._store.get(key)
        if kv is None:
            return None
        try:
            since = json.loads(kv.value)["since"]
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: counted again from now
        return float(since) if isinstance(since, int | float) else None

    # --- reserve ----------------------------------------------------------------------

    def _move_reserve(
        self,
        az: str,
        rules: Mapping[str, BuildRule],
        items: Sequence[Stored[PoolInstance]],
        writer: FencedWriter,
        report: UpkeepReport,
    ) -> None:
        stored = {item.record.name: item for item in items}
        records = [item.record for item in items]
        for flavor, rule in sorted(rules.items()):
            reserve, back = reserve_moves(rule, records, flavor)
            for rec, state in [
                *((r, InstanceState.RESERVED) for r in reserve),
                *((r, InstanceState.READY) for r in back),
            ]:
                item = stored[rec.name]
                if writer.txn(
                    [Compare.mod_revision(item.key, item.mod_revision)],
                    [Put(item.key, rec.with_state(state).model_dump_json())],
                ).succeeded:
                    report.moved[(az, flavor, state.value)] += 1
            if reserve or back:
                self._emit(
                    "pool.reserve_moved",
                    az=az,
                    flavor=flavor,
                    reserve_cap=rule.reserve_cap,
                    reserved=report.moved[(az, flavor, "reserved")],
                    unreserved=report.moved[(az, flavor, "ready")],
                )

    # --- retiring one VM --------------------------------------------------------------

    def _retire(
        self,
        item: Stored[PoolInstance],
        why: str,
        agents: Mapping[str, HostAgent],
        writer: FencedWriter,
        report: UpkeepReport,
    ) -> None:
        rec = item.record
        if purge_vm(
            writer.txn, item.key, item.mod_revision, rec, agents.get(rec.hypervisor), self._release
        ):
            report.retired[(rec.az, rec.flavor, why)] += 1
            self._emit(
                "vm.retired",
                name=rec.name,
                az=rec.az,
                flavor=rec.flavor,
                hypervisor=rec.hypervisor,
                rack=rec.rack,
                reason=why,
            )
        else:
            report.problems.append(
                f"{rec.az}/{rec.flavor}: {rec.name} ({why}) not retired: acquired meanwhile, "
                "or its agent could not destroy it (it stays purging; the health poller retries)"
            )
