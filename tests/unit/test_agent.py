"""The host agent on libvirt's test:///default driver (no daemon needed)."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from warmcache.adapters.agent_client import AgentClient
from warmcache.errors import AgentRejected, AgentUnavailable, InsufficientHostCapacity
from warmcache.model import Flavor
from warmcache.ports import VmSpec
from warmcache.testing.polling import wait_for
from warmcache_agent.config import AgentConfig, DiskConfig, Resources
from warmcache_agent.daemon import AgentServer, handle_line
from warmcache_agent.faults import AgentFault
from warmcache_agent.lockfile import Allocation, Lockfile
from warmcache_agent.operations import HostAgentService

pytestmark = [pytest.mark.libvirt, pytest.mark.usefixtures("libvirt_available")]

SMALL = Flavor(name="small", vcpus=2, memory_mib=2048, disk_gib=10)


def config(tmp_path: Path, vcpus: int = 16) -> AgentConfig:
    return AgentConfig(
        # a pretend host, larger than this machine's disk: no filesystem check
        disks=DiskConfig(check_filesystem=False),
        hypervisor="h1",
        rack="r1",
        az="az1",
        state_dir=str(tmp_path),
        capacity=Resources(vcpus=vcpus, memory_mib=65536, disk_gib=1000),
        reserved=Resources(vcpus=2, memory_mib=4096, disk_gib=50),
    )


@pytest.fixture
def host(tmp_path: Path) -> HostAgentService:
    from warmcache_agent.libvirt_driver import LibvirtDriver

    return HostAgentService(config(tmp_path), LibvirtDriver("test:///default"))


def name() -> str:
    return f"vm-{uuid.uuid4().hex[:8]}"


def test_create_status_delete_round_trip(host: HostAgentService) -> None:
    vm = name()
    status = host.create(VmSpec(vm, SMALL))
    assert status["state"] == "running" and status["healthy"] and status["server_id"]
    facts = host.facts()
    assert facts.vcpus_free == 14 - 2 and vm in facts.vms
    assert [s["name"] for s in host.list()] == [vm]
    host.delete(vm)
    assert host.facts().vcpus_free == 14
    with pytest.raises(AgentFault) as err:
        host.status(vm)
    assert err.value.code == "not_found"


def test_duplicate_name_is_refused(host: HostAgentService) -> None:
    vm = name()
    host.create(VmSpec(vm, SMALL))
    with pytest.raises(AgentFault) as err:
        host.create(VmSpec(vm, SMALL))
    assert err.value.code == "already_exists"


def test_50_concurrent_creates_never_overcommit(host: HostAgentService) -> None:
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def create() -> None:
        barrier.wait()
        try:
            host.create(VmSpec(name(), SMALL))
            result = "ok"
        except AgentFault as exc:
            result = exc.code
        with lock:
            outcomes[result] += 1

    threads = [threading.Thread(target=create) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == {"ok": 7, "insufficient_capacity": 43}  # 14 usable vCPUs / 2
    assert host.facts().vcpus_free == 0
    pinned = [c for a in host.lockfile.all() for c in a.cpus]
    assert sorted(pinned) == list(range(2, 16))  # each CPU once; 0 and 1 kept for the host
    persisted = json.loads((Path(host.config.state_dir) / "lockfile.json").read_text())
    assert persisted["aggregate"]["allocated"]["vcpus"] == 14
    assert len(persisted["placement"]) == 7


def test_restart_drops_creates_that_never_reached_libvirt(tmp_path: Path) -> None:
    from warmcache_agent.libvirt_driver import LibvirtDriver

    lock = Lockfile(tmp_path / "lockfile.json", Resources(vcpus=14, memory_mib=1, disk_gib=1))
    lock._vms["ghost"] = Allocation("ghost", "small", 2, 0, 0, None, "creating")
    lock._persist()
    host = HostAgentService(config(tmp_path), LibvirtDriver("test:///default"))
    assert host.facts().vcpus_free == 14 and host.facts().vms == ()


def test_malformed_requests_are_rejected_before_anything_runs(host: HostAgentService) -> None:
    bad = [
        b"not json",
        b'{"op": "reboot"}',
        b'{"op": "create", "vm": {"name": "a/b", "flavor": {}}}',
        b'{"op": "delete", "name": "x", "force": true}',
        b'{"op": "create", "vm": {"name": "ok", "flavor": {"name": "s", "vcpus": -1, '
        b'"memory_mib": 1, "disk_gib": 1}}}',
    ]
    for line in bad:
        reply = handle_line(host, line)
        assert reply["ok"] is False and reply["error"] == "invalid_request", line
    assert host.facts().vms == ()


@pytest.fixture
def socket_agent(tmp_path: Path, host: HostAgentService) -> Iterator[AgentClient]:
    path = str(tmp_path / "agent.sock")
    server = AgentServer(path, host)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield AgentClient(f"unix:{path}", timeout_s=10)
    server.shutdown()
    server.server_close()
    thread.join()


def test_client_and_daemon_over_the_socket(socket_agent: AgentClient, tmp_path: Path) -> None:
    assert (tmp_path / "agent.sock").stat().st_mode & 0o777 == 0o660
    vm = name()
    status = socket_agent.create(VmSpec(vm, SMALL, user_data="ZWNobw=="))
    assert status.healthy and socket_agent.status(vm).state == "running"
    assert socket_agent.facts().vcpus_free == 12
    with pytest.raises(AgentRejected) as err:
        socket_agent.delete("nope")
    assert err.value.agent_code == "not_found"
    big = Flavor(name="big", vcpus=2, memory_mib=1_000_000, disk_gib=1)
    with pytest.raises(InsufficientHostCapacity):
        socket_agent.create(VmSpec(name(), big))
    socket_agent.delete(vm)
    assert socket_agent.list() == []


def test_unreachable_agent_is_transient(tmp_path: Path) -> None:
    with pytest.raises(AgentUnavailable):
        AgentClient(f"unix:{tmp_path}/missing.sock").facts()


def test_pinning_reaches_the_domain_and_the_lockfile(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    from warmcache_agent.libvirt_driver import LibvirtDriver

    cfg = config(tmp_path).model_copy(update={"numa_nodes": 2})  # 2 x 8 CPUs
    driver = LibvirtDriver("test:///default")
    host = HostAgentService(cfg, driver)
    big = Flavor(name="big", vcpus=8, memory_mib=1024, disk_gib=1)
    a, b = name(), name()
    host.create(VmSpec(a, big))
    host.create(VmSpec(b, SMALL))
    pins = {x.name: (x.numa_node, x.cpus) for x in host.lockfile.all()}
    assert pins[a] == (1, tuple(range(8, 16)))  # node 0 lost CPUs 0-1 to the buffer
    assert pins[b] == (0, (2, 3))
    assert host.facts().numa_free == (4, 0)
    dom = ET.fromstring(driver._conn.lookupByName(a).XMLDesc())
    assert [p.get("cpuset") for p in dom.iter("vcpupin")] == [str(c) for c in range(8, 16)]
    assert dom.find("cputune/emulatorpin").get("cpuset") == "8-15"  # type: ignore[union-attr]
    assert dom.find("numatune/memory").get("nodeset") == "1"  # type: ignore[union-attr]
    for vcpus, code in (
        (3, "invalid_request"),
        (10, "invalid_request"),
        (6, "insufficient_capacity"),
    ):
        odd = Flavor(name="odd", vcpus=vcpus, memory_mib=512, disk_gib=1)
        with pytest.raises(AgentFault) as err:
            host.create(VmSpec(name(), odd))
        assert err.value.code == code, vcpus
    assert len(host.lockfile.all()) == 2  # refusals left nothing behind
    restarted = HostAgentService(cfg, driver)  # pins survive a restart
    assert {x.name: (x.numa_node, x.cpus) for x in restarted.lockfile.all()} == pins


def test_the_agent_never_touches_a_domain_it_does_not_manage(tmp_path: Path) -> None:
    """libvirt's own `test` domain (test:///default starts with it) is not
    the agent's: every operation on it is `not_found`, a create of that name
    is refused, and the domain is still there, running, afterwards; the
    same for a domain named in reconcile_ignore even if the agent has it."""
    import libvirt

    from warmcache_agent.libvirt_driver import LibvirtDriver

    driver = LibvirtDriver("test:///default")
    cfg = config(tmp_path).model_copy(update={"reconcile_ignore": ("ignored",)})
    agent = HostAgentService(config(tmp_path), driver)
    conn = libvirt.open("test:///default")
    try:
        assert conn.lookupByName("test").isActive()
        requests = [
            {"op": "delete", "name": "test"},
            {"op": "status", "name": "test"},
            {"op": "attach_disk", "name": "test", "target": "vdb", "size_gib": 1},
            {"op": "detach_disk", "name": "test", "target": "vdb"},
            {"op": "attach_nvme", "name": "test", "pci": "0000:01:00.0"},
        ]
        for request in requests:
            reply = handle_line(agent, json.dumps(request).encode())
            assert reply == {
                "ok": False,
                "error": "not_found",
                "detail": "no VM test managed by this agent",
            }, request
        create = {"op": "create", "vm": {"name": "test", "flavor": SMALL.model_dump()}}
        assert handle_line(agent, json.dumps(create).encode())["error"] == "already_exists"
        assert conn.lookupByName("test").isActive()  # untouched
        agent.create(VmSpec("ignored", SMALL))  # (an operator's later choice to ignore it)
        agent.config = cfg
        assert handle_line(agent, b'{"op": "delete", "name": "ignored"}')["error"] == "not_found"
        assert conn.lookupByName("ignored").isActive()
        assert "test" not in agent.facts().vms
        assert any(f.vm == "test" and f.kind == "unmanaged_domain" for f in agent.reconcile())
    finally:
        for dom in conn.listAllDomains():
            if dom.name() == "ignored":
                dom.destroy()
                dom.undefine()
        conn.close()


def test_idle_connections_cost_no_threads_past_the_bound_and_are_closed(tmp_path: Path) -> None:
    """200 idle connections made 202 threads on an agent. Now: 4 workers and
    a queue of 4; connections beyond get `busy` at once, idle and half-sent
    ones are closed after the idle timeout, and the agent still answers."""
    import socket as socket_
    import time

    from warmcache_agent.config import ServerLimits
    from warmcache_agent.libvirt_driver import LibvirtDriver

    cfg = config(tmp_path).model_copy(
        update={"server": ServerLimits(workers=4, queue=4, idle_timeout_s=0.5)}
    )
    path = str(tmp_path / "agent.sock")
    server = AgentServer(path, HostAgentService(cfg, LibvirtDriver("test:///default")))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    before = threading.active_count()
    thread.start()
    idle = []
    try:
        for i in range(200):
            s = socket_.socket(socket_.AF_UNIX)
            s.connect(path)
            if i % 2:
                # half a request line (one past the bound may be refused and
                # closed before it is sent: a broken pipe then)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    s.sendall(b'{"op": "fac')
            idle.append(s)
        # 4 workers, a refuser and the accept loop: bounded whatever the clients do
        assert threading.active_count() - before <= 4 + 2
        s = idle[-1]
        s.settimeout(5)
        assert json.loads(s.recv(4096)) == {
            "ok": False,
            "error": "busy",
            "detail": "every worker of this agent is busy: retry",
        }
        started = time.monotonic()
        for s in idle[:8]:  # the ones that got a worker: closed after 0.5 s, not held
            s.settimeout(10)
            assert s.recv(4096) == b""
        assert time.monotonic() - started < 5
        client = AgentClient(f"unix:{path}", timeout_s=10)

        def answers() -> bool:  # once the refused ones are flushed, it serves again
            try:
                return client.facts().hypervisor == "h1"
            except AgentUnavailable:
                return False

        wait_for("the agent to serve again", answers, 10)
    finally:
        for s in idle:
            s.close()
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_stop_handler_runs_once_even_when_signalled_inside_itself() -> None:
    """A second SIGTERM lands while the first handler runs (systemd signals
    the whole unit, the launcher forwards it): it must not run the stop
    again inside itself, where Event.set's lock is already held."""
    from warmcache_agent.bounded import once

    calls: list[int] = []

    @once
    def stop() -> None:
        calls.append(1)
        handler(signal.SIGTERM, None)  # the second signal, mid-stop

    handler = stop
    handler(signal.SIGTERM, None)
    assert calls == [1]


