"""Outages answer fast (§12): with the store killed (connections refused) or
frozen (SIGSTOP: connections accepted, nothing answered), an acquisition
gets a typed 503 within the request's deadline plus half a second,
/healthz answers at once, and /readyz says the store is down within its
timeout. Before: /healthz blocked up to 15.7 s; an acquisition waited the
store timeout times its retries."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unavailable
from warmcache.bootstrap import build
from warmcache.config import parse_config
from warmcache.layout import Keys
from warmcache.model import HostFacts, InstanceState, PoolInstance
from warmcache.testing.polling import wait_for
from warmcache.web import create_app

pytestmark = [pytest.mark.etcd, pytest.mark.integration]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
DEADLINE_S = 1.0


def ready_vm(service: Any, name: str, rack: int) -> None:
    """A ready VM of az1/small on host ``h<rack>``, as a cycle leaves it."""
    vm = PoolInstance(
        name=name,
        az="az1",
        flavor="small",
        rack=f"r{rack}",
        hypervisor=f"h{rack}",
        state=InstanceState.READY,
        created_at=0,
    )
    service.store.put(Keys(service.config.prefix).pool("az1", name), vm.model_dump_json())


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """An etcd of its own (this test stops it) and a started instance."""
    from warmcache.testing.localetcd import EtcdCluster, EtcdUnavailable

    try:
        cluster = EtcdCluster(tmp_path / "etcd").start()
    except EtcdUnavailable as exc:
        unavailable("etcd", str(exc))
    prefix = f"out-{uuid.uuid4().hex[:6]}"
    service = build(
        parse_config(
            {
                "service": {
                    "node": "wc-out",
                    "prefix": prefix,
                    "run_builds": False,
                    "run_health": False,
                    "request_deadline_s": DEADLINE_S,
                    "readiness_timeout_s": 0.5,
                },
                "store": {"kind": "etcd", "url": cluster.urls[0]},
                "catalog": {"path": str(CONFIG_DIR / "flavors.toml")},
                "events": {"kind": "log"},
            },
            environ={},
        )
    )
    store = service.store
    for r in range(3):
        facts = HostFacts(
            hypervisor=f"h{r}",
            rack=f"r{r}",
            az="az1",
            vcpus_total=8,
            vcpus_free=0,
            memory_mib_total=1,
            memory_mib_free=0,
            disk_gib_total=1,
            disk_gib_free=0,
            endpoint="unix:/nowhere",
        )
        store.put(Keys(prefix).host("az1", f"h{r}"), facts.model_dump_json())
        for i in range(4):
            ready_vm(service, f"vm-{r}-{i}", r)
    service.rules.put("az1", "small", {"max_instance_per_cycle": 1, "total_instances": 12})
    service.start()
    wait_for("the views to load", lambda: len(service.acquirer.index) == 12, 10)
    try:
        yield service, cluster
    finally:
        member = cluster.members[0]
        if member.proc and member.proc.poll() is None:
            os.kill(member.proc.pid, signal.SIGCONT)
        service.close()
        cluster.stop()


BODY = {"flavor": "small", "az": "az1", "count": 1, "mode": "best-effort"}


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_with_the_store_down_every_answer_comes_fast(stack: tuple[Any, Any], how: str) -> None:
    service, cluster = stack
    client = create_app(service).test_client()
    assert client.post("/v1/acquire", json=BODY).status_code == 200  # while etcd is up
    assert client.get("/readyz").get_json()["ready"] is True
    member = cluster.members[0]
    if how == "killed":
        member.kill()
    else:
        os.kill(member.proc.pid, signal.SIGSTOP)

    started = time.monotonic()
    reply = client.post("/v1/acquire", json=BODY)
    took = time.monotonic() - started
    assert reply.status_code == 503, reply.get_json()
    # refused: surely nothing landed; frozen: the claim may have left
    expected = (
        {"store_unavailable"} if how == "killed" else {"store_unavailable", "claim_outcome_unknown"}
    )
    assert reply.get_json()["error"] in expected
    assert took < DEADLINE_S + 0.5 + 0.5, took  # the deadline, the settle margin, slack

    started = time.monotonic()
    assert client.get("/healthz").status_code == 200  # liveness asks nothing of the store
    assert time.monotonic() - started < 0.2

    started = time.monotonic()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["checks"]["store"]["ok"] is False
    assert ready.get_json()["checks"]["catalog"]["ok"] is True
    assert time.monotonic() - started < 0.5 + 0.5


def test_through_an_etcd_restart_every_answer_keeps_its_deadline(
    stack: tuple[Any, Any],
) -> None:
    """Acquisitions from 4 threads while etcd is killed and started again on
    its data: every reply, served or 503, within the deadline plus half a
    second (one of 41,551 took 3.08 s in the outside test), and acquiring
    works again once etcd is back."""
    import threading

    service, cluster = stack
    for i in range(300):  # enough not to run out before the end
        ready_vm(service, f"more-{i}", i % 3)
    wait_for("the views to load", lambda: len(service.acquirer.index) == 312, 10)
    app = create_app(service)
    member = cluster.members[0]
    initial = f"{member.name}={member.peer_url}"
    took: list[tuple[float, int]] = []
    stop = threading.Event()

    def acquirer() -> None:
        client = app.test_client()
        while not stop.is_set():
            started = time.monotonic()
            status = client.post("/v1/acquire", json=BODY).status_code
            took.append((time.monotonic() - started, status))

    threads = [threading.Thread(target=acquirer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for("acquisitions under way", lambda: len(took) >= 4, 10)
        member.kill()
        wait_for("refusals while it is down", lambda: any(s == 503 for _, s in took), 10)
        member.start(initial, state="existing")  # the same data: a restart
        wait_for("etcd back", member.healthy, 30)
        seen = len(took)
        wait_for("answers after the restart", lambda: len(took) >= seen + 8, 30)
    finally:
        stop.set()
        for t in threads:
            t.join()
    slowest = max(t for t, _ in took)
    print(f"{len(took)} replies, {sum(s == 503 for _, s in took)} refused, slowest {slowest:.3f} s")
    assert slowest < DEADLINE_S + 0.5 + 0.3, f"slowest reply {slowest:.2f} s of {len(took)}"
    assert {s for _, s in took} <= {200, 409, 503}, took
