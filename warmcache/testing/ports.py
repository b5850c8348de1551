"""Free TCP ports for servers a test or bench starts in another process.

A port taken by binding to port 0 comes from the kernel's ephemeral range,
the same range every outgoing connection draws its local port from: between
closing the probe and the server binding it, a client connection (to etcd,
to another server) can take it, and the server dies with ``EADDRINUSE``
(a CI run did). These helpers pick below that range,
where the kernel never hands out a port on its own, and check the port
binds now.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000


def _ephemeral_start() -> int:
    try:
        return int(_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _binds(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(count: int = 1) -> int:
    """The first of ``count`` adjacent ports that bind now, below the
    kernel's ephemeral range."""
    high = max(_LOWEST + 1_000, _ephemeral_start()) - count
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(_LOWEST, high)
        if all(_binds(port + i) for i in range(count)):
            return port
    raise RuntimeError(f"no {count} adjacent free port(s) in {_LOWEST}-{high + count}")
