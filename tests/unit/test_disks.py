"""Disks, NVMe passthrough XML and cloud-init seeds on the agent."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from warmcache.model import Flavor
from warmcache.ports import VmSpec
from warmcache_agent import cloudinit, disks
from warmcache_agent.config import AgentConfig, DiskConfig, Resources
from warmcache_agent.faults import AgentFault
from warmcache_agent.operations import HostAgentService

pytestmark = [pytest.mark.libvirt, pytest.mark.usefixtures("libvirt_available")]

SMALL = Flavor(name="small", vcpus=2, memory_mib=2048, disk_gib=10)


class RecordingDriver:
    """libvirt's test driver cannot hot-plug; record what would be plugged."""

    def __init__(self, host: Any = None) -> None:
        from warmcache_agent.libvirt_driver import LibvirtDriver

        self.inner = LibvirtDriver("test:///default")
        self.attached: list[str] = []
        self.detached: list[str] = []
        self.during_attach: list[int] = []
        self.host = host

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def attach(self, name: str, xml: str) -> None:
        if self.host is not None:
            self.during_attach.append(self.host.lockfile.free().memory_mib)
        self.attached.append(xml)

    def detach(self, name: str, xml: str) -> None:
        self.detached.append(xml)


def make_host(tmp_path: Path, driver: Any = None, memory_mib: int = 16384) -> HostAgentService:
    from warmcache_agent.libvirt_driver import LibvirtDriver

    cfg = AgentConfig(
        # a pretend host, larger than this machine's disk: no filesystem check
        disks=DiskConfig(check_filesystem=False),
        hypervisor="h1",
        rack="r1",
        az="az1",
        state_dir=str(tmp_path),
        capacity=Resources(vcpus=8, memory_mib=memory_mib, disk_gib=100),
        reserved=Resources(vcpus=2, memory_mib=1024, disk_gib=10),
        nvme_devices=("0000:3b:00.0", "3c:00.0"),
    )
    host = HostAgentService(cfg, driver or LibvirtDriver("test:///default"))
    if isinstance(driver, RecordingDriver):
        driver.host = host
    return host


def vm() -> str:
    return f"vm-{uuid.uuid4().hex[:8]}"


def test_user_data_reaches_the_vm_through_a_nocloud_seed(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    name, script = vm(), b"#!/bin/sh\necho warmcache-ready\n"
    host.create(VmSpec(name, SMALL, user_data=base64.b64encode(script).decode()))
    seed = host.files.seed(name)
    files = cloudinit.read_seed(seed)
    assert files["user-data"] == script and files["label"] == b"cidata"
    assert f"instance-id: {name}".encode() in files["meta-data"]
    dom = ET.fromstring(host._driver._conn.lookupByName(name).XMLDesc())  # type: ignore[attr-defined]
    disk = dom.find("devices/disk/target[@dev='vdz']/../source")
    assert disk is not None and disk.get("file") == str(seed)
    host.delete(name)
    assert not seed.exists()


def test_the_address_reaches_the_vm_as_network_config(tmp_path: Path) -> None:
    """Through the agent's wire, as the leader sends it: the seed carries a
    network-config (v2, static) with the VM's address; without one, none."""
    from warmcache_agent.daemon import handle_line

    def send(host: HostAgentService, request: dict[str, Any]) -> dict[str, Any]:
        return handle_line(host, json.dumps(request).encode())

    host = make_host(tmp_path)
    with_address, without = vm(), vm()
    network = {"address": "10.20.0.7", "prefix": 22, "gateway": "10.20.0.1", "dns": ["10.0.0.53"]}
    flavor = SMALL.model_dump(mode="json")
    send(host, {"op": "create", "vm": {"name": with_address, "flavor": flavor, "network": network}})
    send(host, {"op": "create", "vm": {"name": without, "flavor": flavor}})
    files = cloudinit.read_seed(host.files.seed(with_address))
    config = json.loads(files["network-config"])
    assert config["version"] == 2
    assert config["ethernets"]["primary"]["addresses"] == ["10.20.0.7/22"]
    assert config["ethernets"]["primary"]["routes"] == [{"to": "0.0.0.0/0", "via": "10.20.0.1"}]
    assert "network-config" not in cloudinit.read_seed(host.files.seed(without))
    bad = send(
        host,
        {
            "op": "create",
            "vm": {
                "name": vm(),
                "flavor": flavor,
                "network": {**network, "address": "10.20.0.7\n- x"},
            },
        },
    )
    assert bad["ok"] is False and bad["error"] == "invalid_request"
    for name in (with_address, without):
        host.delete(name)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) missing")
@pytest.mark.parametrize(
    "fmt,prealloc",
    [
        ("qcow2", "off"),
        ("qcow2", "metadata"),
        ("qcow2", "falloc"),
        ("raw", "off"),
        ("raw", "falloc"),
    ],
)
def test_images_are_made_by_qemu_img(
    tmp_path: Path, fmt: disks.Format, prealloc: disks.Preallocation
) -> None:
    path = disks.create_image(tmp_path / f"d.{fmt}", 1, fmt, prealloc)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["format"] == fmt and info["virtual-size"] == 1 << 30


