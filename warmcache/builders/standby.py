"""The standby stage of a build cycle: each pool's tiers kept at their
targets (``builders.tiers`` chooses the moves). Each VM is first taken out
of the pool (``parking``, a fenced write conditional on its revision, so
an acquisition that got there first keeps it), then its agent is asked,
then it goes back as the agent now keeps it (``vm.standby``); the
``parking`` records an earlier leader left are settled the same way."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from warmcache.builders.run import AzRun
from warmcache.builders.tiers import tier_moves
from warmcache.errors import AgentError, AgentUnavailable
from warmcache.layout import PoolRecords, Stored
from warmcache.logs import in_context
from warmcache.model import HELD_STATES, BuildRule, InstanceState, PoolInstance
from warmcache.ports import Compare, Put


def wanted(rules: Mapping[str, BuildRule], records: list[PoolInstance]) -> bool:
    """Whether the AZ has anything for this stage: a pool with tiers, an
    objective or a standby state, or a VM not running or left parking."""
    return any(r.standby != "running" or r.tiers or r.objective for r in rules.values()) or any(
        r.standby != "running" or r.state is InstanceState.PARKING for r in records
    )


def park(run: AzRun, rules: Mapping[str, BuildRule]) -> None:
    """Keep each pool's tiers at their targets (``rule.tier_targets``):
    VMs beyond a tier's target move to a tier short of its own (the
    nearest first), VMs beyond the pool's target wait saved until they
    retire, and the ones an earlier leader left ``parking`` are settled."""
    by_flavor: dict[str, list[Stored[PoolInstance]]] = defaultdict(list)
    for item in PoolRecords(run.store, run.keys).read(run.az)[0]:
        rec = item.record
        if rec.flavor in rules and (
            rec.state is InstanceState.PARKING
            or (rec.state in HELD_STATES and not rec.health_failures)
        ):
            by_flavor[rec.flavor].append(item)
    moves = [
        (item, state)
        for flavor, items in sorted(by_flavor.items())
        for item, state in tier_moves(
            items, rules[flavor].tier_targets(), park_surplus=rules[flavor].tiers is not None
        )
    ]
    if not moves:
        return
    with ThreadPoolExecutor(max_workers=run.concurrency) as pool:
        one = in_context(lambda move: _park_one(run, move[0], move[1]))
        for _ in pool.map(one, moves):
            pass


def _park_one(run: AzRun, item: Stored[PoolInstance], tier: str) -> None:
    rec, revision = item.record, item.mod_revision
    writer, report = run.writer, run.report
    back = InstanceState.READY if rec.state is InstanceState.PARKING else rec.state
    if rec.state is not InstanceState.PARKING:
        parking = rec.with_state(InstanceState.PARKING)
        result = writer.txn(
            [Compare.mod_revision(item.key, revision)],
            [Put(item.key, parking.model_dump_json())],
        )
        if not result.succeeded:
            return  # acquired or changed meanwhile: not the leader's to park
        revision = result.revision
    agent = run.agents.get(rec.hypervisor)
    started = run.clock.now()
    try:
        if agent is None:
            raise AgentUnavailable(rec.hypervisor, "not heartbeating")
        status = agent.standby(rec.name, tier)
        kept, healthy = status.standby, status.healthy
    except AgentError as exc:
        kept, healthy = rec.standby, False
        with run.lock:
            report.problems.append(f"{rec.az}/{rec.flavor}: {rec.name} not {tier}: {exc}")
    done = rec.with_state(
        back,
        standby=kept if kept in ("running", "paused", "saved") else "running",
        health_failures=rec.health_failures + (0 if healthy else 1),
    )
    writer.txn([Compare.mod_revision(item.key, revision)], [Put(item.key, done.model_dump_json())])
    run.emit(
        "vm.standby",
        name=rec.name,
        az=rec.az,
        flavor=rec.flavor,
        hypervisor=rec.hypervisor,
        state=done.standby,
        healthy=healthy,
        duration_s=round(run.clock.now() - started, 3),
    )
