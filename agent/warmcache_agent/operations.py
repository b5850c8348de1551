"""What an agent does for each request: resource check, then the hypervisor.

Every operation checks the lockfile before touching libvirt, and every
failure after a reservation gives the reservation back and destroys what was
started, so the host's promises and libvirt agree. Errors are ``AgentFault``
with a stable wire code (``warmcache.agent_codes.AgentCode``).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from warmcache.agent_codes import AgentCode
from warmcache.errors import WarmCacheError
from warmcache.images import Image
from warmcache.model import HostFacts
from warmcache.ports import GuestReport, HypervisorDriver, Pinning, VmSpec
from warmcache.wire import (
    AnyRequest,
    AttachDiskRequest,
    AttachNvmeRequest,
    CreateRequest,
    DetachDiskRequest,
    DetachNvmeRequest,
    NamedRequest,
    PrefetchRequest,
    RecycleRequest,
    StandbyRequest,
)
from warmcache_agent import cloudinit, disks, identity, numa
from warmcache_agent.config import AgentConfig, Resources
from warmcache_agent.devices import Devices
from warmcache_agent.faults import AgentFault, fetch_fault
from warmcache_agent.fetch import FetchFailed
from warmcache_agent.images import ImageCache, VmImage, boot_files
from warmcache_agent.libvirt_driver import HypervisorFailure
from warmcache_agent.lockfile import (
    Allocation,
    AlreadyAllocated,
    CapacityExceeded,
    Lockfile,
)
from warmcache_agent.reconcile import Finding, reconcile
from warmcache_agent.vmfiles import BUILD_TARGETS, VmFiles

log = logging.getLogger(__name__)

_HEALTHY_STATES = frozenset({"running"})


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
        self.files = VmFiles(state_dir)
        self._names_lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        room = disks.DiskRoom(self.files.root) if config.disks.check_filesystem else None
        self.lockfile = Lockfile(state_dir / "lockfile.json", usable, room)
        self.images = ImageCache(
            state_dir / "images",
            cache_bytes=int(config.images.cache_gib * disks.GIB),
            timeout_s=config.images.fetch_timeout_s,
            local_dirs=[Path(d) for d in config.images.local_dirs],
            verify=_tls_verify(config.images.ca_file),
            in_use=self.lockfile.images_in_use,
        )
        self.devices = Devices(
            config, driver, self.lockfile, self.files, self._owned, lambda: self.on_change()
        )
        # hot-plug and passthrough (warmcache_agent.devices)
        self.attach_disk = self.devices.attach_disk
        self.detach_disk = self.devices.detach_disk
        self.attach_nvme = self.devices.attach_nvme
        self.detach_nvme = self.devices.detach_nvme
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
        if isinstance(request, DetachNvmeRequest):
            return self.detach_nvme(request.name, request.pci)
        if isinstance(request, PrefetchRequest):
            return self.prefetch(request.image)
        if isinstance(request, StandbyRequest):
            return self.standby(request.name, request.state)
        if isinstance(request, CreateRequest | RecycleRequest):
            vm = request.vm
            spec = VmSpec(vm.name, vm.flavor, vm.user_data, vm.group, vm.network, vm.image)
            return self.create(spec) if isinstance(request, CreateRequest) else self.recycle(spec)
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
            images=tuple(self.images.held()),
            nvme_total=len(self.config.nvme_devices),
            nvme_free=len(self.config.nvme_devices) - sum(len(a.nvme) for a in allocs),
            numa_free=(
                numa.free_per_node(self._topology, [a.pinning for a in allocs if a.pinning])
                if self._topology
                else ()
            ),
        )

    @contextmanager
    def _one_at_a_time(self, name: str) -> Iterator[None]:
        """Operations that make or unmake a VM run one at a time per name: a
        delete that arrives while its create still runs waits for it (it
        once gave the booking back under the create, which then booted a
        domain nobody tracked)."""
        with self._names_lock:
            lock = self._name_locks.setdefault(name, threading.Lock())
        with lock:
            yield

    def _forget_lock(self, name: str) -> None:
        with self._names_lock:
            lock = self._name_locks.get(name)
            if lock is not None and not lock.locked():
                del self._name_locks[name]

    def create(self, spec: VmSpec) -> dict[str, Any]:
        """Book the VM, fetch its image (once per host), make its disks and
        seed, define and boot it from its own root disk, wait until it is
        ready. Any failure gives back the booking and removes everything it
        made (domain, disks, seed), so a refused create leaves nothing."""
        try:
            with self._one_at_a_time(spec.name):
                return self._create(spec)
        finally:
            if self.lockfile.get(spec.name) is None:
                self._forget_lock(spec.name)

    def _create(self, spec: VmSpec) -> dict[str, Any]:
        if spec.name in self.config.reconcile_ignore or (
            self.lockfile.get(spec.name) is None and self._exists(spec.name)
        ):
            # a domain of that name that this agent does not manage: never
            # define over it, nor (on failure) clean it up as if it were ours
            raise AgentFault(
                AgentCode.ALREADY_EXISTS,
                f"a domain {spec.name} not managed by this agent exists on this host",
            )
        f, image = spec.flavor, spec.image
        self._check_boot(spec)
        needs = boot_files(image)
        alloc = Allocation(
            name=spec.name,
            flavor=f.name,
            vcpus=f.vcpus,
            memory_mib=f.memory_mib,
            disk_gib=f.disk_gib + sum(f.extra_disks_gib),
            group=spec.group,
            state="creating",
            build_disks=BUILD_TARGETS[: len(f.extra_disks_gib)],
            images=tuple(sha for sha, _ in needs),
        )
        uncached = sum(size for sha, size in needs if not self.images.path(sha).exists())
        try:
            if self._topology is not None:  # a shape that can never be pinned: say so
                numa.check_shape(self._topology, f.vcpus)
            alloc = self.lockfile.reserve(alloc, self._pinner(f.vcpus), extra_bytes=uncached)
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
        got: VmImage | None = None
        try:
            got = self._fetch(spec)
            devices = self.files.make_disks(
                spec.name,
                f,
                got.base.path if got else None,
                image.format if image is not None else "qcow2",
                got.base.virtual_bytes if got else 0,
            )
            seed = cloudinit.write_seed(
                self.files.seed(spec.name),
                spec.name,
                spec.user_data,
                spec.network.network_config() if spec.network else None,
            )
            server_id = self._driver.define_and_start(
                spec, alloc.pinning, [*devices, cloudinit.seed_xml(seed)], got.boot if got else None
            )
            if self.config.create_delay_s:
                self._sleep(self.config.create_delay_s)
            self._driver.wait_ready(spec.name, self.config.ready_timeout_s)
        except AgentFault:
            self._undo(spec.name)
            raise
        except disks.DiskError as exc:
            self._undo(spec.name)
            raise AgentFault(AgentCode.HYPERVISOR_ERROR, f"disks of {spec.name}: {exc}") from exc
        except HypervisorFailure as exc:
            self._undo(spec.name)
            raise AgentFault(AgentCode.HYPERVISOR_ERROR, str(exc)) from exc
        except BaseException:
            self._undo(spec.name)
            raise
        self.lockfile.activate(spec.name, server_id)
        self.on_change()
        return {**self.status(spec.name), "image_fetch_s": round(got.fetch_s if got else 0.0, 3)}

    def recycle(self, spec: VmSpec) -> dict[str, Any]:
        """Make a VM new where it is (a VM given back to a pool that reuses
        VMs): its domain destroyed, its files (root, extra and hot-plugged
        disks, seed) made again from ``spec.image`` with a new instance id,
        booted and waited for; its booking, pinning and host are kept. On
        any failure the VM is deleted (its booking given back): a VM half
        recycled is never left."""
        with self._one_at_a_time(spec.name):
            alloc = self._owned(spec.name)
            if alloc.state == "creating":
                raise AgentFault(AgentCode.INVALID_REQUEST, f"{spec.name} is still being created")
            if alloc.flavor != spec.flavor.name:
                raise AgentFault(
                    AgentCode.INVALID_REQUEST,
                    f"{spec.name} is a {alloc.flavor}: a recycle keeps its flavor",
                )
            self._check_boot(spec)
            image = spec.image
            try:
                self._driver.destroy(spec.name)
                self.files.remove(spec.name, (*alloc.build_disks, *(t for t, _ in alloc.disks)))
                got = self._fetch(spec)
                devices = self.files.make_disks(
                    spec.name,
                    spec.flavor,
                    got.base.path if got else None,
                    image.format if image is not None else "qcow2",
                    got.base.virtual_bytes if got else 0,
                )
                seed = cloudinit.write_seed(
                    self.files.seed(spec.name),
                    spec.name,
                    spec.user_data,
                    spec.network.network_config() if spec.network else None,
                    instance_id=f"{spec.name}-{uuid.uuid4().hex[:8]}",
                )
                server_id = self._driver.define_and_start(
                    spec,
                    alloc.pinning,
                    [*devices, cloudinit.seed_xml(seed)],
                    got.boot if got else None,
                )
                self._driver.wait_ready(spec.name, self.config.ready_timeout_s)
            except AgentFault:
                self._undo(spec.name)
                raise
            except disks.DiskError as exc:
                self._undo(spec.name)
                raise AgentFault(
                    AgentCode.HYPERVISOR_ERROR, f"disks of {spec.name}: {exc}"
                ) from exc
            except HypervisorFailure as exc:
                self._undo(spec.name)
                raise AgentFault(AgentCode.HYPERVISOR_ERROR, str(exc)) from exc
            except BaseException:
                self._undo(spec.name)
                raise
            self.lockfile.renewed(spec.name, tuple(sha for sha, _ in boot_files(image)), server_id)
        self.on_change()
        return self.status(spec.name)

    def _check_boot(self, spec: VmSpec) -> None:
        """Refuse at once what could never boot: a root disk smaller than its
        image asks, or (real guests) no image and no fallback kernel."""
        image = spec.image
        if image is not None and spec.flavor.disk_gib < image.min_disk_gib:
            raise AgentFault(
                AgentCode.INVALID_REQUEST,
                f"flavor {spec.flavor.name}: disk_gib {spec.flavor.disk_gib} is below image "
                f"{image.id}'s min_disk_gib {image.min_disk_gib}",
            )
        guest = self.config.guest
        if image is None and self.real_guests and not (guest and guest.kernel):
            raise AgentFault(
                AgentCode.INVALID_REQUEST,
                f"flavor {spec.flavor.name} names no image and this agent has no [guest] "
                "kernel: nothing to boot",
            )

    @property
    def real_guests(self) -> bool:
        return bool(getattr(self._driver, "real_guests", False))

    def _fetch(self, spec: VmSpec) -> VmImage | None:
        """The VM's image and boot files from the cache (fetched and
        verified if needed), refused if its root disk cannot hold it."""
        image = spec.image
        if image is None:
            return None
        try:
            got = self.images.for_vm(image)
        except FetchFailed as exc:
            raise fetch_fault(exc) from exc
        if got.base.virtual_bytes > spec.flavor.disk_gib * disks.GIB:
            raise AgentFault(
                AgentCode.INVALID_REQUEST,
                f"image {image.id} is {got.base.virtual_bytes / disks.GIB:.1f} GiB, larger "
                f"than flavor {spec.flavor.name}'s {spec.flavor.disk_gib} GiB root disk",
            )
        return got

    def prefetch(self, image: Image) -> dict[str, Any]:
        """Fetch and verify ``image`` (and its boot files) into the cache now."""
        try:
            spent = self.images.for_vm(image).fetch_s
        except FetchFailed as exc:
            raise fetch_fault(exc) from exc
        self.on_change()  # the facts list the images held
        return {"image": image.id, "sha256": image.sha256, "fetch_s": round(spent, 3)}

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

    def _undo(self, name: str) -> None:
        try:
            self._driver.destroy(name)
        except HypervisorFailure:
            log.exception("could not destroy %s after a failed create", name)
        self.files.remove(name)
        self.lockfile.release(name)

    def delete(self, name: str) -> dict[str, Any]:
        """Destroy the VM, remove every disk and file of it, then give its
        booking back (its CPUs, memory, disks and devices). A create of the
        VM still running is waited for first."""
        self._owned(name)
        with self._one_at_a_time(name):
            alloc = self._owned(name)  # the create may have failed and undone it meanwhile
            try:
                self._driver.destroy(name)
            except HypervisorFailure as exc:
                raise AgentFault(AgentCode.HYPERVISOR_ERROR, str(exc)) from exc
            self.files.remove(name, (*alloc.build_disks, *(t for t, _ in alloc.disks)))
            self.lockfile.release(name)
        self._forget_lock(name)
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
        report = GuestReport()
        if healthy:
            try:
                report = self._driver.guest_report(name)
            except HypervisorFailure:
                report = GuestReport()
        return {
            "name": name,
            "state": state,
            "healthy": healthy,
            "server_id": alloc.server_id,
            "addresses": list(report.addresses),  # what the guest itself reports
            "standby": "running",
            "image_version": report.image_version,
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


def _tls_verify(ca_file: str) -> ssl.SSLContext | bool:
    """The system's CAs, or the image server's own CA."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else True
