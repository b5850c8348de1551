"""Purging one pooled VM: claim it for purging (conditional on its record's
revision, so an acquisition that got there first wins), destroy it through
its agent, then remove its record. If the agent cannot destroy it, the
record stays ``purging``: tracked, never acquirable, and the health poller
tries again at its next poll. Failed builds are cleaned up the same way, so
that a leader that lost its lock never destroys a VM its successor may be
adopting: the fenced claim fails first."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from warmcache.errors import AgentError, AgentVmNotFound
from warmcache.inventory import HostView
from warmcache.layout import Keys, PoolRecords
from warmcache.model import InstanceState, PoolInstance
from warmcache.networks import AddressRelease
from warmcache.ports import Compare, CoordinationStore, Delete, HostAgent, Op, Put, TxnResult

log = logging.getLogger(__name__)

Txn = Callable[[Sequence[Compare], Sequence[Op]], TxnResult]


def purge_vm(
    txn: Txn,
    key: str,
    revision: int,
    rec: PoolInstance,
    agent: HostAgent | None,
    release: AddressRelease | None = None,
    **update: object,
) -> bool:
    """True when the VM is gone and its record removed. ``revision``: the
    record's modify revision as the caller read it. ``txn``: the store's, or
    a fenced writer's when the caller holds a lock (``LeadershipLost`` then
    leaves everything as it was). ``release``: the VM's addresses go into
    quarantine in the transaction that removes its record (not before: a VM
    that could not be destroyed keeps them)."""
    purging = rec.with_state(InstanceState.PURGING, **update)
    if not txn(
        [Compare.mod_revision(key, revision)], [Put(key, purging.model_dump_json())]
    ).succeeded:
        return False  # acquired or changed meanwhile: not ours to purge
    if agent is None:
        log.warning("purge of %s: its agent is not heartbeating (record kept as purging)", rec.name)
        return False
    try:
        agent.delete(rec.name)
    except AgentVmNotFound:
        pass  # gone already: what the purge wanted
    except AgentError as exc:
        log.warning("purge of %s: %s (record kept as purging)", rec.name, exc)
        return False
    txn([], [Delete(key), *(release.ops(rec) if release else [])])
    return True


def purge_pool(
    store: CoordinationStore,
    keys: Keys,
    hosts: HostView,
    agent_for: Callable[[str], HostAgent],
    emit: Callable[..., None],
    az: str,
    flavor: str,
    release: AddressRelease | None = None,
) -> dict[str, Any]:
    """Purge every ready and reserved VM of one pool (an approved
    ``purge_pool`` change); a VM acquired meanwhile is left to its holder,
    one whose agent cannot destroy it stays ``purging`` and is named."""
    hosts.catch_up()
    purged, kept = [], []
    for item in PoolRecords(store, keys).read(az)[0]:
        rec = item.record
        if rec.flavor != flavor or rec.state not in (InstanceState.READY, InstanceState.RESERVED):
            continue
        host = hosts.get(rec.hypervisor)
        agent = agent_for(host.endpoint) if host and host.endpoint else None
        if purge_vm(store.txn, item.key, item.mod_revision, rec, agent, release):
            purged.append(rec.name)
            emit(
                "vm.purged",
                name=rec.name,
                az=az,
                flavor=flavor,
                hypervisor=rec.hypervisor,
                reason="pool purge (approved)",
            )
        else:
            kept.append(rec.name)
    return {"purged": len(purged), "not_purged": kept}
