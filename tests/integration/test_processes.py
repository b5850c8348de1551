"""Concurrent acquisitions through two `warmcache serve` processes over HTTP
(§12.1, §12.3): no VM handed out twice, modes held, failures claim nothing."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_quickstart import free_port_pair
from warmcache.layout import Keys
from warmcache.quickstart import QuickstartStack, Topology

pytestmark = [
    pytest.mark.integration,
    pytest.mark.libvirt,
    pytest.mark.usefixtures("libvirt_available"),
]

RULES = """
[rules.az1.small]
total_instances = 24
max_instance_per_cycle = 24
min_fault_domain = 3
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[QuickstartStack]:
    qs = QuickstartStack(
        tmp_path / "qs",
        port=free_port_pair(),
        topology=Topology(azs=("az1",)),
        create_delay_s=0.0,
        cycle_interval_s=3600,
        rules_toml=RULES,
    )
    with qs:
        qs.wait_full(timeout_s=60)
        yield qs


def test_32_http_clients_over_two_processes(stack: QuickstartStack) -> None:
    handed: list[list[dict[str, str]]] = []
    modes: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(32)

    def client(n: int) -> None:
        rng = random.Random(n)
        with httpx.Client(base_url=stack.urls[n % 2], timeout=30) as http:
            barrier.wait()
            for _ in range(6):
                mode = rng.choice(["rack-aware", "hypervisor-aware", "best-effort"])
                reply = http.post(
                    "/v1/acquire",
                    json={"flavor": "small", "az": "az1", "count": rng.randint(1, 3), "mode": mode},
                )
                assert reply.status_code in (200, 409, 503), reply.text
                if reply.status_code == 200:
                    with lock:
                        handed.append(reply.json()["vms"])
                        modes.append(mode)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = [vm["name"] for vms in handed for vm in vms]
    assert len(names) == len(set(names)), "a VM was handed out twice"
    for mode, vms in zip(modes, handed, strict=True):
        key = {"rack-aware": "rack", "hypervisor-aware": "hypervisor"}.get(mode)
        if key:
            assert len({vm[key] for vm in vms}) == len(vms)
    store = stack.store()
    try:
        acquired, _ = store.range(Keys("warmcache").acquired_dir())
    finally:
        store.close()
    assert {kv.key.rsplit("/", 1)[1] for kv in acquired} == set(names)  # failures claimed nothing
    assert len(names) >= 20
