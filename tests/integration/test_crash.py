"""Crash tests (DESIGN §5, §12.2, §12.4) with real processes: 6 agents on
libvirt test:///default, 2 `warmcache serve` instances, SQLite or real etcd.

Creates are slowed to 0.6 s and run 2 at a time, so one leader cycle of 12
VMs takes ~4 s and there is a cycle to interrupt. Build cycles run only at
start, on takeover and on retry (the interval is an hour), so what happens
after a crash is the recovery machinery's doing.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_quickstart import free_port_pair
from warmcache.adapters.agent_client import AgentClient
from warmcache.layout import Keys
from warmcache.model import InstanceState, PoolInstance
from warmcache.ports import CoordinationStore
from warmcache.quickstart import QuickstartStack, Topology
from warmcache.testing.localetcd import EtcdCluster
from warmcache.testing.polling import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.libvirt,
    pytest.mark.usefixtures("libvirt_available"),
]

TTL_S = 2.0
TARGET = 12
RULES = f"""
[rules.az1.small]
total_instances = {TARGET}
max_instance_per_cycle = {TARGET}
min_fault_domain = 3
"""


@pytest.fixture
def etcd_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EtcdCluster | None]:
    size = getattr(request, "param", 0)
    if not size:
        yield None
        return
    request.getfixturevalue("etcd_url")  # skips or fails like every etcd test
    cluster = EtcdCluster(tmp_path / "etcd", size).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def stack(tmp_path: Path, etcd_cluster: EtcdCluster | None) -> Iterator[QuickstartStack]:
    qs = QuickstartStack(
        tmp_path / "qs",
        port=free_port_pair(),
        topology=Topology(azs=("az1",)),
        create_delay_s=0.6,
        build_concurrency=2,
        cycle_interval_s=3600,
        retry_interval_s=2,
        leader_ttl_s=TTL_S,
        rules_toml=RULES,
        store_kind="etcd" if etcd_cluster else "sqlite",
        store_url=",".join(etcd_cluster.urls) if etcd_cluster else "",
    )
    with qs:
        yield qs
    assert not qs.procs, "the stack did not stop every process it started"


class View:
    """What the store says, read through the stack's own store client."""

    def __init__(self, stack: QuickstartStack) -> None:
        self.stack = stack
        self.store: CoordinationStore = stack.store()

    def leader(self) -> dict[str, Any] | None:
        kv = self.store.get(Keys("warmcache").leader())
        return {**json.loads(kv.value), "token": kv.create_revision} if kv else None

    def records(self) -> list[tuple[PoolInstance, int]]:
        kvs, _ = self.store.range(Keys("warmcache").pool_dir())
        return [(PoolInstance.model_validate_json(kv.value), kv.mod_revision) for kv in kvs]

    def count(self, state: InstanceState) -> int:
        return sum(1 for rec, _ in self.records() if rec.state is state)

    def full(self) -> bool:
        recs = [rec for rec, _ in self.records()]
        return len(recs) == TARGET and all(r.state is InstanceState.READY for r in recs)

    def mid_cycle(self) -> dict[str, Any] | None:
        holder = self.leader()
        return holder if holder and self.count(InstanceState.BUILDING) >= 2 else None

    def vms_on_agents(self) -> dict[str, str]:
        """VM name -> hypervisor, asked of every agent."""
        out = {}
        for sock in sorted((self.stack.state_dir / "agents").glob("*/agent.sock")):
            for status in AgentClient(f"unix:{sock}").list():
                out[status.name] = sock.parent.name
        return out

    def assert_every_vm_tracked(self) -> None:
        """§12.2: every VM on every hypervisor has exactly one record, on the
        right hypervisor, and every record has its VM."""
        on_agents = self.vms_on_agents()
        records = {rec.name: rec.hypervisor for rec, _ in self.records()}
        assert on_agents == records

    def events(self, type_: str) -> list[dict[str, Any]]:
        db = sqlite3.connect(self.stack.state_dir / "events.db")
        try:
            rows = db.execute("SELECT fields FROM events WHERE type = ?", (type_,)).fetchall()
        finally:
            db.close()
        return [json.loads(r[0]) for r in rows]


def stores() -> list[Any]:
    return [pytest.param(0, id="sqlite"), pytest.param(1, id="etcd", marks=pytest.mark.etcd)]


@pytest.mark.parametrize("etcd_cluster", stores(), indirect=True)
def test_sigkill_of_the_leader_mid_cycle(stack: QuickstartStack) -> None:
    view = View(stack)
    holder = wait_for("a leader mid-cycle", view.mid_cycle, 30)
    victim = stack.instance(holder["node"])
    killed_at = time.monotonic()
    os.kill(victim.popen.pid, signal.SIGKILL)
    victim.popen.wait()
    successor = wait_for(
        "a new leader",
        lambda: (h := view.leader()) and h["node"] != holder["node"] and h,
        TTL_S + 10,
    )
    failover_s = time.monotonic() - killed_at
    # TTL, plus one watch poll (TTL / 4) and the start of a cycle.
    assert failover_s <= TTL_S + 1.5, f"failover took {failover_s:.2f} s"
    assert successor["token"] > holder["token"]
    wait_for("the pool to fill again", view.full, 60)
    view.assert_every_vm_tracked()
    takeovers = view.events("leader.takeover")
    assert any(t["abandoned_token"] == holder["token"] for t in takeovers)


@pytest.mark.parametrize("etcd_cluster", stores(), indirect=True)
def test_sigstop_past_the_ttl_then_sigcont(stack: QuickstartStack) -> None:
    view = View(stack)
    holder = wait_for("a leader mid-cycle", view.mid_cycle, 30)
    paused = stack.instance(holder["node"])
    os.kill(paused.popen.pid, signal.SIGSTOP)
    try:
        successor = wait_for(
            "a new leader",
            lambda: (h := view.leader()) and h["node"] != holder["node"] and h,
            TTL_S + 10,
        )
    finally:
        os.kill(paused.popen.pid, signal.SIGCONT)
    wait_for(
        "the paused leader to notice and step down",
        lambda: any(e["token"] == holder["token"] for e in view.events("leader.lost")),
        20,
    )
    wait_for("the pool to fill again", view.full, 60)
    # §12.4: nothing carrying the stale token was written after the successor
    # took the lock (its token is the revision at which it did).
    for rec, mod_revision in view.records():
        if rec.fencing_token == holder["token"]:
            assert mod_revision < successor["token"], f"stale write landed: {rec.name}"
    view.assert_every_vm_tracked()
    assert paused.popen.poll() is None  # stepped down, still serving


@pytest.mark.etcd
@pytest.mark.parametrize("etcd_cluster", [3], indirect=True)
@pytest.mark.parametrize("which", ["raft-leader", "follower"])
def test_losing_an_etcd_member_mid_cycle_loses_nothing(
    stack: QuickstartStack, etcd_cluster: EtcdCluster, which: str
) -> None:
    view = View(stack)
    wait_for("a leader mid-cycle", view.mid_cycle, 30)
    raft_leader = etcd_cluster.leader()
    victim = (
        raft_leader
        if which == "raft-leader"
        else next(m for m in etcd_cluster.members if m is not raft_leader)
    )
    victim.kill()
    wait_for("the pool to fill", view.full, 90)
    view.assert_every_vm_tracked()
