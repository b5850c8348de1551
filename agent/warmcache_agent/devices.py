"""Devices of a running VM: disks hot-plugged and unplugged, NVMe devices
passed through (``warmcache_agent.disks`` makes the images and the XML).
Each books first (``warmcache_agent.lockfile``) and gives the booking back
on any failure, so a refused or failed change leaves nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from warmcache.agent_codes import AgentCode
from warmcache.ports import HypervisorDriver
from warmcache_agent import disks
from warmcache_agent.config import AgentConfig
from warmcache_agent.faults import AgentFault
from warmcache_agent.libvirt_driver import HypervisorFailure
from warmcache_agent.lockfile import (
    Allocation,
    AlreadyAllocated,
    CapacityExceeded,
    DeviceTaken,
    Lockfile,
)
from warmcache_agent.vmfiles import VmFiles


class Devices:
    def __init__(
        self,
        config: AgentConfig,
        driver: HypervisorDriver,
        lockfile: Lockfile,
        files: VmFiles,
        owned: Callable[[str], Allocation],
        changed: Callable[[], None],
    ) -> None:
        self.config = config
        self._driver = driver
        self.lockfile = lockfile
        self.files = files
        self._owned = owned
        self.on_change = changed

    def attach_disk(
        self,
        name: str,
        target: str,
        size_gib: int,
        fmt: disks.Format,
        preallocation: disks.Preallocation,
    ) -> dict[str, Any]:
        """Create an image and hot-plug it; on any failure nothing is left."""
        if target in self._owned(name).build_disks:
            raise AgentFault(AgentCode.ALREADY_EXISTS, f"{name} already has a disk {target}")
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
        path = self.files.disk(name, target, fmt)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
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
        images = self.files.disk_images(name, target)
        fmt: disks.Format = "raw" if images and images[0].suffix == ".raw" else "qcow2"
        path = images[0] if images else self.files.disk(name, target, fmt)
        try:
            self._driver.detach(name, disks.disk_xml(path, target, fmt))
        except HypervisorFailure as exc:
            raise AgentFault(AgentCode.HYPERVISOR_ERROR, str(exc)) from exc
        for image in images:
            image.unlink(missing_ok=True)
        self.lockfile.remove_disk(name, target)
        self.on_change()
        return {"name": name, "target": target, "detached": True}

    def attach_nvme(self, name: str, pci: str) -> dict[str, Any]:
        """PCI passthrough of one of the host's NVMe devices (config
        ``nvme_devices``), booked to this VM first (a device is one VM's at
        a time) and holding the attach memory buffer while it attaches."""
        self._owned(name)
        try:
            address = disks.PciAddress.parse(pci)
            self.lockfile.book_nvme(name, address.canonical, self.config.nvme_devices)
        except (disks.DiskError, ValueError) as exc:
            raise AgentFault(AgentCode.INVALID_REQUEST, str(exc)) from exc
        except DeviceTaken as exc:
            raise AgentFault(AgentCode.INSUFFICIENT_CAPACITY, str(exc)) from exc
        try:
            with self.lockfile.hold(f"nvme:{name}:{pci}", disks.NVME_ATTACH_BUFFER_MIB):
                self._driver.attach(name, disks.nvme_hostdev_xml(address))
        except CapacityExceeded as exc:
            self.lockfile.free_nvme(name, address.canonical)
            raise AgentFault(
                AgentCode.INSUFFICIENT_CAPACITY, f"no room for the NVMe attach buffer: {exc}"
            ) from exc
        except HypervisorFailure as exc:
            self.lockfile.free_nvme(name, address.canonical)
            raise AgentFault(AgentCode.HYPERVISOR_ERROR, str(exc)) from exc
        self.on_change()
        return {"name": name, "pci": address.canonical, "attached": True}

    def detach_nvme(self, name: str, pci: str) -> dict[str, Any]:
        alloc = self._owned(name)
        try:
            address = disks.PciAddress.parse(pci)
        except disks.DiskError as exc:
            raise AgentFault(AgentCode.INVALID_REQUEST, str(exc)) from exc
        if address.canonical not in alloc.nvme:
            raise AgentFault(AgentCode.NOT_FOUND, f"{name} has no NVMe device {pci}")
        try:
            self._driver.detach(name, disks.nvme_hostdev_xml(address))
        except HypervisorFailure as exc:
            raise AgentFault(AgentCode.HYPERVISOR_ERROR, str(exc)) from exc
        self.lockfile.free_nvme(name, address.canonical)
        self.on_change()
        return {"name": name, "pci": address.canonical, "detached": True}
