"""What an agent does for each request: resource check, then the hypervisor.

Every operation checks the lockfile before touching libvirt, and every
failure after a reservation gives the reservation back and destroys what was
started, so the host's promises and libvirt agree. Errors are ``AgentFault``
with a stable wire code (``warmcache.agent_codes.AgentCode``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warmcache.agent_codes import AgentCode
from warmcache.errors import WarmCacheError
from warmcache.model import HostFacts
from warmcache.ports import HypervisorDriver, Pinning, VmSpec
from warmcache.wire import (
    AnyRequest,
    AttachDiskRequest,
    AttachNvmeRequest,
    CreateRequest,
    DetachDiskRequest,
    NamedRequest,
    StandbyRequest,
)
from warmcache_agent import cloudinit, disks, identity, numa
from warmcache_agent.config import AgentConfig, Resources
from warmcache_agent.libvirt_driver import HypervisorFailure
from warmcache_agent.lockfile import Allocation, AlreadyAllocated, CapacityExceeded, Lockfile
from warmcache_agent.reconcile import Finding, reconcile

log = logging.getLogger(__name__)

_HEALTHY_STATES = frozenset({"running"})


class AgentFault(Exception):
    """An operation refused or failed, with the code its reply carries."""

    def __init__(self, code: AgentCode, detail: Any) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class HostAgentService:
    def __init__(
        self,
        config: AgentConfig,
        driver: HypervisorDriver,
        *,
        sleep: Callable[[float], None] = time.sleep,
        endpoint: str = "",
        on_change: Callable[[], None] = lambda: None,
        records: Callable[[], dict[str, str]] | None = None,
        on_findings: Callable[[list[Finding]], None] = lambda findings: None,
    ) -> None:
        self.config = config
        self._driver = driver
        self._sleep = sleep
        self.endpoint = endpoint
        self.on_change = on_change
        self.records = records
        self.on_findings = on_findings
        self._topology = config.topology() if config.pin_cpus else None
        usable = Resources(
            vcpus=max(config.capacity.vcpus - config.reserved.vcpus, 0),
            memory_mib=max(config.capacity.memory_mib - config.reserved.memory_mib, 0),
            disk_gib=max(config.capacity.disk_gib - config.reserved.disk_gib, 0),
        )
        state_dir = Path(config.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.lockfile = Lockfile(state_dir / "lockfile.json", usable)
        dropped = self.lockfile.recover(set(driver.domains()))
        if dropped:
            log.warning(
                "dropped %d reservation(s) whose create never finished: %s",
                len(dropped),
                ", ".join(dropped),
            )

    # --- dispatch --------------------------------------------------------------------

    def handle(self, request: AnyRequest) -> Any:
        if isinstance(request, AttachDiskRequest):
            return self.attach_disk(
                request.name,
                request.target,
                request.size_gib,
                request.format,
                request.preallocation,
            )
        if isinstance(request, DetachDiskRequest):
            return self.detach_disk(request.name, request.target)
        if isinstance(request, AttachNvmeRequest):
            return self.attach_nvme(request.name, request.pci)
        if isinstance(request, StandbyRequest):
            return self.standby(request.name, request.state)
        if isinstance(request, CreateRequest):
            vm = request.vm
            spec = VmSpec(vm.name, vm.flavor, vm.user_data, vm.group, vm.network)
            return self.create(spec)
        if isinstance(request, NamedRequest):
            if request.op == "delete":
                return self.delete(request.name)
            return self.status(request.name)
        if request.op == "list":
            return self.list()
        if request.op == "facts":
            return self.facts().model_dump(mode="json")
        if request.op == "reconcile":
            return [f.as_dict() for f in self.reconcile()]
        return {"healthy": True, "hypervisor": self.config.hypervisor}

    # --- operations --------------------------------------------------------------------

    def facts(self) -> HostFacts:
        free = self.lockfile.free()
        usable = self.lockfile.usable
        allocs = self.lockfile.all()
        return HostFacts(
            hypervisor=self.config.hypervisor,
            rack=self.config.rack,
            az=self.config.az,
            vcpus_total=usable.vcpus,
            vcpus_free=free.vcpus,
            memory_mib_total=usable.memory_mib,
            memory_mib_free=free.memory_mib,
            disk_gib_total=usable.disk_gib,
            disk_gib_free=free.disk_gib,
            vms=tuple(a.name for a in allocs),
            groups=tuple(a.group for a in allocs if a.group),
            endpoint=self.endpoint,
            agent_version=identity.agent_version(),
            agent_sha256=identity.installed_sha256(),
            numa_free=(
                numa.free_per_node(self._topology, [a.pinning for a in allocs if a.pinning])
                if self._topology
                else ()
            ),
        )

    def create(self, spec: VmSpec) -> dict[str, Any]:
        if spec.name in self.config.reconcile_ignore or (
            self.lockfile.get(spec.name) is None and self._exists(spec.name)
        ):
            # a domain of that name that this agent does not manage: never
            # define over it, nor (on failure) clean it up as if it were ours
            raise AgentFault(
                AgentCode.ALREADY_EXISTS,
                f"a domain {spec.name} not managed by this agent exists on this host",
            )
        f = spec.flavor
        alloc = Allocation(
            name=spec.name,
            flavor=f.name,
            vcpus=f.vcpus,
            memory_mib=f.memory_mib,
            disk_gib=f.disk_gib + sum(f.extra_disks_gib),
            group=spec.group,
            state="creating",
        )
        try:
            if self._topology is not None:  # a shape that can never be pinned: say so
                numa.check_shape(self._topology, f.vcpus)
            alloc = self.lockfile.reserve(alloc, self._pinner(f.vcpus))
        except AlreadyAllocated as exc:
            raise AgentFault(
                AgentCode.ALREADY_EXISTS, f"VM {spec.name} exists on this host"
            ) from exc
        except CapacityExceeded as exc:
            raise AgentFault(AgentCode.INSUFFICIENT_CAPACITY, str(exc)) from exc
        except numa.NumaRejected as exc:
            raise AgentFault(exc.code, str(exc)) from exc
        except ValueError as exc:
            raise AgentFault(AgentCode.INVALID_REQUEST, str(exc)) from exc
        try:
            seed = cloudinit.write_seed(
                self._dir("seeds") / f"{spec.name}.iso",
                spec.name,
                spec.user_data,
                spec.network.network_config() if spec.network else None,
            )
            server_id = self._driver.define_and_start(
                spec, alloc.pinning, [cloudinit.seed_xml(seed)]
            )
            if self.config.create_delay_s:
                self._sleep(self.config.create_delay_s)
            self._driver.wait_ready(spec.name, self.config.ready_timeout_s)
        except HypervisorFailure as exc:
            self._undo(spec.name)
            raise AgentFault(AgentCode.HYPERVISOR_ERROR, str(exc)) from exc
        except BaseException:
            self._undo(spec.name)
            raise
        self.lockfile.activate(spec.name, server_id)
        self.on_change()
        return self.status(spec.name)

    def _exists(self, name: str) -> bool:
        try:
            return self._driver.state(name) != "missing"
        except HypervisorFailure as exc:
            raise AgentFault(AgentCode.HYPERVISOR_ERROR, str(exc)) from exc

    def _pinner(self, vcpus: int) -> Callable[[list[Pinning]], Pinning | None] | None:
        if self._topology is None:
            return None
        topology = self._topology
        return lambda pinned: numa.place(topology, pinned, vcpus)

    def _dir(self, kind: str) -> Path:
        path = Path(self.config.state_dir) / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _disk_path(self, name: str, target: str, fmt: disks.Format) -> Path:
        return self._dir("disks") / f"{name}-{target}.{fmt}"

    def _remove_files(self, name: str) -> None:
        (self._dir("seeds") / f"{name}.iso").unlink(missing_ok=True)
        for image in self._dir("disks").glob(f"{name}-vd*"):
            image.unlink(missing_ok=True)

    def _undo(self, name: str) -> None:
        try:
            self._driver.destroy(name)
        except HypervisorFailure:
            log.exception("could not destroy %s after a failed create", name)
        self._remove_files(name)
        self.lockfile.release(name)

    def delete(self, name: str) -> dict[str, Any]:
        self._owned(name)
        try:
            self._driver.destroy(name)
        except HypervisorFailure as exc:
            raise AgentFault(AgentCode.HYPERVISOR_ERROR, str(exc)) from exc
        self._remove_files(name)
        self.lockfile.release(name)
        self.on_change()
        return {"name": name, "deleted": True}

    def _owned(self, name: str) -> Allocation:
        """The VM, if this agent created it (it is in the lockfile) and it is
        not one of the domains the operator told it to leave alone. Every
        operation on a named VM starts here: a domain the agent does not own
        does not exist as far as callers can tell (``not_found``), so whoever
        reaches the agent cannot stop, inspect or change anything else on
        the host."""
        alloc = self.lockfile.get(name)
        if alloc is None or name in self.config.reconcile_ignore:
            raise AgentFault(AgentCode.NOT_FOUND, f"no VM {name} managed by this agent")
        return alloc

    def attach_disk(
        self,
        name: str,
        target: str,
        size_gib: int,
        fmt: disks.Format,
        preallocation: disks.Preallocation,
    ) -> dict[str, Any]:
        """Create an image and hot-plug it; on any failure nothing is left."""
        self._owned(name)
        try:
            self.lockfile.add_disk(name, target, size_gib)
        except AlreadyAllocated as exc:
            raise AgentFault(
                AgentCode.ALREADY_EXISTS, f"{name} already has a disk {target}"
            ) from exc
        except CapacityExceeded as exc:
            raise AgentFault(AgentCode.INSUFFICIENT_CAPACITY, str(exc)) from exc
        except ValueError as exc:
            raise AgentFault(AgentCode.INVALID_REQUEST, str(exc)) from exc
        path = self._disk_path(name, target, fmt)
        try:
            disks.create_image(path, size_gib, fmt, preallocation)
            self._driver.attach(name, disks.disk_xml(path, target, fmt))
        except (disks.DiskError, HypervisorFailure) as exc:
            path.unlink(missing_ok=True)
            self.lockfile.remove_disk(name, target)
            raise AgentFault(AgentCode.HYPERVISOR_ERROR, str(exc)) from exc
        self.on_change()
        return {"name": name, "target": target, "path": str(path), "size_gib": size_gib}

    def detach_disk(self, name: str, target: str) -> dict[str, Any]:
        alloc = self._owned(name)
        if all(t != target for t, _ in alloc.disks):
            raise AgentFault(AgentCode.NOT_FOUND, f"{name} has no disk {target}")
        images = list(self._dir("disks").glob(f"{name}-{target}.*"))
        fmt: disks.Format = "raw" if images and images[0].suffix == ".raw" else "qcow2"
        try:
            self._driver.detach(
                name, disks.disk_xml(self._disk_path(name, target, fmt), target, fmt)
            )
        except HypervisorFailure as exc:
            raise AgentFault(AgentCode.HYPERVISOR_ERROR, str(exc)) from exc
        for image in images:
            image.unlink(missing_ok=True)
        self.lockfile.remove_disk(name, target)
        self.on_change()
        return {"name": name, "target": target, "detached": True}

    def attach_nvme(self, name: str, pci: str) -> dict[str, Any]:
        """PCI passthrough of an NVMe device, holding the attach memory buffer."""
        self._owned(name)
        try:
            address = disks.PciAddress.parse(pci)
            with self.lockfile.hold(f"nvme:{name}:{pci}", disks.NVME_ATTACH_BUFFER_MIB):
                self._driver.attach(name, disks.nvme_hostdev_xml(address))
        except disks.DiskError as exc:
            raise AgentFault(AgentCode.INVALID_REQUEST, str(exc)) from exc
        except CapacityExceeded as exc:
            raise AgentFault(
                AgentCode.INSUFFICIENT_CAPACITY, f"no room for the NVMe attach buffer: {exc}"
            ) from exc
        except HypervisorFailure as exc:
            raise AgentFault(AgentCode.HYPERVISOR_ERROR, str(exc)) from exc
        return {"name": name, "pci": pci, "attached": True}

    def standby(self, name: str, state: str) -> dict[str, Any]:
        """Pause, save or resume a VM; the lockfile books what it holds in
        each state (``Allocation.holds``). Going back to running, the room
        it takes back is booked first (``insufficient_capacity`` if the
        host has none); going to sleep, libvirt first, then the books."""
        alloc = self._owned(name)
        if alloc.state == "creating":
            raise AgentFault(AgentCode.INVALID_REQUEST, f"{name} is still being created")
        if state == alloc.standby and self.status(name)["healthy"]:
            return self.status(name)
        waking = alloc.standby == "saved"
        try:
            if waking:
                self.lockfile.set_standby(name, state)
            try:
                self._driver.standby(name, state)
            except HypervisorFailure:
                if waking:
                    self.lockfile.set_standby(name, alloc.standby)
                raise
            if not waking:
                self.lockfile.set_standby(name, state)
        except CapacityExceeded as exc:
            raise AgentFault(AgentCode.INSUFFICIENT_CAPACITY, str(exc)) from exc
        except HypervisorFailure as exc:
            raise AgentFault(AgentCode.HYPERVISOR_ERROR, str(exc)) from exc
        self.on_change()
        return self.status(name)

    def status(self, name: str) -> dict[str, Any]:
        alloc = self._owned(name)
        try:
            state = self._driver.state(name)
            if alloc.standby == "saved" and state == "shutoff":
                state = "saved" if self._driver.has_saved_image(name) else "shutoff"
        except HypervisorFailure as exc:
            raise AgentFault(AgentCode.HYPERVISOR_ERROR, str(exc)) from exc
        if alloc.state == "creating":
            state = "creating"  # not ready until the create call returns
        if alloc.standby != "running":
            # asleep as it should be: healthy (a saved VM: its image exists)
            return {
                "name": name,
                "state": state,
                "healthy": state == alloc.standby,
                "server_id": alloc.server_id,
                "addresses": [],
                "standby": alloc.standby,
            }
        healthy = state in _HEALTHY_STATES
        if healthy:
            try:
                healthy = self._driver.probe(name)
            except HypervisorFailure:
                healthy = False
        addresses: tuple[str, ...] = ()
        if healthy:
            try:
                addresses = self._driver.guest_addresses(name)
            except HypervisorFailure:
                addresses = ()
        return {
            "name": name,
            "state": state,
            "healthy": healthy,
            "server_id": alloc.server_id,
            "addresses": list(addresses),  # what the guest itself reports
            "standby": "running",
        }

    def reconcile(self) -> list[Finding]:
        """Compare libvirt, the lockfile and the store's records for this host."""
        try:
            domains = self._driver.domains()
        except HypervisorFailure as exc:
            raise AgentFault(AgentCode.HYPERVISOR_ERROR, str(exc)) from exc
        records: dict[str, str] | None = None
        if self.records is not None:
            try:
                records = self.records()
            except WarmCacheError as exc:
                log.warning("reconcile without the store's records: %s", exc)
        findings = reconcile(
            domains, [a.name for a in self.lockfile.all()], records, self.config.reconcile_ignore
        )
        for f in findings:
            log.warning("reconcile: %s %s: %s", f.kind, f.vm, f.detail)
        self.on_findings(findings)
        return findings

    def list(self) -> list[dict[str, Any]]:
        return [self.status(a.name) for a in self.lockfile.all()]
