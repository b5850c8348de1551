"""The agent's lockfile: what this host has promised, in two sections.

* ``aggregate``: CPU, memory and disk allocated, *including creates still in
  progress*. Checking and reserving happen under one short lock, so two
  concurrent creates can never both take the last slot (DESIGN §12.5).
* ``placement``: per VM, what it holds (flavor resources, group, state,
  NUMA node and pinned CPUs, its disks, the cached images it boots from,
  the NVMe devices passed through to it).

Disks are booked at their full virtual size (a VM's ``disk_gib`` is its
root disk plus the extra disks made at build; ``disks`` the ones
hot-plugged since). With a ``DiskRoom``, a reservation that the filesystem
could not hold, every promised disk fully written, is refused in the same
critical section (``warmcache_agent.disks``).

Both are persisted to ``lockfile.json`` (write to a temp file, fsync,
rename) after every change, so a restarted agent recovers its promises.
On recovery, an entry left ``creating`` by a crash is kept only if libvirt
has the domain; a domain libvirt has but the lockfile lacks is left for
reconciliation to report, never adopted or deleted silently.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from warmcache.ports import Pinning
from warmcache_agent.config import Resources
from warmcache_agent.disks import GIB, DiskRoom


@dataclass(frozen=True)
class Allocation:
    name: str
    flavor: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    group: str | None
    state: str  # creating | active
    server_id: str = ""
    numa_node: int | None = None
    cpus: tuple[int, ...] = ()
    disks: tuple[tuple[str, int], ...] = ()  # hot-plugged disks: (target, GiB)
    standby: str = "running"  # running | paused | saved
    build_disks: tuple[str, ...] = ()  # targets of the extra disks made at build (vdb, ...)
    images: tuple[str, ...] = ()  # sha256 of the cached files it boots from (never evicted)
    nvme: tuple[str, ...] = ()  # PCI addresses of the host's NVMe devices passed through

    @property
    def pinning(self) -> Pinning | None:
        return Pinning(self.numa_node, self.cpus) if self.numa_node is not None else None

    def holds(self) -> Resources:
        """What this VM holds on the host in its standby state. Paused: all
        of it (memory kept, CPUs booked for an instant resume). Saved: its
        disks and its saved image (as large as its memory), no memory and
        no CPU, unless pinned: pinned CPU ids stay its own, so that a
        restore needs no re-pinning."""
        disk = self.disk_gib + sum(g for _, g in self.disks)
        if self.standby != "saved":
            return Resources.model_construct(
                vcpus=self.vcpus, memory_mib=self.memory_mib, disk_gib=disk
            )
        return Resources.model_construct(
            vcpus=self.vcpus if self.numa_node is not None else 0,
            memory_mib=0,
            disk_gib=disk + saved_image_gib(self.memory_mib),
        )


def saved_image_gib(memory_mib: int) -> int:
    """Disk booked for a saved VM's memory image (at most its memory)."""
    return -(-memory_mib // 1024)


class CapacityExceeded(Exception):
    def __init__(self, name: str, free: Resources, wanted: Resources) -> None:
        self.free = free
        self.wanted = wanted
        super().__init__(
            f"no room for {name}: wants {wanted.vcpus} vCPU / {wanted.memory_mib} MiB / "
            f"{wanted.disk_gib} GiB, free {free.vcpus} / {free.memory_mib} / {free.disk_gib}"
        )


class FilesystemFull(CapacityExceeded):
    """The books have room, the filesystem under the VMs' disks does not."""

    def __init__(self, name: str, missing_bytes: int, folder: str) -> None:
        Exception.__init__(
            self,
            f"no room for {name}'s disks: the filesystem of {folder} is "
            f"{missing_bytes / GIB:.1f} GiB short of holding every promised disk fully written",
        )
        self.missing_bytes = missing_bytes


class AlreadyAllocated(Exception):
    pass


class DeviceTaken(Exception):
    """Another VM has the NVMe device."""


def _positive(what: str, *amounts: int) -> None:
    """The books take only positive amounts. Requests are validated long
    before (warmcache.model's sizes), but a negative size once made free
    capacity grow (extra_disks_gib [-100000]: 101,871 GiB free of 1,950),
    so the books guard themselves too."""
    if any(isinstance(a, bool) or not isinstance(a, int) or a < 0 for a in amounts):
        raise ValueError(f"{what}: sizes must be non-negative integers, got {amounts}")


class Lockfile:
    def __init__(self, path: Path, usable: Resources, disk_room: DiskRoom | None = None) -> None:
        self.path = path
        self.usable = usable
        self.disk_room = disk_room
        self._lock = threading.Lock()
        self._vms: dict[str, Allocation] = {}
        # Short-lived extra reservations (e.g. the memory buffer an NVMe
        # attach needs); counted like VMs, never persisted.
        self._holds: dict[str, Resources] = {}
        if path.exists():
            raw = json.loads(path.read_text())
            self._vms = {
                a["name"]: Allocation(
                    **{
                        **a,
                        "cpus": tuple(a.get("cpus", ())),
                        "disks": tuple(tuple(d) for d in a.get("disks", ())),
                        **{
                            k: tuple(a.get(k, ()))
                            for k in ("build_disks", "images", "nvme")
                            if k in a
                        },
                    }
                )
                for a in raw.get("placement", [])
            }

    def _allocated(self) -> Resources:
        held = [a.holds() for a in self._vms.values()] + list(self._holds.values())
        return Resources.model_construct(
            vcpus=sum(h.vcpus for h in held),
            memory_mib=sum(h.memory_mib for h in held),
            disk_gib=sum(h.disk_gib for h in held),
        )

    def set_standby(self, name: str, standby: str) -> Allocation:
        """Book ``name`` in its new standby state: atomic, and refused
        (``CapacityExceeded``) if the host has no room for what it takes
        back (a saved VM restored needs its memory again)."""
        with self._lock:
            current = self._vms[name]
            after = replace(current, standby=standby)
            free, before, wants = self._free(), current.holds(), after.holds()
            more = Resources.model_construct(
                vcpus=max(0, wants.vcpus - before.vcpus),
                memory_mib=max(0, wants.memory_mib - before.memory_mib),
                disk_gib=max(0, wants.disk_gib - before.disk_gib),
            )
            if (
                more.vcpus > free.vcpus
                or more.memory_mib > free.memory_mib
                or more.disk_gib > free.disk_gib
            ):
                raise CapacityExceeded(name, free, more)
            self._vms[name] = after
            self._persist()
            return after

    def free(self) -> Resources:
        with self._lock:
            return self._free()

    def _free(self) -> Resources:
        used = self._allocated()
        return Resources.model_construct(
            vcpus=self.usable.vcpus - used.vcpus,
            memory_mib=self.usable.memory_mib - used.memory_mib,
            disk_gib=self.usable.disk_gib - used.disk_gib,
        )

    def _filesystem_holds(self, name: str, more_gib: int, extra_bytes: int = 0) -> None:
        """``FilesystemFull`` unless the filesystem can also hold ``more_gib``
        of disks (and ``extra_bytes`` more, e.g. an image to download)."""
        if self.disk_room is None:
            return
        promised = sum(a.holds().disk_gib for a in self._vms.values()) + more_gib
        short = self.disk_room.shortfall(promised * GIB + extra_bytes)
        if short:
            raise FilesystemFull(name, short, str(self.disk_room.folder))

    def reserve(
        self,
        alloc: Allocation,
        pin: Callable[[list[Pinning]], Pinning | None] | None = None,
        *,
        extra_bytes: int = 0,
    ) -> Allocation:
        """Check and take capacity for a VM about to be created (atomic).

        ``pin`` chooses the VM's NUMA pinning given every pinning already
        promised, inside the same critical section, so two concurrent
        creates can never be given the same CPUs. ``extra_bytes``: disk the
        create needs beyond its disks' (an image it must download first)."""
        _positive(alloc.name, alloc.vcpus, alloc.memory_mib, alloc.disk_gib)
        with self._lock:
            if alloc.name in self._vms:
                raise AlreadyAllocated(alloc.name)
            free = self._free()
            wanted = Resources.model_construct(
                vcpus=alloc.vcpus, memory_mib=alloc.memory_mib, disk_gib=alloc.disk_gib
            )
            if (
                alloc.vcpus > free.vcpus
                or alloc.memory_mib > free.memory_mib
                or alloc.disk_gib > free.disk_gib
            ):
                raise CapacityExceeded(alloc.name, free, wanted)
            self._filesystem_holds(alloc.name, alloc.disk_gib, extra_bytes)
            if pin is not None:
                chosen = pin([a.pinning for a in self._vms.values() if a.pinning])
                if chosen is not None:
                    alloc = replace(alloc, numa_node=chosen.node, cpus=chosen.cpus)
            self._vms[alloc.name] = alloc
            self._persist()
            return alloc

    def activate(self, name: str, server_id: str) -> None:
        with self._lock:
            current = self._vms[name]
            self._vms[name] = replace(current, state="active", server_id=server_id)
            self._persist()

    def release(self, name: str) -> bool:
        with self._lock:
            found = self._vms.pop(name, None) is not None
            if found:
                self._persist()
            return found

    def add_disk(self, name: str, target: str, gib: int) -> None:
        """Check and take disk capacity for a disk about to be attached."""
        _positive(f"{name}:{target}", gib)
        with self._lock:
            current = self._vms[name]
            if any(t == target for t, _ in current.disks):
                raise AlreadyAllocated(f"{name}:{target}")
            free = self._free()
            if gib > free.disk_gib:
                wanted = Resources.model_construct(vcpus=0, memory_mib=0, disk_gib=gib)
                raise CapacityExceeded(f"{name}:{target}", free, wanted)
            self._filesystem_holds(f"{name}:{target}", gib)
            self._vms[name] = replace(current, disks=(*current.disks, (target, gib)))
            self._persist()

    def remove_disk(self, name: str, target: str) -> bool:
        with self._lock:
            current = self._vms.get(name)
            if current is None or all(t != target for t, _ in current.disks):
                return False
            self._vms[name] = replace(
                current, disks=tuple(d for d in current.disks if d[0] != target)
            )
            self._persist()
            return True

    def book_nvme(self, name: str, pci: str, devices: tuple[str, ...]) -> None:
        """Give ``name`` the host's NVMe device ``pci`` (atomic): refused
        with ``ValueError`` if it is not one of ``devices``, ``DeviceTaken``
        if a VM has it."""
        with self._lock:
            if pci not in devices:
                raise ValueError(
                    f"{pci} is not one of this host's NVMe devices "
                    f"({', '.join(devices) or 'none configured'})"
                )
            holder = next((a.name for a in self._vms.values() if pci in a.nvme), None)
            if holder is not None:
                raise DeviceTaken(f"{pci} is passed through to {holder}")
            current = self._vms[name]
            self._vms[name] = replace(current, nvme=(*current.nvme, pci))
            self._persist()

    def free_nvme(self, name: str, pci: str) -> bool:
        with self._lock:
            current = self._vms.get(name)
            if current is None or pci not in current.nvme:
                return False
            self._vms[name] = replace(current, nvme=tuple(d for d in current.nvme if d != pci))
            self._persist()
            return True

    def renewed(self, name: str, images: tuple[str, ...], server_id: str) -> Allocation:
        """A recycled VM's booking: the same resources and pinning, the
        images it boots now, no hot-plugged disk, running."""
        with self._lock:
            current = self._vms[name]
            after = replace(
                current,
                images=images,
                server_id=server_id,
                disks=(),
                standby="running",
                state="active",
            )
            self._vms[name] = after
            self._persist()
            return after

    def images_in_use(self) -> set[str]:
        """Every cached file a VM of this host boots from."""
        with self._lock:
            return {sha for a in self._vms.values() for sha in a.images}

    @contextmanager
    def hold(self, key: str, memory_mib: int) -> Iterator[None]:
        """Reserve ``memory_mib`` for the duration of the block (or refuse)."""
        _positive(key, memory_mib)
        with self._lock:
            free = self._free()
            if memory_mib > free.memory_mib:
                wanted = Resources.model_construct(vcpus=0, memory_mib=memory_mib, disk_gib=0)
                raise CapacityExceeded(key, free, wanted)
            self._holds[key] = Resources.model_construct(vcpus=0, memory_mib=memory_mib, disk_gib=0)
        try:
            yield
        finally:
            with self._lock:
                self._holds.pop(key, None)

    def get(self, name: str) -> Allocation | None:
        with self._lock:
            return self._vms.get(name)

    def all(self) -> list[Allocation]:
        with self._lock:
            return sorted(self._vms.values(), key=lambda a: a.name)

    def recover(self, domains: set[str]) -> list[str]:
        """Drop ``creating`` entries whose domain never appeared; returns them."""
        with self._lock:
            dropped = [
                n for n, a in self._vms.items() if a.state == "creating" and n not in domains
            ]
            for name in dropped:
                del self._vms[name]
            for name, a in list(self._vms.items()):
                if a.state == "creating":
                    self._vms[name] = replace(a, state="active")
            self._persist()
            return dropped

    def _persist(self) -> None:
        used = self._allocated()
        doc = {
            "aggregate": {"usable": self.usable.model_dump(), "allocated": used.model_dump()},
            "placement": [asdict(a) for a in sorted(self._vms.values(), key=lambda a: a.name)],
        }
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(doc, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
