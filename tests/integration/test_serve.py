"""`warmcache serve` on its production HTTP server (waitress): bounded
threads, a request-size limit, keep-alive, and a clean stop on SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polling import wait_for
from warmcache.adapters.sqlite_store import SqliteStore

pytestmark = [pytest.mark.integration]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    config = tmp_path / "service.toml"
    config.write_text(f"""
[service]
node = "serve-test"
listen_port = {port}
run_builds = false
run_health = false
http_threads = 2
http_max_body_bytes = 4096
[store]
path = "{tmp_path / 'store.db'}"
[catalog]
path = "{CONFIG_DIR / 'flavors.toml'}"
[events]
kind = "log"
""")
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "warmcache", "serve", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)
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
    instance: tuple[subprocess.Popen[bytes], int, Path]
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
    big = json.dumps({"flavor": "small", "az": "az1", "count": 1, "mode": "best-effort",
                      "requester": "x" * 10_000})
    conn.request("POST", "/v1/acquire", big, {"Content-Type": "application/json"})
    refused = conn.getresponse()
    assert refused.status == 413
    refused.read()
    conn.close()
    fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    fresh.request("GET", "/healthz")
    assert fresh.getresponse().status == 200  # and the instance is fine
    fresh.close()


def test_a_chunked_body_over_the_limit_is_refused(
    instance: tuple[subprocess.Popen[bytes], int, Path]
) -> None:
    _, port, _ = instance
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    chunks = (b"{" + b" " * 2000 for _ in range(5))  # 10 kB, no Content-Length
    conn.request("POST", "/v1/acquire", chunks, {"Content-Type": "application/json"},
                 encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()


def test_sigterm_stops_the_instance_and_deregisters_it(
    instance: tuple[subprocess.Popen[bytes], int, Path]
) -> None:
    proc, _, tmp_path = instance
    store = SqliteStore(tmp_path / "store.db")
    try:
        wait_for("the instance to register",
                 lambda: [s.node for s in store.services("warmcache")] == ["serve-test"], 10)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert store.services("warmcache") == []
    finally:
        store.close()
