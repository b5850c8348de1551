"""Standby states on the agent (libvirt's test:///default): a pooled VM
paused (memory kept, no CPU) or saved (managed save: memory on disk), the
lockfile booking what each state holds, resumed on demand, and an agent
restarted meanwhile agreeing with libvirt."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from warmcache.model import Flavor
from warmcache.ports import VmSpec
from warmcache_agent.config import AgentConfig, DiskConfig, Resources
from warmcache_agent.daemon import handle_line
from warmcache_agent.faults import AgentFault
from warmcache_agent.lockfile import saved_image_gib
from warmcache_agent.operations import HostAgentService

pytestmark = [pytest.mark.libvirt, pytest.mark.usefixtures("libvirt_available")]

SMALL = Flavor(name="small", vcpus=2, memory_mib=2048, disk_gib=10)


def config(tmp_path: Path, memory_mib: int = 65536) -> AgentConfig:
    return AgentConfig(
        # a pretend host, larger than this machine's disk: no filesystem check
        disks=DiskConfig(check_filesystem=False),
        hypervisor="h1",
        rack="r1",
        az="az1",
        state_dir=str(tmp_path),
        capacity=Resources(vcpus=16, memory_mib=memory_mib, disk_gib=1000),
        reserved=Resources(vcpus=0, memory_mib=0, disk_gib=0),
        pin_cpus=False,
    )


def agent(tmp_path: Path, memory_mib: int = 65536) -> HostAgentService:
    from warmcache_agent.libvirt_driver import LibvirtDriver

    return HostAgentService(config(tmp_path, memory_mib), LibvirtDriver("test:///default"))


def vm_name() -> str:
    return f"sb-{uuid.uuid4().hex[:8]}"


def booked(tmp_path: Path, vm: str) -> str:
    doc = json.loads((tmp_path / "lockfile.json").read_text())
    return str(next(a["standby"] for a in doc["placement"] if a["name"] == vm))


def test_each_state_books_what_it_holds_and_resumes(tmp_path: Path) -> None:
    host = agent(tmp_path)
    vm = vm_name()
    host.create(VmSpec(vm, SMALL))
    running = host.facts()
    paused = host.standby(vm, "paused")
    assert (paused["state"], paused["healthy"], paused["standby"]) == ("paused", True, "paused")
    assert host.facts().memory_mib_free == running.memory_mib_free  # memory kept
    assert booked(tmp_path, vm) == "paused"
    saved = host.standby(vm, "saved")
    assert (saved["state"], saved["healthy"]) == ("saved", True)
    facts = host.facts()
    assert facts.memory_mib_free == running.memory_mib_free + SMALL.memory_mib  # freed
    assert facts.vcpus_free == running.vcpus_free + SMALL.vcpus
    assert facts.disk_gib_free == running.disk_gib_free - saved_image_gib(SMALL.memory_mib)
    back = host.standby(vm, "running")
    assert (back["state"], back["healthy"], back["standby"]) == ("running", True, "running")
    assert host.facts() == running
    host.delete(vm)


def test_a_saved_vm_without_room_to_come_back_is_refused_and_stays_saved(
    tmp_path: Path,
) -> None:
    host = agent(tmp_path, memory_mib=4096)  # room for two small VMs
    first, second = vm_name(), vm_name()
    host.create(VmSpec(first, SMALL))
    host.standby(first, "saved")
    host.create(VmSpec(second, SMALL))  # the memory the saved VM gave back
    host.create(VmSpec(vm_name(), SMALL))
    before = host.facts()
    with pytest.raises(AgentFault) as err:
        host.standby(first, "running")
    assert err.value.code == "insufficient_capacity"
    assert host.status(first)["state"] == "saved" and host.facts() == before


def test_a_restarted_agent_keeps_its_paused_and_saved_vms(tmp_path: Path) -> None:
    host = agent(tmp_path)
    paused, saved = vm_name(), vm_name()
    for vm in (paused, saved):
        host.create(VmSpec(vm, SMALL))
    host.standby(paused, "paused")
    host.standby(saved, "saved")
    facts = host.facts()
    again = agent(tmp_path)  # the agent restarted: same lockfile, same libvirt
    assert again.facts().memory_mib_free == facts.memory_mib_free
    assert again.status(paused)["state"] == "paused" and again.status(paused)["healthy"]
    assert again.status(saved)["state"] == "saved" and again.status(saved)["healthy"]
    assert [f for f in again.reconcile() if f.vm in (paused, saved)] == []
    for vm in (paused, saved):
        assert again.standby(vm, "running")["healthy"]
        again.delete(vm)  # a saved VM's image goes with it
    assert again.facts().memory_mib_free == 65536


def test_a_bad_standby_request_changes_nothing(tmp_path: Path) -> None:
    host = agent(tmp_path)
    vm = vm_name()
    host.create(VmSpec(vm, SMALL))
    line = json.dumps({"op": "standby", "name": vm, "state": "hibernated"}).encode()
    assert handle_line(host, line)["error"] == "invalid_request"
    line = json.dumps({"op": "standby", "name": "not-mine", "state": "paused"}).encode()
    assert handle_line(host, line)["error"] == "not_found"
    assert host.status(vm)["state"] == "running" and booked(tmp_path, vm) == "running"
    host.delete(vm)
