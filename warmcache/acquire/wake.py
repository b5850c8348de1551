"""Handing out VMs kept paused or saved (rule ``standby``).

A claim takes its VMs all or nothing, as for running ones; then the VMs
that are not running are resumed through their agents in parallel and
probed (running and healthy) before the caller sees any. If one does not
come back, the claim is undone in one transaction conditional on the
claim's revision: every VM goes back to its pool (the named claim's record
goes too, so a repeat starts afresh), the ones that failed marked unhealthy
(never handed out) and then purged through their agents. The acquirer then
claims once more from what is left; failing again, it answers
``resume_failed`` with nothing claimed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from warmcache.claims.held import HeldIndex
from warmcache.errors import AgentError, StoreError
from warmcache.inventory import HostView
from warmcache.layout import Keys
from warmcache.model import InstanceState, PoolInstance
from warmcache.networks import AddressRelease
from warmcache.ports import Compare, CoordinationStore, Delete, HostAgent, KeyValue, Op, Put
from warmcache.purge import purge_vm

log = logging.getLogger(__name__)


class Waker:
    def __init__(
        self,
        store: CoordinationStore,
        keys: Keys,
        hosts: HostView,
        agent_for: Callable[[str], HostAgent],
        release: AddressRelease | None = None,
        held: HeldIndex | None = None,
    ) -> None:
        self._store = store
        self._keys = keys
        self._hosts = hosts
        self._agent_for = agent_for
        self._release = release
        self._held = held
        self.observe: Callable[[str, KeyValue | None, int], None] = lambda _k, _v, _r: None

    def _agent(self, vm: PoolInstance) -> HostAgent | None:
        host = self._hosts.get(vm.hypervisor)
        return self._agent_for(host.endpoint) if host and host.endpoint else None

    def wake(self, vms: list[PoolInstance]) -> tuple[list[PoolInstance], dict[str, str]]:
        """Resume and probe every VM not running, at once; the VMs as they
        now are, and the ones that did not come back with why."""
        asleep = [vm for vm in vms if vm.standby != "running"]
        failed: dict[str, str] = {}

        def one(vm: PoolInstance) -> None:
            agent = self._agent(vm)
            if agent is None:
                failed[vm.name] = "its agent is not heartbeating"
                return
            try:
                status = agent.standby(vm.name, "running")
                if not (status.healthy and status.standby == "running"):
                    failed[vm.name] = f"{status.state} after resume"
            except AgentError as exc:
                failed[vm.name] = str(exc)

        if asleep:
            with ThreadPoolExecutor(max_workers=min(16, len(asleep))) as pool:
                list(pool.map(one, asleep))
        woken = [
            vm
            if vm.standby == "running" or vm.name in failed
            else vm.model_copy(update={"standby": "running"})
            for vm in vms
        ]
        return woken, failed

    def give_back(
        self,
        az: str,
        vms: list[PoolInstance],
        revision: int,
        claim_id: str | None,
        failed: dict[str, str],
    ) -> bool:
        """Undo a claim that landed at ``revision``: its VMs back in the pool
        (running now, the leader parks them again), the failed ones marked
        unhealthy and purged. False when the claim changed meanwhile."""
        compares = [Compare.mod_revision(self._keys.acquired(az, vm.name), revision) for vm in vms]
        back = {
            vm.name: vm.with_state(
                InstanceState.READY,
                acquired_by=None,
                acquired_at=None,
                claim_id=None,
                expires_at=None,
                health_failures=vm.health_failures + (1 if vm.name in failed else 0),
            )
            for vm in vms
        }
        ops: list[Op] = [
            op
            for vm in vms
            for op in (
                Delete(self._keys.acquired(az, vm.name)),
                Put(self._keys.pool(az, vm.name), back[vm.name].model_dump_json()),
            )
        ]
        if claim_id is not None:
            ops.append(Delete(self._keys.claim(claim_id)))
        holder = vms[0].acquired_by if vms else None
        for _ in range(3):  # the holder's counter may move meanwhile: read it again
            more: list[Compare] = []
            taken: list[Op] = []
            if self._held is not None and holder:
                more, taken = self._held.take_back(holder, az, [vm.name for vm in vms])
            result = self._store.txn([*compares, *more], [*ops, *taken])
            if result.succeeded or any(
                (kv.mod_revision if kv else 0) != revision
                for key, kv in result.current.items()
                if key.startswith(self._keys.acquired_dir(az))
            ):
                break
        if not result.succeeded:
            log.warning("claim of %s changed before it could be given back", [v.name for v in vms])
            return False
        for vm in vms:  # the index learns it now, not when the feed brings it
            key, value = self._keys.pool(az, vm.name), back[vm.name].model_dump_json()
            self.observe(
                key, KeyValue(key, value, result.revision, result.revision), result.revision
            )
        for name in failed:
            key = self._keys.pool(az, name)
            try:
                purge_vm(
                    self._store.txn,
                    key,
                    result.revision,
                    back[name],
                    self._agent(back[name]),
                    self._release,
                )
            except StoreError as exc:  # marked unhealthy: the health poller finishes it
                log.warning("purge of %s after a failed resume: %s", name, exc)
        return True
