"""Where a VM's files live on its host, and making them: one folder per VM,
``<state_dir>/vms/<name>/``, with ``root.qcow2`` (vda), ``vdb.qcow2``...
(extra disks, made at build or hot-plugged) and ``seed.iso`` (cloud-init).
Removing a VM removes its folder: nothing of another VM, nothing of the
image cache. (Agents before this layout kept ``seeds/<name>.iso`` and
``disks/<name>-<target>.<format>``; those exact names are removed too.)
"""

from __future__ import annotations

import shutil
import string
from pathlib import Path

from warmcache.model import Flavor
from warmcache_agent import disks

ROOT_TARGET = "vda"
# Extra disks of a flavor, in order: vdb, vdc, ... (vdz is the seed's).
BUILD_TARGETS = tuple(f"vd{c}" for c in string.ascii_lowercase[1:25])


class VmFiles:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.root = state_dir / "vms"
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, name: str) -> Path:
        return self.root / name

    def disk(self, name: str, target: str, fmt: disks.Format = "qcow2") -> Path:
        return self.folder(name) / f"{'root' if target == ROOT_TARGET else target}.{fmt}"

    def seed(self, name: str) -> Path:
        return self.folder(name) / "seed.iso"

    def disk_images(self, name: str, target: str) -> list[Path]:
        """The image file(s) of one of the VM's disks (either layout)."""
        return [
            *self.folder(name).glob(f"{target}.*"),
            *(self.state_dir / "disks").glob(f"{name}-{target}.*"),
        ]

    def make_disks(
        self,
        name: str,
        flavor: Flavor,
        image: Path | None,
        image_format: disks.Format = "qcow2",
        image_virtual_bytes: int = 0,
    ) -> list[str]:
        """The VM's folder, its root disk (from ``image``, see
        ``disks.create_root``) and its flavor's extra disks; returns their
        device XML, root first. On failure the caller removes the folder."""
        folder = self.folder(name)
        folder.mkdir(parents=True, exist_ok=False)
        root = disks.create_root(
            self.disk(name, ROOT_TARGET),
            flavor.disk_gib,
            image,
            image_format,
            flavor.preallocation,
            image_virtual_bytes,
        )
        devices = [disks.disk_xml(root, ROOT_TARGET)]
        for target, gib in zip(BUILD_TARGETS, flavor.extra_disks_gib, strict=False):
            path = disks.create_image(self.disk(name, target), gib, "qcow2", flavor.preallocation)
            devices.append(disks.disk_xml(path, target))
        return devices

    def remove(self, name: str, targets: tuple[str, ...] = ()) -> None:
        """Every file of the VM, and only its own."""
        shutil.rmtree(self.folder(name), ignore_errors=True)
        (self.state_dir / "seeds" / f"{name}.iso").unlink(missing_ok=True)
        legacy = self.state_dir / "disks"
        for target in targets:
            for fmt in ("qcow2", "raw"):
                (legacy / f"{name}-{target}.{fmt}").unlink(missing_ok=True)
