"""Settling what an earlier leader left ``building`` (it died, or lost its
lock mid-build), so that no VM it started is lost (DESIGN §12.2)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from warmcache.builders.run import AzRun
from warmcache.errors import AgentError, AgentVmNotFound
from warmcache.model import BuildRule, InstanceState, PoolInstance
from warmcache.ports import Compare, Delete, Put


def adopt_orphans(
    run: AzRun, records: list[PoolInstance], rules: Mapping[str, BuildRule]
) -> list[PoolInstance]:
    """Settle ``building`` records left by an earlier leader (it died or
    lost its lock mid-build): ready if the agent has the VM healthy,
    forgotten if the agent never made it, destroyed if it came up sick,
    left alone while the agent is still creating it or unreachable (listed
    in ``report.unsettled``, so that the next cycle comes soon and settles
    it). Returns the AZ's records as they stand afterwards."""
    store, keys, agents, emit, clock = run.store, run.keys, run.agents, run.emit, run.clock
    az, writer, report = run.az, run.writer, run.report
    token = writer.leadership.token
    reserved = Counter(r.flavor for r in records if r.state == InstanceState.RESERVED)
    out: list[PoolInstance] = []

    def leave(rec: PoolInstance, why: str) -> None:
        report.unsettled.append(f"{rec.name}: {why}")
        out.append(rec)

    for rec in records:
        if rec.state != InstanceState.BUILDING or rec.fencing_token == token:
            out.append(rec)
            continue
        key = keys.pool(az, rec.name)
        kv = store.get(key)
        agent = agents.get(rec.hypervisor)
        if kv is None or agent is None:
            if kv is not None:
                report.problems.append(f"{rec.name}: building, agent {rec.hypervisor} down")
                out.append(rec)
            continue
        try:
            status = agent.status(rec.name)
        except AgentVmNotFound:
            writer.txn([Compare.mod_revision(key, kv.mod_revision)], [Delete(key)])
            emit(
                "vm.build_forgotten",
                name=rec.name,
                az=az,
                flavor=rec.flavor,
                reason="the agent never created it",
            )
            continue
        except AgentError as exc:
            leave(rec, f"agent: {exc}")
            continue
        if status.state == "creating":
            leave(rec, "still being created")
            continue
        if not status.healthy:
            try:
                agent.delete(rec.name)
            except AgentError as exc:
                leave(rec, f"unhealthy, delete failed: {exc}")
                continue
            writer.txn([Compare.mod_revision(key, kv.mod_revision)], [Delete(key)])
            emit(
                "vm.build_failed",
                name=rec.name,
                az=az,
                flavor=rec.flavor,
                hypervisor=rec.hypervisor,
                error=f"adopted unhealthy: {status.state}",
                cleaned_up=True,
            )
            continue
        rule = rules.get(rec.flavor)
        hold = rule is not None and reserved[rec.flavor] < rule.reserve_cap
        reserved[rec.flavor] += hold
        state = InstanceState.RESERVED if hold else InstanceState.READY
        done = rec.with_state(
            state,
            ready_at=clock.now(),
            server_id=status.server_id,
            addresses=status.addresses,
            fencing_token=token,
        )
        if writer.txn(
            [Compare.mod_revision(key, kv.mod_revision)], [Put(key, done.model_dump_json())]
        ).succeeded:
            emit(
                "vm.build_adopted",
                name=rec.name,
                az=az,
                flavor=rec.flavor,
                state=state.value,
                from_token=rec.fencing_token,
            )
            out.append(done)
        else:
            leave(rec, "its record changed meanwhile")
    return out
