"""cloud-init NoCloud seeds: the rule's ``user_data`` reaches the VM's first boot.

A seed is a small ISO 9660 volume labelled ``cidata`` holding ``user-data``
(the rule's script, base64-decoded) and ``meta-data`` (instance id and
hostname), attached to the VM as a read-only virtio disk. cloud-init's NoCloud
datasource finds it by that label (written with pycdlib, pure Python: no
genisoimage needed on the hypervisor).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from xml.sax.saxutils import escape

import pycdlib

LABEL = "cidata"


def meta_data(vm: str, instance_id: str | None = None) -> bytes:
    return f"instance-id: {instance_id or vm}\nlocal-hostname: {vm}\n".encode()


def write_seed(
    path: Path,
    vm: str,
    user_data_b64: str,
    network_config: str | None = None,
    instance_id: str | None = None,
) -> Path:
    """Write the NoCloud seed ISO for ``vm`` at ``path`` (atomically);
    ``network_config`` (cloud-init network-config v2) gives it its address;
    a new ``instance_id`` makes cloud-init run its first boot again (a
    recycled VM)."""
    user_data = base64.b64decode(user_data_b64) if user_data_b64 else b""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    files = [
        ("/USERDATA.;1", "user-data", user_data),
        ("/METADATA.;1", "meta-data", meta_data(vm, instance_id)),
    ]
    if network_config is not None:
        files.append(("/NETWORK.;1", "network-config", network_config.encode()))
    for iso_name, name, data in files:
        iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}")
    tmp = path.with_suffix(".tmp")
    iso.write(str(tmp))
    iso.close()
    tmp.replace(path)
    return path


def read_seed(path: Path) -> dict[str, bytes]:
    """The files of a seed (for tests and for reconciliation reports)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = {}
        for name in ("user-data", "meta-data", "network-config"):
            buf = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(buf, joliet_path=f"/{name}")
            except pycdlib.pycdlibexception.PyCdlibInvalidInput:
                continue  # no network-config: the guest keeps DHCP
            out[name] = buf.getvalue()
        out["label"] = iso.pvd.volume_identifier.strip()
        return out
    finally:
        iso.close()


SEED_TARGET = "vdz"  # kept for the seed; hot-plugged disks use vdb..vdy


def seed_xml(path: Path) -> str:
    """The seed as a read-only virtio disk (virtio is what minimal guests
    have drivers for; cloud-init finds it by its label, not its bus)."""
    return (
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='{escape(str(path))}'/><target dev='{SEED_TARGET}' bus='virtio'/>"
        "<readonly/></disk>"
    )
