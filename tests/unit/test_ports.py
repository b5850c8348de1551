"""Ports for servers started in another process never come from the range
the kernel hands outgoing connections (a CI run lost a server to that)."""

from __future__ import annotations

import socket

from warmcache.testing.ports import _ephemeral_start, free_port


def test_a_free_port_is_below_the_ephemeral_range_and_binds() -> None:
    start = _ephemeral_start()
    for _ in range(20):
        port = free_port()
        assert port < start
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_adjacent_ports_all_bind() -> None:
    port = free_port(2)
    assert port + 1 < _ephemeral_start()
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", port))
        b.bind(("127.0.0.1", port + 1))
