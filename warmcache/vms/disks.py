"""Day-2 disks of a handed-out VM (PPeC's dynamic disk management): its
holder (or an admin) attaches a new data disk or detaches one while it holds
the VM. The agent books the disk's room and makes it (``attach_disk``) or
unplugs and deletes it (``detach_disk``); the VM's record lists its data
disks (``PoolInstance.data_disks``), updated conditional on its revision
after the agent's answer. The disks go with the VM when it is released
(deleted, or wiped by a recycle)."""

from __future__ import annotations

import contextlib
import string
from collections.abc import Callable, Mapping

from warmcache.errors import (
    AgentVmExists,
    AgentVmNotFound,
    ClaimContention,
    Forbidden,
    InvalidRequest,
    NotFound,
    UnknownVm,
    VmNotHeld,
)
from warmcache.inventory import HostView
from warmcache.model import DataDisk, Flavor, PoolInstance, Preallocation
from warmcache.ports import Compare, CoordinationStore, HostAgent, Put
from warmcache.vms.book import Found, VmBook
from warmcache.vms.release import ATTEMPTS, HOLDER_OR_ADMIN

TARGETS = tuple(f"vd{c}" for c in string.ascii_lowercase[1:25])  # vdb..vdy


def _adding(disk: DataDisk) -> Callable[[PoolInstance], tuple[DataDisk, ...]]:
    return lambda record: (*record.data_disks, disk)


class DataDisks:
    def __init__(
        self,
        store: CoordinationStore,
        book: VmBook,
        hosts: HostView,
        agent_for: Callable[[str], HostAgent],
        flavors: Callable[[], Mapping[str, Flavor]],
        emit: Callable[..., None],
    ) -> None:
        self._store = store
        self._book = book
        self._hosts = hosts
        self._agent_for = agent_for
        self._flavors = flavors
        self._emit = emit

    def _held(self, name: str, by: str, admin: bool) -> tuple[Found, HostAgent]:
        found = self._book.find(name)
        if found is None:
            raise UnknownVm(name)
        if not admin and found.record.acquired_by != by:
            raise Forbidden(by, HOLDER_OR_ADMIN)
        if found.folder != "acquired":
            raise VmNotHeld(name, found.record.state.value)
        self._hosts.catch_up()
        host = self._hosts.get(found.record.hypervisor)
        if host is None or not host.endpoint:
            from warmcache.errors import AgentUnavailable

            raise AgentUnavailable(found.record.hypervisor, "its agent is not heartbeating")
        return found, self._agent_for(host.endpoint)

    def attach(
        self, name: str, size_gib: int, preallocation: Preallocation, by: str, *, admin: bool
    ) -> PoolInstance:
        """A new data disk on the next free target; the VM's record with it."""
        found, agent = self._held(name, by, admin)
        flavor = self._flavors().get(found.record.flavor)
        taken = {d.target for d in found.record.data_disks}
        taken |= set(TARGETS[: len(flavor.extra_disks_gib)] if flavor else ())
        for target in TARGETS:
            if target in taken:
                continue
            try:
                agent.attach_disk(name, target, size_gib, preallocation)
            except AgentVmExists:
                taken.add(target)  # attached by someone else meanwhile: the next one
                continue
            disk = DataDisk(target=target, size_gib=size_gib, preallocation=preallocation)
            record = self._update(name, _adding(disk))
            self._emit("vm.disk_attached", name=name, target=target, size_gib=size_gib, by=by)
            return record
        raise InvalidRequest(f"{name} has no free disk target left (vdb..vdy)")

    def detach(self, name: str, target: str, by: str, *, admin: bool) -> PoolInstance:
        found, agent = self._held(name, by, admin)
        if all(d.target != target for d in found.record.data_disks):
            raise NotFound(f"{name} has no data disk {target}")
        with contextlib.suppress(AgentVmNotFound):  # not on the host any more: what is wanted
            agent.detach_disk(name, target)
        record = self._update(name, lambda r: tuple(d for d in r.data_disks if d.target != target))
        self._emit("vm.disk_detached", name=name, target=target, by=by)
        return record

    def _update(
        self, name: str, disks: Callable[[PoolInstance], tuple[DataDisk, ...]]
    ) -> PoolInstance:
        for _ in range(ATTEMPTS):
            found = self._book.find(name)
            if found is None or found.folder != "acquired":
                raise UnknownVm(name)  # released meanwhile: its disks went with it
            updated = found.record.model_copy(update={"data_disks": disks(found.record)})
            if self._store.txn(
                [Compare.mod_revision(found.key, found.revision)],
                [Put(found.key, updated.model_dump_json())],
            ).succeeded:
                return updated
        raise ClaimContention(ATTEMPTS)