def test_a_delete_during_its_create_waits_and_nothing_is_left_untracked(tmp_path: Path) -> None:
    """A delete that arrives while the VM's create is still booting waits for
    the create, then deletes: it once gave the booking back under the create,
    which then booted a domain the agent no longer tracked."""
    from warmcache_agent.libvirt_driver import LibvirtDriver

    booting, go_on = threading.Event(), threading.Event()

    def boot(_seconds: float) -> None:  # the create's boot wait, held by the test
        booting.set()
        go_on.wait(10)

    cfg = config(tmp_path).model_copy(update={"create_delay_s": 1.0})
    host = HostAgentService(cfg, LibvirtDriver("test:///default"), sleep=boot)
    vm = name()
    created: list[object] = []
    creating = threading.Thread(target=lambda: created.append(host.create(VmSpec(vm, SMALL))))
    creating.start()
    wait_for("the create to boot", booting.is_set, 10)

    class Watched:  # the VM's lock, seen by whoever comes for it next
        def __init__(self, inner: threading.Lock) -> None:
            self.inner, self.waiting = inner, 0

        def __enter__(self) -> None:
            self.waiting += 1
            self.inner.acquire()

        def __exit__(self, *_exc: object) -> None:
            self.inner.release()

        def locked(self) -> bool:
            return self.inner.locked()

    watched = Watched(host._name_locks[vm])
    host._name_locks[vm] = watched  # type: ignore[assignment]
    deleted: list[object] = []
    deleting = threading.Thread(target=lambda: deleted.append(host.delete(vm)))
    deleting.start()
    wait_for("the delete to wait for the create", lambda: watched.waiting == 1, 10)
    assert not deleted and host.lockfile.get(vm) is not None  # nothing given back yet
    go_on.set()
    creating.join()
    deleting.join()
    assert created and deleted == [{"name": vm, "deleted": True}]
    assert host._driver.state(vm) == "missing" and host.lockfile.all() == []
    assert vm not in host._name_locks


def test_health_sockets_fit_a_unix_socket_path_whatever_the_state_folder(tmp_path: Path) -> None:
    """A guest's health channel is a Unix socket: 107 bytes at most. An agent
    whose state folder is deep (CI's temporary folders) puts them in a
    short private folder instead of failing every build."""
    from warmcache_agent.libvirt_driver import MAX_SOCKET_PATH, LibvirtDriver

    shallow = LibvirtDriver("test:///default", run_dir=tmp_path / "run")
    assert shallow.health_socket("vm-1").parent == tmp_path / "run"
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "run"
    driver = LibvirtDriver("test:///default", run_dir=deep)
    try:
        path = driver.health_socket("vm-1")
        assert len(str(path).encode()) <= MAX_SOCKET_PATH
        assert path != driver.health_socket("vm-2")
        assert path.parent.stat().st_mode & 0o077 == 0  # nobody else's to open
        # the same folder for the same state folder, after a restart too
        again = LibvirtDriver("test:///default", run_dir=deep)
        assert again.health_socket("vm-1") == path
        again.close()
        assert not path.parent.exists()  # an agent that stops leaves nothing behind
    finally:
        driver.close()
        shallow.close()