def test_raw_images_have_no_metadata_to_preallocate(tmp_path: Path) -> None:
    with pytest.raises(disks.DiskError):
        disks.create_image(tmp_path / "d.raw", 1, "raw", "metadata")


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) missing")
def test_attach_and_detach_keep_the_books(tmp_path: Path) -> None:
    driver = RecordingDriver()
    host = make_host(tmp_path, driver)
    name = vm()
    host.create(VmSpec(name, SMALL))
    before = host.facts().disk_gib_free
    out = host.attach_disk(name, "vdb", 5, "qcow2", "metadata")
    assert Path(out["path"]).exists() and host.facts().disk_gib_free == before - 5
    xml = ET.fromstring(driver.attached[-1])
    assert xml.find("target").get("bus") == "virtio"  # type: ignore[union-attr]
    with pytest.raises(AgentFault) as err:
        host.attach_disk(name, "vdb", 5, "qcow2", "off")
    assert err.value.code == "already_exists"
    with pytest.raises(AgentFault) as err:
        host.attach_disk(name, "vdc", 500, "qcow2", "off")
    assert err.value.code == "insufficient_capacity"
    host.detach_disk(name, "vdb")
    assert not Path(out["path"]).exists() and host.facts().disk_gib_free == before
    with pytest.raises(AgentFault) as err:
        host.detach_disk(name, "vdb")
    assert err.value.code == "not_found"


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) missing")
def test_a_failed_hot_plug_leaves_nothing_behind(tmp_path: Path) -> None:
    host = make_host(tmp_path)  # the test driver refuses hot-plug
    name = vm()
    host.create(VmSpec(name, SMALL))
    before = host.facts().disk_gib_free
    with pytest.raises(AgentFault) as err:
        host.attach_disk(name, "vdb", 5, "qcow2", "off")
    assert err.value.code == "hypervisor_error"
    assert host.facts().disk_gib_free == before
    assert sorted(p.name for p in host.files.folder(name).iterdir()) == ["root.qcow2", "seed.iso"]


def test_nvme_passthrough_xml_and_its_attach_buffer(tmp_path: Path) -> None:
    driver = RecordingDriver()
    host = make_host(tmp_path, driver)
    name = vm()
    host.create(VmSpec(name, SMALL))
    free = host.lockfile.free().memory_mib
    host.attach_nvme(name, "0000:3b:00.0")
    assert driver.during_attach == [free - disks.NVME_ATTACH_BUFFER_MIB]  # held while attaching
    assert host.lockfile.free().memory_mib == free  # and given back
    dev = ET.fromstring(driver.attached[-1])
    assert (dev.tag, dev.get("type"), dev.get("managed")) == ("hostdev", "pci", "yes")
    addr = dev.find("source/address")
    assert addr is not None and (
        addr.get("domain"),
        addr.get("bus"),
        addr.get("slot"),
        addr.get("function"),
    ) == ("0x0000", "0x3b", "0x00", "0x0")


def test_nvme_devices_are_booked_to_one_vm_at_a_time_and_freed_on_delete(tmp_path: Path) -> None:
    driver = RecordingDriver()
    host = make_host(tmp_path, driver)
    first, second = vm(), vm()
    host.create(VmSpec(first, SMALL))
    host.create(VmSpec(second, SMALL))
    assert host.attach_nvme(first, "3b:00.0")["pci"] == "0000:3b:00.0"  # one spelling
    with pytest.raises(AgentFault) as err:
        host.attach_nvme(second, "0000:3b:00.0")
    assert err.value.code == "insufficient_capacity" and "passed through to" in str(err.value)
    with pytest.raises(AgentFault) as err:
        host.attach_nvme(second, "0000:99:00.0")  # not one of this host's devices
    assert err.value.code == "invalid_request"
    assert len(driver.attached) == 1
    assert (host.facts().nvme_total, host.facts().nvme_free) == (2, 1)  # GET /v1/hosts shows it
    host.attach_nvme(second, "0000:3c:00.0")
    assert host.facts().nvme_free == 0
    # the books survive a restart (the lockfile is persisted)
    again = make_host(tmp_path, RecordingDriver())
    assert again.lockfile.get(first).nvme == ("0000:3b:00.0",)  # type: ignore[union-attr]
    host.detach_nvme(second, "3c:00.0")
    assert host.lockfile.get(second).nvme == ()  # type: ignore[union-attr]
    host.delete(first)  # its device comes back with it
    host.attach_nvme(second, "0000:3b:00.0")
    with pytest.raises(AgentFault) as err:
        host.detach_nvme(second, "0000:3c:00.0")
    assert err.value.code == "not_found"


def test_a_failed_nvme_attach_books_nothing(tmp_path: Path) -> None:
    host = make_host(tmp_path)  # the test driver refuses hot-plug
    name = vm()
    host.create(VmSpec(name, SMALL))
    with pytest.raises(AgentFault) as err:
        host.attach_nvme(name, "0000:3b:00.0")
    assert err.value.code == "hypervisor_error"
    assert host.lockfile.get(name).nvme == ()  # type: ignore[union-attr]


def test_no_room_for_the_attach_buffer_is_refused(tmp_path: Path) -> None:
    driver = RecordingDriver()
    host = make_host(tmp_path, driver, memory_mib=1024 + 2048 + 512)  # buffer cannot fit
    name = vm()
    host.create(VmSpec(name, SMALL))
    with pytest.raises(AgentFault) as err:
        host.attach_nvme(name, "3b:00.0")
    assert err.value.code == "insufficient_capacity" and driver.attached == []
    with pytest.raises(disks.DiskError):
        disks.PciAddress.parse("zz:00.0")
