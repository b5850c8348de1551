"""Real QEMU guests through the agent on qemu:///system (software emulation
here): boot to readiness, user_data through the NoCloud seed, health over
virtio-serial, disk hot-plug seen by the guest, delete; and an agent killed
mid-create whose restarted self agrees with libvirt."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_for
from warmcache.adapters.agent_client import AgentClient
from warmcache.errors import AgentError, AgentVmExists, AgentVmNotFound
from warmcache.model import Flavor, StaticNetwork
from warmcache.ports import VmSpec
from warmcache_agent.guest import agent_config_toml

pytestmark = [pytest.mark.realvm, pytest.mark.slow, pytest.mark.integration]

TINY = Flavor(name="tiny", vcpus=1, memory_mib=128, disk_gib=1)


class AgentProcess:
    def __init__(self, state_dir: Path, image: Any) -> None:
        self.state_dir = state_dir
        self.socket = state_dir / "agent.sock"
        self.config = state_dir / "agent.toml"
        self.config.write_text(agent_config_toml(image, hypervisor="real1", rack="r1", az="az1"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentClient:
        log = open(self.state_dir / "agent.log", "ab")  # noqa: SIM115
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "warmcache_agent",
                "--socket",
                str(self.socket),
                "--config",
                str(self.config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for("the agent socket", self.socket.exists, 60)
        return AgentClient(f"unix:{self.socket}", timeout_s=180)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)

    def console(self, vm: str) -> str:
        path = self.state_dir / "run" / f"{vm}.console.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def agent(tmp_path: Path, real_host: Any) -> Iterator[AgentProcess]:
    proc = AgentProcess(tmp_path, real_host)
    yield proc
    try:  # whatever a failed test left: destroy it through libvirt
        import libvirt

        conn = libvirt.open("qemu:///system")
        for dom in conn.listAllDomains():
            if (
                dom.name().startswith("rv-")
                and dom.name() in (tmp_path / "lockfile.json").read_text()
            ):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        conn.close()
    except Exception:
        pass
    proc.stop()


def test_a_real_guest_boots_answers_takes_a_disk_and_goes(agent: AgentProcess) -> None:
    client = agent.start()
    vm = f"rv-{uuid.uuid4().hex[:8]}"
    script = b"#!/bin/sh\necho user-data-ran-in-the-guest\n"
    started = time.monotonic()
    status = client.create(VmSpec(vm, TINY, user_data=base64.b64encode(script).decode()))
    boot_s = time.monotonic() - started
    assert status.state == "running" and status.healthy, status
    console = agent.console(vm)
    assert "WARMCACHE-READY" in console and "user-data-ran-in-the-guest" in console
    # PING/PONG over virtio-serial, probe after probe (each lands right after
    # the previous one disconnected, while the guest re-opens its port)
    assert all(client.status(vm).healthy for _ in range(5))
    out = client.call(
        {
            "op": "attach_disk",
            "name": vm,
            "target": "vdb",
            "size_gib": 1,
            "format": "qcow2",
            "preallocation": "metadata",
        }
    )
    assert Path(out["path"]).exists()
    wait_for("the guest to see vdb", lambda: "WARMCACHE-DISK vdb" in agent.console(vm), 10)
    client.call({"op": "detach_disk", "name": vm, "target": "vdb"})
    client.delete(vm)
    with pytest.raises(AgentError):
        client.status(vm)
    print(f"define-to-ready {boot_s:.2f} s")


def test_a_real_guest_configures_the_address_of_its_seed(agent: AgentProcess) -> None:
    """The leader's allocation as the guest sees it: the seed's
    network-config is applied on its virtio NIC, and the guest's own health
    answer reports it back through the agent."""
    client = agent.start()
    vm = f"rv-{uuid.uuid4().hex[:8]}"
    network = StaticNetwork(address="10.77.0.5", prefix=24, gateway="10.77.0.1", dns=("10.77.0.2",))
    status = client.create(VmSpec(vm, TINY, network=network))
    try:
        assert status.healthy, status
        assert "WARMCACHE-ADDRESS 10.77.0.5/24" in agent.console(vm)
        reported = wait_for(
            "the guest to report its address", lambda: client.status(vm).addresses, 10
        )
        assert reported == ("10.77.0.5/24",)
    finally:
        client.delete(vm)


def test_an_agent_killed_mid_create_agrees_with_libvirt_after_restart(
    agent: AgentProcess,
) -> None:
    import libvirt

    client = agent.start()
    vm = f"rv-{uuid.uuid4().hex[:8]}"
    outcome: list[Any] = []
    creating = threading.Thread(
        target=lambda: outcome.append(_try(lambda: client.create(VmSpec(vm, TINY))))
    )
    creating.start()
    conn = libvirt.open("qemu:///system")
    try:
        wait_for(
            "libvirt to have the domain",
            lambda: vm in [d.name() for d in conn.listAllDomains()],
            60,
        )
        agent.kill()  # mid-create: defined and booting, never reported back
        creating.join()
        assert isinstance(outcome[0], AgentError)
        client = agent.start()  # restarted: recovers its lockfile, reconciles
        findings = client.call({"op": "reconcile"})
        # lockfile and libvirt agree about this VM (other domains on a shared
        # libvirtd are someone else's, and reported as such)
        assert [f for f in findings if f["vm"] == vm] == [], findings
        assert vm in [s.name for s in client.list()]
        client.delete(vm)
        assert vm not in [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()


def _try(fn: Any) -> Any:
    try:
        return fn()
    except AgentError as exc:
        return exc


def test_a_real_agent_refuses_a_guest_it_did_not_create(agent: AgentProcess) -> None:
    """On qemu:///system whoever reaches the agent could once destroy any VM
    on the host. A domain defined behind the agent's back is not_found for
    every operation, and is still defined afterwards."""
    import libvirt

    client = agent.start()
    other = f"rv-other-{uuid.uuid4().hex[:8]}"
    conn = libvirt.open("qemu:///system")
    dom = conn.defineXML(
        f"<domain type='qemu'><name>{other}</name><memory unit='MiB'>64</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"
    )
    try:
        for request in (
            {"op": "delete", "name": other},
            {"op": "status", "name": other},
            {"op": "attach_disk", "name": other, "target": "vdb", "size_gib": 1},
        ):
            with pytest.raises(AgentVmNotFound):
                client.call(request)
        with pytest.raises(AgentVmExists):
            client.create(VmSpec(other, TINY))
        assert other in [d.name() for d in conn.listAllDomains()]  # still defined
        found = client.call({"op": "reconcile"})
        assert any(f["vm"] == other and f["kind"] == "unmanaged_domain" for f in found)
    finally:
        dom.undefine()
        conn.close()


def test_a_real_guest_pauses_saves_and_comes_back_answering(agent: AgentProcess) -> None:
    """Standby states on a real guest: paused (memory kept) and saved
    (memory written out, the QEMU process gone), each resumed through the
    agent and answering its health probe again."""
    client = agent.start()
    vm = f"rv-{uuid.uuid4().hex[:8]}"
    assert client.create(VmSpec(vm, TINY)).healthy
    try:
        for state in ("paused", "saved"):
            asleep = client.standby(vm, state)
            assert (asleep.state, asleep.healthy, asleep.standby) == (state, True, state)
            started = time.monotonic()
            awake = client.standby(vm, "running")
            took = time.monotonic() - started
            assert awake.healthy and awake.state == "running", awake
            assert client.status(vm).healthy
            print(f"resume from {state}: {took * 1000:.0f} ms")
    finally:
        client.delete(vm)


def test_an_agent_restarted_while_guests_sleep_agrees_with_libvirt(agent: AgentProcess) -> None:
    """One guest paused, one saved; the agent killed and started again: both
    are as its lockfile says, nothing is reported, and both wake up."""
    client = agent.start()
    paused, saved = (f"rv-{uuid.uuid4().hex[:8]}" for _ in range(2))
    for vm in (paused, saved):
        assert client.create(VmSpec(vm, TINY)).healthy
    try:
        client.standby(paused, "paused")
        client.standby(saved, "saved")
        agent.kill()
        client = agent.start()
        assert client.status(paused).state == "paused" and client.status(paused).healthy
        assert client.status(saved).state == "saved" and client.status(saved).healthy
        findings = client.call({"op": "reconcile"})
        assert [f for f in findings if f["vm"] in (paused, saved)] == [], findings
        for vm in (paused, saved):
            assert client.standby(vm, "running").healthy
    finally:
        for vm in (paused, saved):
            client.delete(vm)
