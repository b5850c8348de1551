"""Reconciliation: reported, never repaired silently (§10, §12.2)."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from warmcache.layout import Keys
from warmcache.model import Flavor
from warmcache.ports import VmSpec
from warmcache.service import WarmCache
from warmcache_agent.config import AgentConfig, DiskConfig, Resources
from warmcache_agent.daemon import AgentServer, main
from warmcache_agent.operations import HostAgentService
from warmcache_agent.reconcile import reconcile

SMALL = Flavor(name="small", vcpus=2, memory_mib=2048, disk_gib=10)

KEYS = Keys("wc")


def kinds(findings: list) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    return {(f.kind, f.vm) for f in findings}


def test_every_disagreement_is_named() -> None:
    found = reconcile(
        domains=["ok", "rogue", "lost-record", "test"],
        lockfile=["ok", "lost-record", "ghost"],
        records={"ok": "ready", "gone": "acquired"},
        ignore=["test"],
    )
    assert kinds(found) == {
        ("unmanaged_domain", "rogue"),
        ("lockfile_without_vm", "ghost"),
        ("record_without_vm", "gone"),
        ("vm_without_record", "lost-record"),
    }
    assert reconcile(["a"], ["a"], {"a": "ready"}) == []


def test_without_the_store_only_libvirt_and_the_lockfile_are_compared() -> None:
    assert kinds(reconcile(["a", "b"], ["a"], None)) == {("unmanaged_domain", "b")}


@pytest.mark.libvirt
@pytest.mark.usefixtures("libvirt_available")
def test_the_agent_reports_and_deletes_nothing(tmp_path: Path) -> None:
    from warmcache_agent.libvirt_driver import LibvirtDriver

    driver = LibvirtDriver("test:///default")
    published: list[list] = []  # type: ignore[type-arg]
    cfg = AgentConfig(
        # a pretend host, larger than this machine's disk: no filesystem check
        disks=DiskConfig(check_filesystem=False),
        hypervisor="h1",
        rack="r1",
        az="az1",
        state_dir=str(tmp_path),
        capacity=Resources(vcpus=8, memory_mib=8192, disk_gib=100),
    )
    mine, rogue = f"vm-{uuid.uuid4().hex[:6]}", f"rogue-{uuid.uuid4().hex[:6]}"
    host = HostAgentService(
        cfg, driver, records=lambda: {"elsewhere": "ready"}, on_findings=published.append
    )
    host.create(VmSpec(mine, SMALL))
    driver.define_and_start(VmSpec(rogue, SMALL), None)  # made outside warmcache
    found = kinds(host.reconcile())
    assert {
        ("unmanaged_domain", rogue),
        ("record_without_vm", "elsewhere"),
        ("vm_without_record", mine),
    } <= found
    assert published and len(published[-1]) == len(found)
    assert rogue in driver.domains() and mine in driver.domains()  # nothing deleted

    sock = str(tmp_path / "agent.sock")
    server = AgentServer(sock, host)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        result = CliRunner().invoke(main, ["reconcile", "--socket", sock])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert result.exit_code == 1
    assert {f["vm"] for f in json.loads(result.output)} >= {rogue, "elsewhere", mine}


def test_the_leader_turns_new_findings_into_events_once(service: WarmCache) -> None:
    doc = {
        "hypervisor": "az1-r1-h1",
        "at": 0,
        "findings": [{"kind": "unmanaged_domain", "vm": "rogue", "detail": "made by hand"}],
    }
    service.store.put(KEYS.findings("az1", "az1-r1-h1"), json.dumps(doc))
    service.rules.put("az1", "small", {"max_instance_per_cycle": 1, "total_instances": 0})
    service.run_cycle()
    service.run_cycle()
    events = service.events.recent(type_prefix="reconcile.finding")
    assert len(events) == 1 and events[0].fields["vm"] == "rogue"
    service.store.put(KEYS.findings("az1", "az1-r1-h1"), json.dumps({**doc, "findings": []}))
    service.run_cycle()
    assert len(service.events.recent(type_prefix="reconcile.finding")) == 1
