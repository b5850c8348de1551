"""Every VM on its own disks, from its flavor's image (libvirt test:///default,
real qemu-img): the root disk an overlay of the verified cached image, the
flavor's extra disks made at build, one folder per VM removed whole on
delete, disks booked at full size and checked against the filesystem, and
every refusal leaving nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from warmcache.images import Image
from warmcache.model import Flavor
from warmcache.ports import VmSpec
from warmcache_agent import disks
from warmcache_agent.config import AgentConfig, DiskConfig, ImageCacheConfig, Resources
from warmcache_agent.daemon import handle_line
from warmcache_agent.faults import AgentFault
from warmcache_agent.libvirt_driver import HypervisorFailure
from warmcache_agent.operations import HostAgentService

pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.usefixtures("libvirt_available"),
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing"),
]
MIB, GIB = 1 << 20, 1 << 30


def make_host(tmp_path: Path, *, check_filesystem: bool = False) -> HostAgentService:
    from warmcache_agent.libvirt_driver import LibvirtDriver

    cfg = AgentConfig(
        hypervisor="h1",
        rack="r1",
        az="az1",
        state_dir=str(tmp_path / "agent"),
        capacity=Resources(vcpus=8, memory_mib=16384, disk_gib=100),
        reserved=Resources(vcpus=2, memory_mib=1024, disk_gib=10),
        images=ImageCacheConfig(local_dirs=(str(tmp_path / "src"),)),
        disks=DiskConfig(check_filesystem=check_filesystem),
    )
    return HostAgentService(cfg, LibvirtDriver("test:///default"))


def qcow2_image(tmp_path: Path, virtual: str = "1G") -> Image:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    path = src / f"base-{virtual}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), virtual], check=True)
    return Image(
        id=f"base-{virtual.lower()}",
        source=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        format="qcow2",
        size_bytes=path.stat().st_size,
    )


def info(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def flavor(image: Image | None, **changes: Any) -> Flavor:
    base = Flavor(
        name="small", vcpus=2, memory_mib=1024, disk_gib=4, image_id=image.id if image else ""
    )
    return base.model_copy(update=changes)


def _attr(element: ET.Element, child: str, name: str) -> str | None:
    found = element.find(child)
    return found.get(name) if found is not None else None


def vm() -> str:
    return f"vm-{uuid.uuid4().hex[:8]}"


def test_a_vm_boots_an_overlay_of_its_image_with_its_own_extra_disks(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    image = qcow2_image(tmp_path)
    name = vm()
    out = host.create(VmSpec(name, flavor(image, extra_disks_gib=(2, 3)), image=image))
    assert out["healthy"] and out["image_fetch_s"] >= 0
    folder = host.files.folder(name)
    assert sorted(p.name for p in folder.iterdir()) == [
        "root.qcow2",
        "seed.iso",
        "vdb.qcow2",
        "vdc.qcow2",
    ]
    root = info(folder / "root.qcow2")
    cached = host.images.path(image.sha256)
    assert root["full-backing-filename"] == str(cached)  # the verified copy, not the source
    assert root["virtual-size"] == 4 * GIB
    assert [info(folder / f"vd{t}.qcow2")["virtual-size"] for t in "bc"] == [2 * GIB, 3 * GIB]
    dom = ET.fromstring(host._driver._conn.lookupByName(name).XMLDesc())  # type: ignore[attr-defined]
    disks_xml = [(_attr(d, "target", "dev"), _attr(d, "source", "file")) for d in dom.iter("disk")]
    assert disks_xml[0] == ("vda", str(folder / "root.qcow2"))  # the root first
    assert [t for t, _ in disks_xml] == ["vda", "vdb", "vdc", "vdz"]
    assert host.lockfile.get(name).disk_gib == 4 + 2 + 3  # type: ignore[union-attr]
    assert image.sha256 in host.facts().images
    # a hot-plug cannot take a target the flavor's disks hold
    with pytest.raises(AgentFault) as err:
        host.attach_disk(name, "vdb", 1, "qcow2", "off")
    assert err.value.code == "already_exists"
    other = vm()
    host.create(VmSpec(other, flavor(image), image=image))
    assert host.images.fetches == 1  # one fetch per host
    host.delete(name)
    assert not folder.exists() and host.files.folder(other).exists()  # nothing else went
    assert cached.exists()  # the image stays cached (another VM boots it; and for later)
    assert host.facts().disk_gib_free == 90 - 4


def test_preallocation_makes_the_root_a_full_copy(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    image = qcow2_image(tmp_path)
    name = vm()
    host.create(VmSpec(name, flavor(image, disk_gib=1, preallocation="falloc"), image=image))
    root = host.files.disk(name, "vda")
    details = info(root)
    assert "backing-filename" not in details and details["virtual-size"] == GIB
    assert root.stat().st_blocks * 512 >= GIB  # allocated in full, as asked


def test_a_flavor_without_an_image_gets_a_blank_root_disk(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    name = vm()
    host.create(VmSpec(name, flavor(None)))
    details = info(host.files.disk(name, "vda"))
    assert "backing-filename" not in details and details["virtual-size"] == 4 * GIB


def test_refused_creates_leave_nothing(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    image = qcow2_image(tmp_path)
    big = qcow2_image(tmp_path, "8G")
    wrong_sha = image.model_copy(update={"sha256": "0" * 64})
    elsewhere = image.model_copy(update={"source": "/etc/passwd"})  # not an image folder
    wants_2 = image.model_copy(update={"min_disk_gib": 2})
    cases: list[tuple[VmSpec, str]] = [
        (VmSpec(vm(), flavor(image), image=wrong_sha), "image_invalid"),
        (VmSpec(vm(), flavor(image), image=elsewhere), "image_unavailable"),
        (VmSpec(vm(), flavor(big), image=big), "invalid_request"),  # 8 GiB image, 4 GiB root
        (VmSpec(vm(), flavor(image, disk_gib=1), image=wants_2), "invalid_request"),
    ]
    for spec, code in cases:
        with pytest.raises(AgentFault) as err:
            host.create(spec)
        assert err.value.code == code, (spec.name, err.value)
        assert host._driver.state(spec.name) == "missing"
        assert not host.files.folder(spec.name).exists()
    assert host.lockfile.all() == [] and host.facts().disk_gib_free == 90
    assert host.images.held() == [big.sha256]  # refused images are not kept; big was fine

    def refuse(*_args: object) -> str:
        raise HypervisorFailure("libvirt said no (test)")

    host._driver.define_and_start = refuse  # type: ignore[method-assign, assignment]
    name = vm()  # disks made, then the define fails: they go again
    with pytest.raises(AgentFault) as err:
        host.create(VmSpec(name, flavor(image, extra_disks_gib=(1,)), image=image))
    assert err.value.code == "hypervisor_error"
    assert not host.files.folder(name).exists() and host.lockfile.all() == []
    assert [p for p in host.images.root.iterdir() if p.name.startswith(".")] == []


def test_the_filesystem_must_hold_every_disk_fully_written(tmp_path: Path) -> None:
    """The books say 90 GiB; the filesystem under the VMs has 10 GiB free:
    thin disks may not promise more than it can hold."""
    host = make_host(tmp_path, check_filesystem=True)
    free = {"bytes": 10 * GIB}

    def statvfs(_path: str) -> os.statvfs_result:
        real = os.statvfs(str(tmp_path))
        fields = list(real)
        fields[0] = fields[1] = 4096  # f_bsize, f_frsize
        fields[4] = free["bytes"] // 4096  # f_bavail
        return os.statvfs_result(fields)

    host.lockfile.disk_room = disks.DiskRoom(host.files.root, statvfs)
    image = qcow2_image(tmp_path)
    first = vm()
    host.create(VmSpec(first, flavor(image, disk_gib=6), image=image))
    with pytest.raises(AgentFault) as err:  # 6 promised + 6 more > 10 (+ what is written)
        host.create(VmSpec(vm(), flavor(image, disk_gib=6), image=image))
    assert err.value.code == "insufficient_capacity" and "filesystem" in str(err.value)
    assert [a.name for a in host.lockfile.all()] == [first]
    with pytest.raises(AgentFault) as err:  # hot-plugged disks too
        host.attach_disk(first, "vdd", 5, "qcow2", "off")
    assert err.value.code == "insufficient_capacity"
    host.create(VmSpec(vm(), flavor(image, disk_gib=3), image=image))  # 9 of 10: fits
    free["bytes"] = 0
    with pytest.raises(AgentFault):
        host.create(VmSpec(vm(), flavor(image, disk_gib=1), image=image))


def test_prefetch_and_image_refusals_over_the_wire(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    image = qcow2_image(tmp_path)
    send: Any = lambda request: handle_line(host, json.dumps(request).encode())  # noqa: E731
    wire = image.model_dump(mode="json", exclude_none=True)
    reply = send({"op": "prefetch", "image": wire})
    assert reply["ok"] and reply["result"]["sha256"] == image.sha256
    assert host.facts().images == (image.sha256,)
    bad = send({"op": "prefetch", "image": {**wire, "sha256": "1" * 64}})
    assert bad == {"ok": False, "error": "image_invalid", "detail": bad["detail"]}
    malformed = [
        {**wire, "source": "http://plain.example/x.qcow2"},  # no plain http
        {**wire, "source": "relative/x.qcow2"},
        {**wire, "source": "/srv/../etc/shadow"},
        {**wire, "sha256": "ABC"},
        {**wire, "format": "vmdk"},
        {**wire, "size_bytes": -1},
        {**wire, "size_bytes": "12"},
        {**wire, "surprise": 1},
        {**wire, "boot": {"kernel": {"source": "/k", "sha256": "a" * 64, "size_bytes": 1},
                          "cmdline": "x\ny"}},
    ]  # fmt: skip
    flavor_wire = flavor(image).model_dump(mode="json")
    for bad_image in malformed:
        for request in (
            {"op": "prefetch", "image": bad_image},
            {"op": "create", "vm": {"name": vm(), "flavor": flavor_wire, "image": bad_image}},
        ):
            reply = send(request)
            assert reply["ok"] is False and reply["error"] == "invalid_request", bad_image
    assert host.lockfile.all() == [] and host.facts().images == (image.sha256,)


def test_a_recycle_remakes_the_vm_where_it_is(tmp_path: Path) -> None:
    """Same booking and host, a fresh root disk (from the image it is given
    now), the flavor's extra disks wiped, no hot-plugged disk, a new seed
    instance id; a recycle that fails deletes the VM."""
    from warmcache_agent import cloudinit

    host = make_host(tmp_path)
    v1, v2 = qcow2_image(tmp_path, "1G"), qcow2_image(tmp_path, "2G")
    name = vm()
    spec = VmSpec(name, flavor(v1, extra_disks_gib=(1,)), image=v1)
    host.create(spec)
    before = host.lockfile.get(name)
    root = host.files.disk(name, "vda")
    (host.files.folder(name) / "vdb.qcow2").write_bytes(b"holder data")  # the holder's writes
    first_seed = cloudinit.read_seed(host.files.seed(name))["meta-data"]
    host.lockfile.add_disk(name, "vdd", 3)  # as if hot-plugged for its holder
    out = host.recycle(VmSpec(name, flavor(v2, extra_disks_gib=(1,)), image=v2))
    assert out["healthy"]
    after = host.lockfile.get(name)
    assert after is not None and before is not None
    assert (after.vcpus, after.memory_mib, after.disk_gib, after.cpus) == (
        before.vcpus,
        before.memory_mib,
        before.disk_gib,
        before.cpus,
    )
    assert after.disks == () and after.images == (v2.sha256,)  # hot-plugged disk unbooked
    assert info(root)["full-backing-filename"] == str(host.images.path(v2.sha256))
    assert info(host.files.folder(name) / "vdb.qcow2")["format"] == "qcow2"  # wiped, made anew
    second_seed = cloudinit.read_seed(host.files.seed(name))["meta-data"]
    assert first_seed != second_seed and f"local-hostname: {name}".encode() in second_seed
    assert host.facts().disk_gib_free == 90 - 4 - 1
    with pytest.raises(AgentFault) as err:  # another flavor: not a recycle
        host.recycle(VmSpec(name, flavor(v2, name="large"), image=v2))
    assert err.value.code == "invalid_request" and host.lockfile.get(name) is not None
    with pytest.raises(AgentFault) as err:  # a wrong image: the VM goes
        host.recycle(
            VmSpec(
                name,
                flavor(v1, extra_disks_gib=(1,)),
                image=v1.model_copy(update={"sha256": "0" * 64}),
            )
        )
    assert err.value.code == "image_invalid"
    assert host.lockfile.get(name) is None and not host.files.folder(name).exists()
    assert host._driver.state(name) == "missing"
