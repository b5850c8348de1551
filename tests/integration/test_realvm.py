"""Real QEMU guests through the agent on qemu:///system (software emulation
here), each booting its own root disk made from an image built here
(``warmcache_agent.guest.build_image``): boot to readiness, the image the
guest booted reported on its health channel, writes that stay in the guest's
own disk, the flavor's extra disk seen at boot, user_data through the
NoCloud seed, health over virtio-serial, disk hot-plug seen by the guest,
delete removing every disk; one download for four concurrent creates from a
real HTTPS image server; a corrupt image refused with nothing left; a pool
rolled over from image v1 to v2 by the leader; and an agent killed
mid-create whose restarted self agrees with libvirt."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.imageserver import ImageServer
from warmcache.adapters.agent_client import AgentClient
from warmcache.errors import (
    AgentError,
    AgentVmExists,
    AgentVmNotFound,
    ImageInvalid,
    ImageUnavailable,
)
from warmcache.images import Image
from warmcache.model import Flavor, StaticNetwork
from warmcache.ports import VmSpec
from warmcache.testing.polling import wait_for
from warmcache_agent.guest import agent_config_toml, build_image

pytestmark = [pytest.mark.realvm, pytest.mark.slow, pytest.mark.integration]

FLAVOR = Flavor(name="tiny", vcpus=1, memory_mib=128, disk_gib=1)


def tiny(image: Image, **changes: Any) -> Flavor:
    return FLAVOR.model_copy(update={"image_id": image.id, **changes})


def spec(name: str, image: Image, **fields: Any) -> VmSpec:
    flavor = tiny(image, **fields.pop("flavor", {}))
    return VmSpec(name, flavor, image=image, **fields)


class AgentProcess:
    def __init__(self, state_dir: Path, cache: Path, **options: Any) -> None:
        self.state_dir = state_dir
        self.cache = cache
        self.socket = state_dir / "agent.sock"
        self.config = state_dir / "agent.toml"
        state_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            agent_config_toml(
                hypervisor="real1", rack="r1", az="az1", image_dirs=[cache], **options
            )
        )
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


def destroy_left_overs(state_dir: Path) -> None:
    """Whatever a failed test left: destroyed through libvirt."""
    try:
        import libvirt

        conn = libvirt.open("qemu:///system")
        for dom in conn.listAllDomains():
            if (
                dom.name().startswith("rv-")
                and dom.name() in (state_dir / "lockfile.json").read_text()
            ):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        conn.close()
    except Exception:
        pass


@pytest.fixture
def agent(tmp_path: Path, real_host: Path) -> Iterator[AgentProcess]:
    proc = AgentProcess(tmp_path, real_host)
    yield proc
    destroy_left_overs(tmp_path)
    proc.stop()


@pytest.fixture
def v1(real_host: Path) -> Image:
    return build_image(real_host, "v1", image_id="guest")


def test_a_real_guest_boots_answers_takes_a_disk_and_goes(agent: AgentProcess, v1: Image) -> None:
    client = agent.start()
    vm = f"rv-{uuid.uuid4().hex[:8]}"
    script = b"#!/bin/sh\necho user-data-ran-in-the-guest\n"
    started = time.monotonic()
    status = client.create(spec(vm, v1, user_data=base64.b64encode(script).decode()))
    boot_s = time.monotonic() - started
    assert status.state == "running" and status.healthy, status
    assert status.image_version == "v1"  # it booted the image, and says so
    console = agent.console(vm)
    assert "WARMCACHE-READY" in console and "user-data-ran-in-the-guest" in console
    disks_at_boot = console.count("WARMCACHE-DISK")
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
    wait_for(
        "the guest to see the new disk",
        lambda: agent.console(vm).count("WARMCACHE-DISK") == disks_at_boot + 1,
        10,
    )
    client.call({"op": "detach_disk", "name": vm, "target": "vdb"})
    client.delete(vm)
    with pytest.raises(AgentError):
        client.status(vm)
    print(f"define-to-ready {boot_s:.2f} s")


def test_guests_boot_their_own_disks_and_keep_their_writes_to_themselves(
    agent: AgentProcess, v1: Image, real_host: Path
) -> None:
    """Guest A writes a file to its root disk; guest B (same image) does not
    see it, nor does the image; A's extra disk is there at boot; deleting A
    removes every disk of A and nothing of B or of the image cache."""
    client = agent.start()
    a, b = (f"rv-{uuid.uuid4().hex[:8]}" for _ in range(2))
    write = b"#!/bin/sh\necho written-by-a > /marker; sync; echo MARKER-WRITTEN\n"
    look = b"#!/bin/sh\n[ -f /marker ] && echo MARKER-PRESENT || echo MARKER-ABSENT\n"
    try:
        assert client.create(
            spec(
                a, v1, flavor={"extra_disks_gib": (1,)}, user_data=base64.b64encode(write).decode()
            )
        ).healthy
        assert "MARKER-WRITTEN" in agent.console(a).splitlines()  # a line of its own
        # root, the flavor's extra disk, the seed: all there at boot
        assert "WARMCACHE-BLOCK vda vdb vdc" in agent.console(a)
        assert client.create(spec(b, v1, user_data=base64.b64encode(look).decode())).healthy
        said = agent.console(b).splitlines()  # (the script itself is echoed too)
        assert "MARKER-ABSENT" in said and "MARKER-PRESENT" not in said
        assert client.status(a).image_version == client.status(b).image_version == "v1"
        cached = agent.state_dir / "images" / v1.sha256
        for base in (cached, Path(v1.source)):  # the image itself never changes
            assert hashlib.sha256(base.read_bytes()).hexdigest() == v1.sha256
        root_a = agent.state_dir / "vms" / a / "root.qcow2"
        assert b"written-by-a" in _read_file(root_a, "/marker", agent.state_dir)
        assert (agent.state_dir / "vms" / a / "vdb.qcow2").exists()
        client.delete(a)
        assert not (agent.state_dir / "vms" / a).exists()
        assert (agent.state_dir / "vms" / b / "root.qcow2").exists() and cached.exists()
    finally:
        for vm in (a, b):
            with contextlib.suppress(AgentError):
                client.delete(vm)


def _read_file(disk: Path, path: str, work: Path) -> bytes:
    """A file of an ext4 root disk, read on the host without mounting it: a
    raw copy (-U: the running guest holds its write lock), its journal
    replayed (a synced write may be in the journal only), then debugfs."""
    raw = work / "inspect.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(disk), str(raw)], check=True)
    try:
        subprocess.run(["e2fsck", "-fy", "-E", "journal_only", str(raw)], capture_output=True)
        return subprocess.run(
            ["debugfs", "-R", f"cat {path}", str(raw)], capture_output=True, check=True
        ).stdout
    finally:
        raw.unlink()


def test_four_concurrent_creates_fetch_the_image_once(
    tmp_path: Path, real_host: Path, v1: Image
) -> None:
    """The image, its kernel and its initrd come from a real HTTPS server
    (its own CA): four creates on one host at once download each once."""
    www = tmp_path / "www"
    www.mkdir()
    assert v1.boot is not None and v1.boot.initrd is not None
    for name, source in (
        ("root.qcow2", v1.source),
        ("vmlinux", v1.boot.kernel.source),
        ("initrd.gz", v1.boot.initrd.source),
    ):
        shutil.copy(source, www / name)
    with ImageServer(www, tmp_path) as server:
        kernel = v1.boot.kernel.model_copy(update={"source": server.url("vmlinux")})
        initrd = v1.boot.initrd.model_copy(update={"source": server.url("initrd.gz")})
        boot = v1.boot.model_copy(update={"kernel": kernel, "initrd": initrd})
        served = v1.model_copy(update={"source": server.url("root.qcow2"), "boot": boot})
        agent = AgentProcess(tmp_path / "agent", real_host, ca_file=str(server.ca.cert))
        client = agent.start()
        names = [f"rv-{uuid.uuid4().hex[:8]}" for _ in range(4)]
        results: list[Any] = []
        try:

            def create(name: str) -> None:
                results.append(_try(lambda: client.create(spec(name, served))))

            threads = [threading.Thread(target=create, args=(n,)) for n in names]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert [r.healthy for r in results] == [True] * 4, results
            assert dict(server.gets) == {"root.qcow2": 1, "vmlinux": 1, "initrd.gz": 1}
            assert {client.status(n).image_version for n in names} == {"v1"}
        finally:
            for n in names:
                with contextlib.suppress(AgentError):
                    client.delete(n)
            destroy_left_overs(agent.state_dir)
            agent.stop()


def test_a_corrupt_image_is_refused_nothing_boots_and_nothing_is_left(
    agent: AgentProcess, v1: Image, real_host: Path
) -> None:
    import libvirt

    client = agent.start()
    v2 = build_image(real_host, "v2", image_id="guest")
    wrong = {
        "another image's checksum": (v1.model_copy(update={"sha256": v2.sha256}), ImageInvalid),
        "truncated": (v1.model_copy(update={"size_bytes": v1.size_bytes + 1}), ImageInvalid),
        "missing": (
            v1.model_copy(update={"source": str(real_host / "images" / "nope.qcow2")}),
            ImageUnavailable,
        ),
    }
    conn = libvirt.open("qemu:///system")
    try:
        for what, (image, error) in wrong.items():
            vm = f"rv-{uuid.uuid4().hex[:8]}"
            with pytest.raises(error):
                client.create(spec(vm, image))
            assert vm not in [d.name() for d in conn.listAllDomains()], what
            assert not (agent.state_dir / "vms" / vm).exists(), what
        cache = agent.state_dir / "images"
        assert [p.name for p in cache.iterdir()] == [], "nothing kept, no partial download"
        assert client.list() == []
    finally:
        conn.close()


def test_a_real_guest_configures_the_address_of_its_seed(agent: AgentProcess, v1: Image) -> None:
    """The leader's allocation as the guest sees it: the seed's
    network-config is applied on its virtio NIC, and the guest's own health
    answer reports it back through the agent."""
    client = agent.start()
    vm = f"rv-{uuid.uuid4().hex[:8]}"
    network = StaticNetwork(address="10.77.0.5", prefix=24, gateway="10.77.0.1", dns=("10.77.0.2",))
    status = client.create(spec(vm, v1, network=network))
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
    agent: AgentProcess, v1: Image
) -> None:
    import libvirt

    client = agent.start()
    vm = f"rv-{uuid.uuid4().hex[:8]}"
    outcome: list[Any] = []
    creating = threading.Thread(
        target=lambda: outcome.append(_try(lambda: client.create(spec(vm, v1))))
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


def test_a_real_agent_refuses_a_guest_it_did_not_create(agent: AgentProcess, v1: Image) -> None:
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
            client.create(spec(other, v1))
        assert other in [d.name() for d in conn.listAllDomains()]  # still defined
        found = client.call({"op": "reconcile"})
        assert any(f["vm"] == other and f["kind"] == "unmanaged_domain" for f in found)
    finally:
        dom.undefine()
        conn.close()


def test_a_real_guest_pauses_saves_and_comes_back_answering(agent: AgentProcess, v1: Image) -> None:
    """Standby states on a real guest: paused (memory kept) and saved
    (memory written out, the QEMU process gone), each resumed through the
    agent and answering its health probe again."""
    client = agent.start()
    vm = f"rv-{uuid.uuid4().hex[:8]}"
    assert client.create(spec(vm, v1)).healthy
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


def test_an_agent_restarted_while_guests_sleep_agrees_with_libvirt(
    agent: AgentProcess, v1: Image
) -> None:
    """One guest paused, one saved; the agent killed and started again: both
    are as its lockfile says, nothing is reported, and both wake up."""
    client = agent.start()
    paused, saved = (f"rv-{uuid.uuid4().hex[:8]}" for _ in range(2))
    for vm in (paused, saved):
        assert client.create(spec(vm, v1)).healthy
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


@dataclass
class Leader:
    """A service instance (in process, SQLite) leading one real agent."""

    service: Any
    store: Any
    client: AgentClient
    agent: AgentProcess

    def pool(self) -> list[Any]:
        from warmcache.model import PoolInstance

        kvs, _ = self.store.range(self.service.keys.pool_dir("az1"))
        return [PoolInstance.model_validate_json(kv.value) for kv in kvs]


@pytest.fixture
def leader(tmp_path: Path, real_host: Path, v1: Image) -> Iterator[Leader]:
    import random

    from warmcache.adapters.file_catalog import FileFlavorCatalog, image_toml
    from warmcache.adapters.log_alerts import LogAlerts
    from warmcache.adapters.sqlite_events import SqliteEvents
    from warmcache.adapters.sqlite_store import SqliteStore
    from warmcache.clock import SystemClock
    from warmcache.config import ServiceConfig
    from warmcache.service import WarmCache

    agent = AgentProcess(tmp_path / "agent", real_host)
    with open(agent.config, "a") as config:
        config.write(f'[inventory]\nkind = "sqlite"\npath = "{tmp_path / "store.db"}"\n')
    (tmp_path / "flavors.toml").write_text(
        image_toml(v1) + "[flavors.tiny]\nvcpus = 1\nmemory_mib = 128\ndisk_gib = 1\n"
        'image_id = "guest"\n'
    )
    client = agent.start()
    clock = SystemClock()
    store = SqliteStore(tmp_path / "store.db", clock=clock)
    service = WarmCache(
        config=ServiceConfig(node="rv", build_concurrency=2),
        store=store,
        alerts=LogAlerts(),
        catalog=FileFlavorCatalog(tmp_path / "flavors.toml"),
        events=SqliteEvents(tmp_path / "events.db"),
        agent_for=lambda endpoint: AgentClient(endpoint, timeout_s=180),
        clock=clock,
        rng=random.Random(1),
    )

    def heartbeating() -> bool:
        service.hosts.catch_up()
        return bool(service.hosts.hosts())

    try:
        wait_for("the agent's heartbeat", heartbeating, 60)
        yield Leader(service, store, client, agent)
    finally:
        for vm in client.list():
            with contextlib.suppress(AgentError):
                client.delete(vm.name)
        service.close()
        store.close()
        destroy_left_overs(agent.state_dir)
        agent.stop()


def test_a_pool_rolls_over_from_image_v1_to_v2_on_real_guests(
    leader: Leader, real_host: Path
) -> None:
    """The leader builds a pool of real guests from image v1; the image's id
    is pointed at v2's bytes (maker-checker); the rollover leaves only
    guests that report v2, and the v1 guests are gone from libvirt."""
    import libvirt

    from warmcache.model import InstanceState

    service, client = leader.service, leader.client
    v2 = build_image(real_host, "v2", image_id="guest")
    conn = libvirt.open("qemu:///system")
    try:
        service.rules.put(
            "az1",
            "tiny",
            {"total_instances": 2, "max_instance_per_cycle": 2, "replace_per_cycle": 2},
        )
        service.run_cycle()
        first = {r.name for r in leader.pool() if r.state is InstanceState.READY}
        assert len(first) == 2 and {client.status(n).image_version for n in first} == {"v1"}
        asked = service.approvals.ask("set_image", {"image": v2.model_dump(mode="json")}, "alice")
        assert service.approvals.approve(asked.id, "bob").state == "executed"
        for _ in range(4):
            service.run_cycle()
            names = {r.name for r in leader.pool()}
            if not names & first and len(names) == 2:
                break
        ready = [r for r in leader.pool() if r.state is InstanceState.READY]
        assert len(ready) == 2 and not {r.name for r in ready} & first, leader.pool()
        assert {client.status(r.name).image_version for r in ready} == {"v2"}
        assert not first & {d.name() for d in conn.listAllDomains()}  # v1 guests destroyed
    finally:
        conn.close()


def test_a_released_guest_is_recycled_with_a_fresh_root_and_takes_data_disks(
    leader: Leader,
) -> None:
    """Through the service: a held guest gets a data disk (seen inside it),
    gives it back, is given back, and is recycled into its pool: same host
    and booking, a fresh root disk (what it wrote is gone: its first-boot
    script finds no marker again), ready again."""
    import base64

    from warmcache.model import InstanceState

    service, client, agent = leader.service, leader.client, leader.agent
    script = (
        b"#!/bin/sh\n[ -f /marker ] && echo MARKER-SURVIVED || echo FRESH-ROOT\n"
        b"echo written > /marker; sync\n"
    )
    service.rules.put(
        "az1",
        "tiny",
        {
            "total_instances": 1,
            "max_instance_per_cycle": 1,
            "on_release": "recycle",
            "user_data": base64.b64encode(script).decode(),
        },
    )
    service.run_cycle()
    [vm] = service.acquire("tiny", "az1", 1, "best-effort", requester="ci")
    assert "FRESH-ROOT" in agent.console(vm.name).splitlines()
    booked = json.loads((agent.state_dir / "lockfile.json").read_text())["placement"]
    disks_at_boot = agent.console(vm.name).count("WARMCACHE-DISK")
    held = service.lifecycle.attach_disk(vm.name, 1, "metadata", "ci", admin=False)
    assert [d.target for d in held.data_disks] == ["vdb"]
    wait_for(
        "the guest to see its new disk",
        lambda: agent.console(vm.name).count("WARMCACHE-DISK") == disks_at_boot + 1,
        10,
    )
    assert service.lifecycle.detach_disk(vm.name, "vdb", "ci", admin=False).data_disks == ()
    service.release(vm.name, requester="ci")
    started = time.monotonic()
    assert service.lifecycle.worker.run_once() == 1
    recycle_s = time.monotonic() - started
    back = service.vm(vm.name)
    assert back.state is InstanceState.READY and back.uses == 1
    lines = agent.console(vm.name).splitlines()
    assert "FRESH-ROOT" in lines and "MARKER-SURVIVED" not in lines  # a fresh root disk
    assert client.status(vm.name).healthy
    again = json.loads((agent.state_dir / "lockfile.json").read_text())["placement"]
    keep = ("name", "vcpus", "memory_mib", "disk_gib", "cpus", "numa_node")
    assert [{k: a[k] for k in keep} for a in again] == [{k: a[k] for k in keep} for a in booked]
    print(f"recycle {recycle_s:.2f} s")


def test_the_quickstart_with_real_vms_boots_its_guests_from_its_image(
    tmp_path: Path, real_host: Path
) -> None:
    """`warmcache quickstart --real-vms`, as the README runs it: the pool
    fills with guests booting the image the quickstart built, and an
    acquired guest says so."""
    import httpx

    from warmcache.quickstart import REAL_VM_IMAGE, QuickstartStack, Topology
    from warmcache.testing.ports import free_port

    stack = QuickstartStack(
        tmp_path / "qs",
        port=free_port(),
        instances=1,
        real_vms=True,
        rules_toml="[rules.az1.tiny]\ntotal_instances = 2\nmax_instance_per_cycle = 2\n",
        cycle_interval_s=1,
        topology=Topology(azs=("az1",), racks_per_az=1, hypervisors_per_rack=1),
    )
    with stack:
        stack.wait_full(timeout_s=300)
        images = httpx.get(f"{stack.urls[0]}/v1/images", timeout=10).json()["images"]
        assert [(e["image"]["id"], e["flavors"]) for e in images] == [(REAL_VM_IMAGE, ["tiny"])]
        got = httpx.post(
            f"{stack.urls[0]}/v1/acquire",
            timeout=60,
            json={"flavor": "tiny", "az": "az1", "count": 1, "mode": "best-effort"},
        ).json()["vms"]
        sock = next((stack.state_dir / "agents").glob("*/agent.sock"))
        status = AgentClient(f"unix:{sock}", timeout_s=30).status(got[0]["name"])
        assert status.healthy and status.image_version == "quickstart-1"
    # stopped: no guest of the stack is left running (its leader stops first,
    # or it would build the pool up again while the guests are destroyed)
    import libvirt

    conn = libvirt.open("qemu:///system")
    try:
        assert [d.name() for d in conn.listAllDomains() if d.name().startswith("az1-tiny-")] == []
    finally:
        conn.close()
