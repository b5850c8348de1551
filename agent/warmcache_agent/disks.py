"""Disks: images made with ``qemu-img``, hot-plugged as virtio disks, and
NVMe devices passed through as PCI ``<hostdev>``.

Passing a PCI device through makes QEMU pin all of the guest's memory for
DMA, so while an NVMe device is being attached the host needs headroom
beyond the VM's own memory: the agent reserves a temporary memory buffer in
its lockfile for the duration of the attach and gives it back afterwards
(``NVME_ATTACH_BUFFER_MIB``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

Format = Literal["qcow2", "raw"]
Preallocation = Literal["off", "metadata", "falloc", "full"]

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
        m = _PCI.match(text.lower())
        if not m:
            raise DiskError(f"not a PCI address: {text!r} (want [DDDD:]BB:SS.F)")
        return cls(
            int(m.group(1) or "0", 16), int(m.group(2), 16), int(m.group(3), 16), int(m.group(4))
        )


def create_image(
    path: Path, size_gib: int, fmt: Format = "qcow2", preallocation: Preallocation = "off"
) -> Path:
    """``qemu-img create`` an image (raw supports off|falloc|full; qcow2 all four)."""
    if fmt == "raw" and preallocation == "metadata":
        raise DiskError("raw images have no metadata to preallocate")
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise DiskError("qemu-img is not installed (apt-get install qemu-utils)")
    result = subprocess.run(
        [
            qemu_img,
            "create",
            "-q",
            "-f",
            fmt,
            "-o",
            f"preallocation={preallocation}",
            str(path),
            f"{size_gib}G",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DiskError(f"qemu-img create failed: {result.stderr.strip()}")
    return path


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
