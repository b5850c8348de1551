"""warmcache-proxy with real TLS: mTLS, the allow-list, strict validation."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import select
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from warmcache.adapters.agent_client import AgentClient, AgentTls
from warmcache.adapters.file_catalog import FileFlavorCatalog
from warmcache.errors import AgentRejected, AgentUnavailable
from warmcache.layout import Keys
from warmcache.model import Flavor
from warmcache.ports import VmSpec
from warmcache.testing.certs import Issued, TestCA
from warmcache.testing.polling import wait_for
from warmcache_agent.config import AgentConfig, DiskConfig, ImageCacheConfig, Resources
from warmcache_agent.daemon import AgentServer
from warmcache_agent.operations import HostAgentService
from warmcache_agent.proxy import ProxyServer, server_context

pytestmark = [pytest.mark.libvirt, pytest.mark.usefixtures("libvirt_available")]

SMALL = Flavor(name="small", vcpus=2, memory_mib=2048, disk_gib=10)


@dataclass
class Rig:
    url: str
    ca: TestCA
    client: Issued
    agent: HostAgentService
    seen: list[Any]
    proxy: ProxyServer

    def tls(self, client: Issued | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca.cert))
        if client is not None:
            ctx.load_cert_chain(str(client.cert), str(client.key))
        return ctx


def client_hello(ctx: ssl.SSLContext) -> bytes:
    """A client's first TLS flight, to send by hand: an ssl.SSLSocket leaks
    itself when the peer resets before the handshake (CPython 3.11's
    ssl._create re-raises the reset without closing), which -W error fails."""
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def serve(server: Any) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    return thread


CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
IMAGE = FileFlavorCatalog(CONFIG_DIR / "flavors.toml").image("demo-blank").model_dump(mode="json")  # type: ignore[union-attr]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    from warmcache_agent.libvirt_driver import LibvirtDriver

    ca = TestCA(tmp_path, "fleet")
    server_cert = ca.issue("proxy", server=True)
    client = ca.issue("wc-1", server=False)
    config = AgentConfig(
        # a pretend host, larger than this machine's disk: no filesystem check
        disks=DiskConfig(check_filesystem=False),
        hypervisor="h1",
        rack="r1",
        az="az1",
        state_dir=str(tmp_path),
        capacity=Resources(vcpus=8, memory_mib=16384, disk_gib=100),
        images=ImageCacheConfig(local_dirs=(str(CONFIG_DIR / "images"),)),
    )
    agent = HostAgentService(config, LibvirtDriver("test:///default"))
    seen: list[Any] = []
    handle = agent.handle

    def recorded(request: Any) -> Any:
        seen.append(request)
        return handle(request)

    agent.handle = recorded  # type: ignore[method-assign]
    sock = str(tmp_path / "agent.sock")
    agent_server = AgentServer(sock, agent)
    context = server_context(str(server_cert.cert), str(server_cert.key), str(ca.cert))
    proxy = ProxyServer(("127.0.0.1", 0), sock, context, [ipaddress.ip_network("127.0.0.0/8")])
    threads = [serve(agent_server), serve(proxy)]
    try:
        yield Rig(f"https://127.0.0.1:{proxy.server_address[1]}", ca, client, agent, seen, proxy)
    finally:
        for s in (proxy, agent_server):
            s.shutdown()
            s.server_close()
        for t in threads:
            t.join()


def test_a_good_client_certificate_reaches_the_agent(rig: Rig) -> None:
    client = AgentClient(
        rig.url, tls=AgentTls(str(rig.client.cert), str(rig.client.key), str(rig.ca.cert))
    )
    name = f"vm-{uuid.uuid4().hex[:8]}"
    status = client.create(VmSpec(name, SMALL))
    assert status.healthy and client.status(name).state == "running"
    assert client.facts().vcpus_free == 8 - 2 - 2
    with pytest.raises(AgentRejected) as err:
        client.delete("no-such-vm")
    assert err.value.agent_code == "not_found"
    client.delete(name)
    client.close()


def test_no_client_certificate_fails_the_handshake(rig: Rig) -> None:
    with pytest.raises(httpx.TransportError):  # TLS 1.3: refused at the first read
        httpx.post(f"{rig.url}/v1/agent", json={"op": "facts"}, verify=rig.tls(None))
    assert rig.seen == []


def test_a_certificate_from_another_ca_fails_the_handshake(rig: Rig, tmp_path: Path) -> None:
    rogue = TestCA(tmp_path, "rogue").issue("intruder", server=False)
    with pytest.raises(httpx.TransportError):  # TLS 1.3: refused at the first read
        httpx.post(f"{rig.url}/v1/agent", json={"op": "facts"}, verify=rig.tls(rogue))
    client = AgentClient(rig.url, tls=AgentTls(str(rogue.cert), str(rogue.key), str(rig.ca.cert)))
    with pytest.raises(AgentUnavailable):
        client.facts()
    client.close()
    assert rig.seen == []


def test_an_address_outside_the_allow_list_is_closed_before_any_handshake(rig: Rig) -> None:
    """Checked at accept: no TLS handshake, no worker slot, nothing forwarded
    (it was checked after both, so anyone could hold the workers)."""
    rig.proxy.allow = [ipaddress.ip_network("10.0.0.0/8")]
    for hello in (client_hello(rig.tls(rig.client)), b""):  # then one that says nothing
        with (
            contextlib.suppress(ConnectionResetError, BrokenPipeError),  # reset, nothing said
            socket.create_connection(rig.proxy.server_address, timeout=5) as sock,
        ):
            sock.sendall(hello)
            assert sock.recv(1) == b""
    assert rig.proxy.denied == 2 and rig.proxy.serving == 0
    assert rig.seen == []


@pytest.mark.parametrize(
    "body",
    [
        {"op": "reboot"},
        {"op": "facts", "extra": 1},
        {"op": "delete", "name": 42},
        {"op": "delete", "name": "../../etc"},
        {
            "op": "create",
            "vm": {
                "name": "ok",
                "flavor": {"name": "s", "vcpus": "2", "memory_mib": 512, "disk_gib": 1},
            },
        },
        {
            "op": "create",
            "vm": {
                "name": "ok",
                "flavor": {"name": "s", "vcpus": 0, "memory_mib": 512, "disk_gib": 1},
            },
        },
        {"op": "attach_disk", "name": "ok", "target": "sda", "size_gib": 1},
        {"op": "attach_disk", "name": "ok", "target": "vdb", "size_gib": 0},
        {"op": "attach_nvme", "name": "ok", "pci": "3b:00.0; rm -rf /"},
        {"op": "prefetch", "image": {**IMAGE, "source": "http://plain.example/x.qcow2"}},
        {"op": "prefetch", "image": {**IMAGE, "sha256": "0" * 63}},
        {"op": "prefetch", "image": {**IMAGE, "format": "vmdk"}},
        {
            "op": "create",
            "vm": {
                "name": "ok",
                "flavor": {"name": "s", "vcpus": 2, "memory_mib": 512, "disk_gib": 1},
                "image": {**IMAGE, "source": "/srv/../etc/shadow"},
            },
        },
        [1, 2],
    ],
)
def test_malformed_bodies_get_400_and_the_agent_sees_nothing(rig: Rig, body: Any) -> None:
    reply = httpx.post(f"{rig.url}/v1/agent", json=body, verify=rig.tls(rig.client))
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_request"
    assert rig.seen == []


def test_agent_errors_map_to_http_statuses(rig: Rig) -> None:
    big = {"name": "big", "vcpus": 2, "memory_mib": 1_000_000, "disk_gib": 1}
    reply = httpx.post(
        f"{rig.url}/v1/agent",
        verify=rig.tls(rig.client),
        json={"op": "create", "vm": {"name": "huge", "flavor": big}},
    )
    assert reply.status_code == 409 and reply.json()["error"] == "insufficient_capacity"
    for image, code in (
        ({**IMAGE, "sha256": "0" * 64}, "image_invalid"),
        ({**IMAGE, "source": "/nowhere/x.raw"}, "image_unavailable"),
    ):
        reply = httpx.post(
            f"{rig.url}/v1/agent",
            verify=rig.tls(rig.client),
            json={"op": "prefetch", "image": image},
        )
        assert reply.status_code == 502 and reply.json()["error"] == code
    reply = httpx.get(f"{rig.url}/healthz", verify=rig.tls(rig.client))
    assert reply.status_code == 200 and reply.json()["result"]["healthy"]


def test_the_leader_builds_through_the_proxy(rig: Rig, tmp_path: Path) -> None:
    from warmcache.adapters.sqlite_store import SqliteStore
    from warmcache.bootstrap import build
    from warmcache.config import parse_config

    config_dir = Path(__file__).resolve().parents[2] / "config"
    config = parse_config(
        {
            "service": {"prefix": "wc"},
            "store": {"path": str(tmp_path / "store.db")},
            "events": {"path": str(tmp_path / "events.db")},
            "catalog": {"path": str(config_dir / "flavors.toml")},
            "agent_tls": {
                "cert": str(rig.client.cert),
                "key": str(rig.client.key),
                "ca": str(rig.ca.cert),
            },
        },
        environ={},
    )
    store = SqliteStore(tmp_path / "store.db")
    facts = rig.agent.facts().model_copy(update={"endpoint": rig.url})  # advertised
    store.put(Keys("wc").host("az1", "h1"), facts.model_dump_json())
    service = build(config)
    try:
        service.rules.put("az1", "small", {"max_instance_per_cycle": 2, "total_instances": 2})
        report = service.run_cycle()
        assert report is not None, "this instance did not lead"
        assert report.built[("az1", "small")] == 2, report.summary()
        assert len(rig.agent.list()) == 2
        assert all(req.op == "create" for req in rig.seen if hasattr(req, "vm"))
    finally:
        service.close()
        store.close()


def raw(rig: Rig, data: bytes, timeout_s: float = 10) -> bytes:
    """Send raw bytes over TLS with the good client certificate; read all."""
    host, port = rig.url.removeprefix("https://").split(":")
    ctx = rig.tls(rig.client)
    with (
        socket.create_connection((host, int(port)), timeout=timeout_s) as sock,
        ctx.wrap_socket(sock, server_hostname=host) as tls,
    ):
        with contextlib.suppress(OSError):
            tls.sendall(data)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := tls.recv(65536):
                out += chunk
        return out


def replies(data: bytes) -> list[tuple[int, Any]]:
    """Every HTTP reply in ``data``: (status, parsed JSON body)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(
            next(
                line.split(b":", 1)[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        out.append((status, json.loads(rest[:length])))
        data = rest[length:]
    return out


FACTS = b'{"op": "facts"}'


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Length: abc\r\n",
        b"Content-Length: 1e3\r\n",
        b"Content-Length: 15\r\nContent-Length: 16\r\n",
        b"Content-Length: 15\r\nTransfer-Encoding: chunked\r\n",
    ],
)
def test_a_bad_content_length_is_a_400_and_nothing_is_forwarded(rig: Rig, headers: bytes) -> None:
    """`abc` and `1e3` closed the connection without a reply; of two
    conflicting lengths the first was used and the request forwarded."""
    out = raw(rig, b"POST /v1/agent HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n" + FACTS)
    [(status, body)] = replies(out)
    assert status == 400 and body["error"] == "invalid_request"
    assert rig.seen == []


def test_a_refused_body_is_never_read_as_the_next_request(rig: Rig) -> None:
    """After a 404 on a keep-alive connection, the unread body (here a
    complete request for the agent) was parsed as the next request."""
    smuggled = b"POST /v1/agent HTTP/1.1\r\nHost: h\r\nContent-Length: 15\r\n\r\n" + FACTS
    out = raw(
        rig,
        b"POST /nowhere HTTP/1.1\r\nHost: h\r\nContent-Length: "
        + str(len(smuggled)).encode()
        + b"\r\n\r\n"
        + smuggled,
    )
    assert [status for status, _ in replies(out)] == [404]
    assert rig.seen == []


def test_keep_alive_serves_several_requests_on_one_connection(rig: Rig) -> None:
    one = b"POST /v1/agent HTTP/1.1\r\nHost: h\r\nContent-Length: 15\r\n\r\n" + FACTS
    last = b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    out = raw(rig, one + one + last)
    assert [status for status, _ in replies(out)] == [200, 200, 200]


def test_a_wrong_method_is_405_with_allow(rig: Rig) -> None:
    out = raw(rig, b"GET /v1/agent HTTP/1.1\r\nHost: h\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 405 Method Not Allowed") and b"\r\nAllow: POST\r\n" in out


def test_idle_and_half_sent_connections_are_closed(tmp_path: Path) -> None:
    """A proxy of its own with a 0.5 s idle timeout: a connection that sends
    nothing, or half a request, is closed by the proxy."""
    from warmcache_agent.config import ServerLimits

    ca = TestCA(tmp_path, "fleet")
    cert, client = ca.issue("proxy", server=True), ca.issue("wc", server=False)
    context = server_context(str(cert.cert), str(cert.key), str(ca.cert))
    proxy = ProxyServer(
        ("127.0.0.1", 0),
        str(tmp_path / "none.sock"),
        context,
        [ipaddress.ip_network("127.0.0.0/8")],
        limits=ServerLimits(idle_timeout_s=0.5),
    )
    thread = serve(proxy)
    try:
        ctx = ssl.create_default_context(cafile=str(ca.cert))
        ctx.load_cert_chain(str(client.cert), str(client.key))
        for opening in (b"", b"POST /v1/agent HTTP/1.1\r\nHost: h\r\nContent-Le"):
            with (
                socket.create_connection(proxy.server_address, timeout=10) as sock,
                ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(opening) if opening else None
                started = time.monotonic()
                assert tls.recv(1024) == b""  # closed by the proxy, not our timeout
                assert time.monotonic() - started < 5
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join()


def test_a_client_that_goes_away_costs_one_log_line(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = rig.url.removeprefix("https://").split(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as sock,
        rig.tls(rig.client).wrap_socket(sock, server_hostname=host) as tls,
    ):
        tls.sendall(b"POST /v1/agent HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n{")
    # (gone, half way through its body)
    out = raw(rig, b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")  # still serving
    assert not any(r.exc_info for r in caplog.records)  # no traceback logged


def test_beyond_its_workers_and_queue_a_connection_is_closed_at_once(tmp_path: Path) -> None:
    """No TLS handshake for a connection there is no room for: one thread
    did each refusal's handshake in turn (2 s each), so a flood kept valid
    clients waiting."""
    from warmcache_agent.config import ServerLimits

    ca = TestCA(tmp_path, "fleet")
    cert, client = ca.issue("proxy", server=True), ca.issue("wc", server=False)
    context = server_context(str(cert.cert), str(cert.key), str(ca.cert))
    proxy = ProxyServer(
        ("127.0.0.1", 0),
        str(tmp_path / "none.sock"),
        context,
        [ipaddress.ip_network("127.0.0.0/8")],
        limits=ServerLimits(workers=1, queue=0, idle_timeout_s=20),
    )
    thread = serve(proxy)
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    ctx.load_cert_chain(str(client.cert), str(client.key))
    try:
        with (
            socket.create_connection(proxy.server_address, timeout=10) as held_sock,
            ctx.wrap_socket(held_sock, server_hostname="127.0.0.1") as held,
        ):
            held.sendall(b"POST /v1/agent HTTP/1.1\r\nHost: h\r\n")  # holds the one worker
            wait_for("the worker to be taken", lambda: proxy.serving == 1, 5)
            started = time.monotonic()
            with (  # reset at connect, or at the hello: never answered
                contextlib.suppress(ConnectionResetError, BrokenPipeError),
                socket.create_connection(proxy.server_address, timeout=10) as sock,
            ):
                sock.sendall(client_hello(ctx))
                assert sock.recv(1) == b""
            assert time.monotonic() - started < 2
            assert proxy.refused == 1 and proxy.serving == 1
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join()


def test_a_valid_client_is_served_through_a_flood_and_a_trickle(rig: Rig) -> None:
    """The outside test's attack (issue 28, item 1), small: 100 silent
    connections from outside the allow-list, each replaced when closed, and
    valid clients sending their headers a byte every 0.3 s, against a proxy
    of 4 workers and a queue of 8; every request of a valid client is
    answered, and each trickle is cut at the request deadline."""
    from warmcache_agent.config import ServerLimits

    proxy = ProxyServer(
        ("127.0.0.1", 0),
        rig.proxy.socket_path,
        rig.proxy.context,
        [ipaddress.ip_network("127.0.0.1/32")],
        limits=ServerLimits(workers=4, queue=8, idle_timeout_s=5, request_timeout_s=1.5),
    )
    thread = serve(proxy)
    stop = threading.Event()
    cut: list[float] = []

    def flood() -> None:  # from 127.0.0.2: outside the allow-list
        open_: list[socket.socket] = []
        while not stop.is_set():
            while len(open_) < 100 and not stop.is_set():
                with contextlib.suppress(OSError):
                    sock = socket.create_connection(
                        proxy.server_address, timeout=1, source_address=("127.0.0.2", 0)
                    )
                    sock.setblocking(False)
                    open_.append(sock)
            for sock in list(open_):  # replace those the proxy closed
                try:
                    if sock.recv(1) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                sock.close()
                open_.remove(sock)
            stop.wait(0.05)
        for sock in open_:
            sock.close()

    def trickle() -> None:  # a valid certificate, one byte every 0.3 s
        while not stop.is_set():
            with (
                socket.create_connection(proxy.server_address, timeout=10) as sock,
                rig.tls(rig.client).wrap_socket(sock, server_hostname="127.0.0.1") as tls,
            ):
                started = time.monotonic()
                out = b""
                with contextlib.suppress(OSError):
                    for byte in b"POST /v1/agent HTTP/1.1\r\nHost: h\r\nContent-Length: 15\r\n":
                        if stop.is_set():
                            return
                        tls.sendall(bytes([byte]))
                        if select.select([tls], [], [], 0.3)[0]:  # the proxy said something
                            break
                    answered = time.monotonic() - started
                    while chunk := tls.recv(65536):
                        out += chunk
                if out.startswith(b"HTTP/1.1 408"):
                    cut.append(answered)

    attackers = [threading.Thread(target=flood)] + [
        threading.Thread(target=trickle) for _ in range(2)
    ]
    for t in attackers:
        t.start()
    try:
        wait_for("the flood to run", lambda: proxy.denied >= 100, 10)
        url = f"https://127.0.0.1:{proxy.server_address[1]}"
        slowest, served, until = 0.0, 0, time.monotonic() + 20
        with httpx.Client(verify=rig.tls(rig.client), timeout=5) as client:
            while len(cut) < 2 and time.monotonic() < until:  # for as long as it runs
                started = time.monotonic()
                reply = client.post(f"{url}/v1/agent", json={"op": "facts"})
                slowest = max(slowest, time.monotonic() - started)
                assert reply.status_code == 200
                served += 1
        assert len(cut) >= 2 and served >= 10
        assert max(cut) < 1.5 + 1.0  # at the deadline, not at idle timeouts
        assert slowest < 1.0, f"a valid request took {slowest:.2f} s"
        assert proxy.serving <= 2 + 1  # the flood never took a slot
    finally:
        stop.set()
        for t in attackers:
            t.join()
        proxy.shutdown()
        proxy.server_close()
        thread.join()
