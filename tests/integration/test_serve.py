"""`warmcache serve` on its production HTTP server (waitress): bounded
threads, a request-size limit, keep-alive, and a clean stop on SIGTERM."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.testing.polling import wait_for
from warmcache.testing.ports import free_port

pytestmark = [pytest.mark.integration]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


@pytest.fixture
def settings() -> dict[str, object]:
    return {"http_threads": 2, "http_max_body_bytes": 4096}


@pytest.fixture
def instance(
    tmp_path: Path, settings: dict[str, object]
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    config = tmp_path / "service.toml"
    extra = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    config.write_text(f"""
[service]
node = "serve-test"
listen_port = {port}
run_builds = false
run_health = false
{extra}
[store]
path = "{tmp_path / "store.db"}"
[catalog]
path = "{CONFIG_DIR / "flavors.toml"}"
[events]
kind = "log"
""")
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "warmcache", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "WARMCACHE_LOG_FORMAT": "json"},  # every line below is JSON
    )
    log.close()

    def answers() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            return False
        finally:
            conn.close()

    wait_for("warmcache serve to answer", answers, 30)
    try:
        yield proc, port, tmp_path
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_keep_alive_and_a_request_size_limit(
    instance: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    _, port, _ = instance
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/healthz")
    first = conn.getresponse()
    assert first.status == 200 and json.loads(first.read())["node"] == "serve-test"
    sock = conn.sock
    conn.request("GET", "/v1/pools")
    second = conn.getresponse()
    assert second.status == 200 and second.read()
    assert conn.sock is sock  # the same connection served both
    big = json.dumps(
        {
            "flavor": "small",
            "az": "az1",
            "count": 1,
            "mode": "best-effort",
            "requester": "x" * 10_000,
        }
    )
    conn.request("POST", "/v1/acquire", big, {"Content-Type": "application/json"})
    refused = conn.getresponse()
    assert refused.status == 413  # by waitress, before the app: still the API's shape
    assert json.loads(refused.read())["error"] == "body_too_large"
    conn.close()
    fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    fresh.request("GET", "/healthz")
    assert fresh.getresponse().status == 200  # and the instance is fine
    fresh.close()


def test_a_chunked_body_over_the_limit_is_refused(
    instance: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    _, port, _ = instance
    chunk = b"7d0\r\n" + b" " * 2000 + b"\r\n"
    reply = raw_exchange(
        port,
        b"POST /v1/acquire HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 5,
    )
    head, _, body = reply.partition(b"\r\n\r\n")  # 10 kB, no Content-Length
    assert head.startswith(b"HTTP/1.1 413") and json.loads(body)["error"] == "body_too_large"


def test_a_body_over_the_limit_still_being_sent_gets_its_413_not_a_reset(
    instance: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    """The server refuses at the limit and lingers: it shuts its write side
    and drops what the client still sends (up to 1 MiB, 2 s), so the client
    reads the typed 413 instead of a reset (closing with unread data makes
    the kernel reset the connection, reply and all)."""
    _, port, _ = instance
    body = b" " * 600_000  # far beyond the socket buffers and the 4,096-byte limit
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < len(body):  # the whole body, as a client that does not look
                sent += sock.send(body[sent : sent + 65536])
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    assert out.startswith(b"HTTP/1.1 413")
    assert json.loads(out.partition(b"\r\n\r\n")[2])["error"] == "body_too_large"


def raw_exchange(port: int, data: bytes, timeout_s: float = 10) -> bytes:
    """Send ``data`` (the server may stop reading and answer first, as it
    should for a body over the limit) and read the reply to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_a_malformed_chunk_is_a_typed_400(
    instance: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    _, port, _ = instance
    reply = raw_exchange(
        port,
        b"POST /v1/acquire HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and json.loads(body)["error"] == "invalid_request"


@pytest.mark.parametrize("settings", [{"http_idle_timeout_s": 1.0}])
def test_idle_and_half_sent_connections_are_closed(
    instance: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    _, port, _ = instance
    for opening in (b"", b"POST /v1/acquire HTTP/1.1\r\nHost: x\r\nContent-Le"):
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(opening)
            assert sock.recv(1024) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    "settings", [{"http_threads": 1, "http_queue": 0, "request_deadline_s": 60.0}]
)  # held long enough
def test_a_request_beyond_the_threads_and_queue_is_refused_at_once(
    instance: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    """The one worker is held by a rule write waiting for SQLite's write
    lock (held here); the next request is 503 overloaded at once."""
    _, port, tmp_path = instance
    held = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    held.execute("BEGIN IMMEDIATE")
    writer: http.client.HTTPConnection | None = None
    try:
        writer = wait_for("the worker to be taken", lambda: _hold_the_worker(port), 20)
        started = time.monotonic()
        assert _overloaded(port, timeout_s=10)
        # at once: the held request takes 30 s (SQLite's busy timeout)
        assert time.monotonic() - started < 5
        held.execute("ROLLBACK")
        assert writer.getresponse().status == 200  # the held request then went through
    finally:
        with contextlib.suppress(sqlite3.Error):
            held.execute("ROLLBACK")
        held.close()
        if writer is not None:
            writer.close()


def _hold_the_worker(port: int) -> http.client.HTTPConnection | None:
    """Sends a rule write, which waits for SQLite's write lock (held); the
    worker is taken once its reply is still due while a probe is refused.
    A write that lands while the worker still ends the fixture's health
    check is itself refused (503, a reply at once): "not yet", sent again."""
    writer = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"max_instance_per_cycle": 1, "total_instances": 1})
    writer.request("PUT", "/v1/rules/az1/small", body, {"Content-Type": "application/json"})
    assert writer.sock is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if _overloaded(port):  # by the write, or by the health check's end?
            if not select.select([writer.sock], [], [], 1.0)[0]:
                return writer  # the write is not answered: it holds the worker
            break
        if select.select([writer.sock], [], [], 0)[0]:
            break
    assert writer.getresponse().status == 503  # answered at once: it was refused
    writer.close()
    return None


def _overloaded(port: int, timeout_s: float = 2.0) -> bool:
    """A probe that lands before the worker took the held request waits in
    the queue behind it: that is a timeout here, "not yet"."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", "/v1/pools")
        reply = conn.getresponse()
        body = json.loads(reply.read())
        return (
            reply.status == 503
            and body["error"] == "overloaded"
            and reply.getheader("Retry-After") == "1"
        )
    except TimeoutError:
        return False
    finally:
        conn.close()


def test_sigterm_stops_the_instance_and_deregisters_it(
    instance: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, _, tmp_path = instance
    store = SqliteStore(tmp_path / "store.db")
    try:
        wait_for(
            "the instance to register",
            lambda: [s.node for s in store.services("warmcache")] == ["serve-test"],
            10,
        )
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert store.services("warmcache") == []
    finally:
        store.close()
    lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(r) for r in lines)


class Trickle:
    """``count`` connections from this address, each sending a request line
    one byte every ``every_s`` and opened again when the server closes it
    (the outside test's attack: 1,100 connections, a byte every 10 s)."""

    def __init__(self, port: int, count: int, every_s: float) -> None:
        self.port, self.count, self.every_s = port, count, every_s
        self.cut = 0  # connections the server closed
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def __enter__(self) -> Trickle:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        line = b"POST /v1/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        open_: dict[socket.socket, int] = {}
        while not self.stop.is_set():
            while len(open_) < self.count:
                with contextlib.suppress(OSError):
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=1)
                    sock.setblocking(False)
                    open_[sock] = 0
            for sock, sent in list(open_.items()):
                try:
                    if sock.recv(1) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    with contextlib.suppress(OSError):
                        sock.send(line[sent % len(line) : sent % len(line) + 1])
                        open_[sock] = sent + 1
                    continue
                except OSError:
                    pass
                self.cut += 1
                sock.close()
                del open_[sock]
            self.stop.wait(self.every_s)
        for sock in open_:
            sock.close()


@pytest.mark.parametrize("settings", [{"http_threads": 4, "http_read_timeout_s": 3.0}])
def test_trickling_clients_cannot_make_the_server_unreachable(
    instance: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    """1,100 connections trickling a byte a second, over the default bounds
    (1,000 connections, 500 per client address), from the same address as
    the probes: /healthz and /v1/pools keep answering at once, and each
    trickle is cut at the read deadline (they stayed open for ever, and
    /healthz timed out for 75 s)."""
    _, port, _ = instance
    with Trickle(port, 1100, every_s=1.0) as trickle:
        slowest, answered, until = 0.0, 0, time.monotonic() + 30
        while trickle.cut < 1100 and time.monotonic() < until:  # past the deadline of all
            for path in ("/healthz", "/v1/pools"):
                started = time.monotonic()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    conn.request("GET", path)
                    assert conn.getresponse().status == 200
                finally:
                    conn.close()
                slowest = max(slowest, time.monotonic() - started)
                answered += 1
        assert trickle.cut >= 1100, f"only {trickle.cut} trickles were cut"
    assert answered >= 20 and slowest < 2.0, f"{answered} answered, slowest {slowest:.2f} s"


@pytest.mark.parametrize("settings", [{"http_read_timeout_s": 2.0}])
def test_a_request_that_trickles_is_cut_at_the_read_deadline(
    instance: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    """Within the connection bounds, a request that never arrives whole is
    cut at http_read_timeout_s (plus one sweep), not at the idle timeout."""
    _, port, _ = instance
    started = time.monotonic()
    with Trickle(port, 20, every_s=0.5) as trickle:
        wait_for("every trickle to be cut", lambda: trickle.cut >= 20, 15)
    assert time.monotonic() - started < 2.0 + 0.5 + 1.5  # deadline, sweep, loop


@pytest.mark.parametrize(
    "settings", [{"http_threads": 1, "http_queue": 4, "request_deadline_s": 1.5}]
)
def test_the_deadline_counts_from_the_requests_arrival_not_its_handler(
    instance: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    """A request queued behind a worker held by an unanswering store is
    answered within the deadline (+0.5 s) of its arrival: its wait in the
    queue counted for nothing, so it took the wait plus a whole deadline
    (3.08 s against 2.5 s in the outside test, while etcd restarted)."""
    _, port, tmp_path = instance
    held = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    held.execute("BEGIN IMMEDIATE")  # the store answers no write meanwhile
    body = json.dumps({"max_instance_per_cycle": 1, "total_instances": 1})
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(3)]
    try:
        sent = []
        for conn in conns:  # one worker: each waits in the queue behind the one before
            conn.request("PUT", "/v1/rules/az1/small", body, {"Content-Type": "application/json"})
            sent.append(time.monotonic())
        for conn, at in zip(conns, sent, strict=True):
            reply = conn.getresponse()
            took = time.monotonic() - at
            assert reply.status == 503 and json.loads(reply.read())["error"] == "store_unavailable"
            assert took <= 1.5 + 0.5, f"answered {took:.2f} s after it arrived"
    finally:
        held.execute("ROLLBACK")
        held.close()
        for conn in conns:
            conn.close()


def _seed(store: SqliteStore, names: list[str]) -> None:
    """Ready VMs on three hosts, as a leader's cycle leaves them."""
    from warmcache.layout import Keys
    from warmcache.model import HostFacts, InstanceState, PoolInstance

    keys = Keys("warmcache")
    for r in range(3):
        facts = HostFacts(
            hypervisor=f"h{r}", rack=f"r{r}", az="az1", vcpus_total=64, vcpus_free=0,
            memory_mib_total=1, memory_mib_free=0, disk_gib_total=1, disk_gib_free=0,
            endpoint="unix:/nowhere",
        )  # fmt: skip
        store.put(keys.host("az1", f"h{r}"), facts.model_dump_json())
    for i, name in enumerate(names):
        vm = PoolInstance(
            name=name, az="az1", flavor="small", rack=f"r{i % 3}", hypervisor=f"h{i % 3}",
            state=InstanceState.READY, created_at=0,
        )  # fmt: skip
        store.put(keys.pool("az1", name), vm.model_dump_json())


def _acquire(port: int) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = json.dumps({"flavor": "small", "az": "az1", "count": 1, "mode": "best-effort"})
        conn.request("POST", "/v1/acquire", body, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def test_after_a_freeze_no_capacity_is_not_answered_while_the_store_has_vms(
    instance: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    """Issue 28, item 9: SIGSTOP the instance (8 s in the outside test; 3 s
    here) while its pool is refilled behind its back, SIGCONT it and ask at
    once, from 4 clients: every request is served from the VMs the store
    holds, none refused with a "0 ready" the views believed. (On SQLite the
    feed catches up by itself here, so this passes without the barrier too:
    the promise is checked end to end; tests/unit/test_stalls.py freezes
    the feed and fails without it.)"""
    proc, port, tmp_path = instance
    store = SqliteStore(tmp_path / "store.db")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = json.dumps({"max_instance_per_cycle": 1, "total_instances": 8})
        conn.request("PUT", "/v1/rules/az1/small", body, {"Content-Type": "application/json"})
        assert conn.getresponse().status == 200
        conn.close()
        _seed(store, [f"first-{i}" for i in range(4)])
        wait_for("the first VMs to be served", lambda: _acquire(port)[0] == 200, 10)
        for _ in range(3):
            assert _acquire(port)[0] == 200
        status, reply = _acquire(port)
        assert status == 409 and reply["error"] == "no_capacity"  # empty, and it knows
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            _seed(store, [f"refill-{i}" for i in range(8)])  # the refill it cannot see
            frozen_until = time.monotonic() + 3
            wait_for("the freeze", lambda: time.monotonic() >= frozen_until, 10)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        with ThreadPoolExecutor(4) as clients:
            replies = list(clients.map(lambda _: _acquire(port), range(8)))
        assert [status for status, _ in replies] == [200] * 8, replies
    finally:
        store.close()
