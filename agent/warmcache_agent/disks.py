"""Disks: every VM's own root and extra disks, made with ``qemu-img``;
disks hot-plugged as virtio disks; NVMe devices passed through as PCI
``<hostdev>``.

Where they live: each VM has a folder ``<state_dir>/vms/<name>/`` holding
``root.qcow2`` (vda), its extra disks (``vdb.qcow2``, ..., made at build or
hot-plugged) and its cloud-init seed (``seed.iso``); deleting the VM removes
that folder and nothing else. The root disk is a qcow2 overlay whose backing
file is the verified image in the host's cache (``warmcache_agent.images``;
writes land in the overlay, never in the image), or, when the flavor asks
for preallocation, a full copy of the image allocated that way.

What the books hold (``warmcache_agent.lockfile``): each VM's disks at
their full virtual size, however little of them is written yet; and with
``disks.check_filesystem`` a create is refused unless the filesystem
holding the VMs' folders can hold every promised disk fully allocated
(``DiskRoom``): thin disks never overcommit the host's real disk.

Passing a PCI device through makes QEMU pin all of the guest's memory for
DMA, so while an NVMe device is being attached the host needs headroom
beyond the VM's own memory: the agent reserves a temporary memory buffer in
its lockfile for the duration of the attach and gives it back afterwards
(``NVME_ATTACH_BUFFER_MIB``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

Format = Literal["qcow2", "raw"]
Preallocation = Literal["off", "metadata", "falloc", "full"]

GIB = 1 << 30
NVME_ATTACH_BUFFER_MIB = 1024
_PCI = re.compile(r"^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")


class DiskError(Exception):
    pass


@dataclass(frozen=True)
class PciAddress:
    domain: int
    bus: int
    slot: int
    function: int

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        """``0000:3b:00.0`` or ``3b:00.0``."""
        m = _PCI.fullmatch(text.lower())
        if not m:
            raise DiskError(f"not a PCI address: {text!r} (want [DDDD:]BB:SS.F)")
        return cls(
            int(m.group(1) or "0", 16), int(m.group(2), 16), int(m.group(3), 16), int(m.group(4))
        )

    @property
    def canonical(self) -> str:
        """``0000:3b:00.0``: one spelling per device (the books key on it)."""
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"


def _qemu_img(*args: str) -> None:
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise DiskError("qemu-img is not installed (apt-get install qemu-utils)")
    result = subprocess.run(
        [qemu_img, *args], capture_output=True, text=True, check=False, timeout=3600
    )
    if result.returncode != 0:
        raise DiskError(f"qemu-img {args[0]} failed: {result.stderr.strip()}")


def create_image(
    path: Path, size_gib: int, fmt: Format = "qcow2", preallocation: Preallocation = "off"
) -> Path:
    """``qemu-img create`` an image (raw supports off|falloc|full; qcow2 all four)."""
    if fmt == "raw" and preallocation == "metadata":
        raise DiskError("raw images have no metadata to preallocate")
    _qemu_img(
        "create", "-q", "-f", fmt, "-o", f"preallocation={preallocation}", str(path), f"{size_gib}G"
    )
    return path


def create_root(
    path: Path,
    size_gib: int,
    base: Path | None = None,
    base_format: Format = "qcow2",
    preallocation: Preallocation = "off",
    base_virtual_bytes: int = 0,
) -> Path:
    """A VM's root disk of ``size_gib``: a thin qcow2 overlay of ``base``
    (the absolute path of the cached image: a relative backing path would
    resolve against the overlay's folder), a full copy of it allocated per
    ``preallocation``, or, without a base, a blank disk."""
    if base is None:
        return create_image(path, size_gib, "qcow2", preallocation)
    if preallocation == "off":
        _qemu_img(
            "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base.resolve()),
            str(path), f"{size_gib}G",
        )  # fmt: skip
        return path
    _qemu_img(
        "convert", "-q", "-f", base_format, "-O", "qcow2",
        "-o", f"preallocation={preallocation}", str(base), str(path),
    )  # fmt: skip
    if size_gib * GIB > base_virtual_bytes:  # qemu-img grows, never shrinks, with preallocation
        _qemu_img("resize", "-q", f"--preallocation={preallocation}", str(path), f"{size_gib}G")
    return path


def written_bytes(folder: Path) -> int:
    """What the files under ``folder`` take on disk now (allocated blocks)."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


class DiskRoom:
    """Can the filesystem holding ``folder`` keep the disks' promises? The
    disks promised (at full size) minus what they have written already is
    what they may still grow by; that and a new VM's disks must fit in the
    filesystem's free space."""

    def __init__(
        self, folder: Path, statvfs: Callable[[str], os.statvfs_result] = os.statvfs
    ) -> None:
        self.folder = folder
        self._statvfs = statvfs

    def free_bytes(self) -> int:
        st = self._statvfs(str(self.folder))
        return st.f_bavail * st.f_frsize

    def shortfall(self, promised_bytes: int) -> int:
        """Bytes missing for ``promised_bytes`` of disks to be written in
        full (0: they fit)."""
        room = self.free_bytes() + written_bytes(self.folder)
        return max(0, promised_bytes - room)


def disk_xml(path: Path, target: str, fmt: Format = "qcow2") -> str:
    if not re.fullmatch(r"vd[a-z]{1,2}", target):
        raise DiskError(f"virtio disk targets are vdb, vdc, ...; got {target!r}")
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}' "
        f"cache='none'/><source file='{escape(str(path))}'/>"
        f"<target dev='{target}' bus='virtio'/></disk>"
    )


def nvme_hostdev_xml(address: PciAddress) -> str:
    a = address
    return (
        "<hostdev mode='subsystem' type='pci' managed='yes'><driver name='vfio'/>"
        f"<source><address domain='0x{a.domain:04x}' bus='0x{a.bus:02x}' "
        f"slot='0x{a.slot:02x}' function='0x{a.function:x}'/></source></hostdev>"
    )
