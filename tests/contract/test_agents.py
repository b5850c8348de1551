"""One contract for the host-agent port (STYLE.md §6.6): the real agent
over its Unix socket (libvirt's test:///default driver) and the simulated
host that every cycle and acquisition test, the benchmarks and the
quickstart's sim mode stand on. If the simulation drifts from the agent,
this fails instead of the tests built on it passing on a fiction."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from warmcache.errors import AgentVmExists, AgentVmNotFound, InsufficientHostCapacity
from warmcache.model import Flavor
from warmcache.ports import HostAgent, VmSpec
from warmcache.testing.sim import SimAgent

SMALL = Flavor(name="small", vcpus=2, memory_mib=2048, disk_gib=10)
HUGE = Flavor(name="huge", vcpus=2, memory_mib=10_000_000, disk_gib=1)


@pytest.fixture(params=["sim", pytest.param("agent", marks=pytest.mark.libvirt)])
def agent(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HostAgent]:
    if request.param == "sim":
        sim = SimAgent("az1", "r1", "h1", vcpus=16, memory_mib=65536, disk_gib=1000)
        yield sim
        sim.close()
        return
    request.getfixturevalue("libvirt_available")
    from warmcache.adapters.agent_client import AgentClient
    from warmcache_agent.config import AgentConfig, DiskConfig, Resources
    from warmcache_agent.daemon import AgentServer
    from warmcache_agent.libvirt_driver import LibvirtDriver
    from warmcache_agent.operations import HostAgentService

    config = AgentConfig(
        # a pretend host, larger than this machine's disk: no filesystem check
        disks=DiskConfig(check_filesystem=False),
        hypervisor="h1",
        rack="r1",
        az="az1",
        state_dir=str(tmp_path),
        capacity=Resources(vcpus=16, memory_mib=65536, disk_gib=1000),
    )
    path = str(tmp_path / "agent.sock")
    server = AgentServer(path, HostAgentService(config, LibvirtDriver("test:///default")))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    client = AgentClient(f"unix:{path}", timeout_s=10)
    yield client
    client.close()
    server.shutdown()
    server.server_close()
    thread.join()


def _name() -> str:
    return f"vm-{uuid.uuid4().hex[:8]}"


def test_a_created_vm_is_running_listed_and_accounted(agent: HostAgent) -> None:
    before = agent.facts()
    assert (before.az, before.rack, before.hypervisor) == ("az1", "r1", "h1")
    vm = _name()
    status = agent.create(VmSpec(vm, SMALL, group="db"))
    assert status.name == vm and status.state == "running" and status.healthy
    assert status.server_id
    assert agent.status(vm).state == "running"
    assert [s.name for s in agent.list()] == [vm]
    after = agent.facts()
    assert vm in after.vms and "db" in after.groups
    assert before.vcpus_free - after.vcpus_free == SMALL.vcpus
    assert before.memory_mib_free - after.memory_mib_free == SMALL.memory_mib


def test_a_second_create_of_one_name_is_refused(agent: HostAgent) -> None:
    vm = _name()
    agent.create(VmSpec(vm, SMALL))
    with pytest.raises(AgentVmExists):
        agent.create(VmSpec(vm, SMALL))
    assert [s.name for s in agent.list()] == [vm]


def test_delete_frees_what_the_vm_held_and_a_second_delete_is_not_found(
    agent: HostAgent,
) -> None:
    before = agent.facts()
    vm = _name()
    agent.create(VmSpec(vm, SMALL))
    agent.delete(vm)
    assert agent.list() == [] and agent.facts().vcpus_free == before.vcpus_free
    with pytest.raises(AgentVmNotFound):
        agent.status(vm)
    with pytest.raises(AgentVmNotFound):
        agent.delete(vm)


def test_a_vm_that_does_not_fit_is_refused_and_nothing_is_held(agent: HostAgent) -> None:
    before = agent.facts()
    with pytest.raises(InsufficientHostCapacity):
        agent.create(VmSpec(_name(), HUGE))
    assert agent.list() == [] and agent.facts().memory_mib_free == before.memory_mib_free
