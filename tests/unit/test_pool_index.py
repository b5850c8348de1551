"""The pool index against the store it follows (§8): after any sequence of
record, heartbeat and drain changes, claims, stream reconnects and
compacted histories, every pool's acquirable VMs in the index are exactly
those a full read of the store says, and so are its counts."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.acquiring import KEYS, Rig, host
from warmcache.acquire.shares import Shares
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import ManualClock
from warmcache.errors import NoCapacity
from warmcache.model import HELD_STATES, POOLED_STATES, BuildRule, InstanceState, Mode, PoolInstance
from warmcache.ports import ChangeStream
from warmcache.views import PrefixView

HOSTS = [(f"r{r}", f"r{r}-h{h}") for r in range(3) for h in range(2)]
STATES = [InstanceState.READY, InstanceState.RESERVED, InstanceState.BUILDING]

step = st.one_of(
    st.tuples(
        st.just("put"),
        st.integers(0, 11),
        st.integers(0, len(HOSTS) - 1),
        st.sampled_from(STATES),
        st.integers(0, 1),
        st.sampled_from(["small", "large"]),
    ),
    st.tuples(st.just("delete"), st.integers(0, 11)),
    st.tuples(st.just("host"), st.integers(0, len(HOSTS) - 1), st.booleans()),
    st.tuples(
        st.just("drain"),
        st.integers(0, len(HOSTS) - 1),
        st.booleans(),
        st.sampled_from(["now", "as_acquired", None]),
    ),
    st.tuples(
        st.just("rack_drain"),
        st.integers(0, 2),
        st.booleans(),
        st.sampled_from(["now", "as_acquired"]),
    ),
    st.tuples(st.just("claim"), st.integers(1, 3), st.sampled_from(list(Mode))),
    st.tuples(st.just("reconnect")),
    st.tuples(st.just("compact")),
    st.tuples(st.just("sync")),
)


class Followed:
    """The rig's views, each pumped from its own stream, as ``follow`` does."""

    def __init__(self, rig: Rig) -> None:
        self.views: list[PrefixView[object]] = [rig.hosts, rig.drains, rig.index]  # type: ignore[list-item]
        self.streams: list[ChangeStream | None] = [None] * len(self.views)
        for view in self.views:
            view.refresh()

    def pump(self) -> None:
        for i, view in enumerate(self.views):
            self.streams[i] = view.pump(self.streams[i], 0)

    def reconnect(self) -> None:
        for i, stream in enumerate(self.streams):
            if stream is not None:
                stream.close()
            self.streams[i] = None


def evacuated(store: SqliteStore) -> set[str]:
    """Hosts whose VMs must not be handed out: drained (their own drain or
    their rack's) with evacuate "now" (the default when a drain says none)."""
    out = set()
    for kv in store.range(KEYS.drain())[0]:
        if json.loads(kv.value).get("evacuate", "now") != "now":
            continue
        tail = kv.key[len(KEYS.drain()) :].split("/")
        out |= {hv for rack, hv in HOSTS if tail in ([hv], ["racks", "az1", rack])}
    return out


def expected(store: SqliteStore, pool: tuple[str, str], use_reserve: bool) -> set[str]:
    live = {kv.key.rsplit("/", 1)[1] for kv in store.range(KEYS.hosts_dir())[0]}
    drained = evacuated(store)
    states = {InstanceState.READY} | ({InstanceState.RESERVED} if use_reserve else set())
    out = set()
    for kv in store.range(KEYS.pool_dir())[0]:
        vm = PoolInstance.model_validate_json(kv.value)
        if (
            (vm.az, vm.flavor) == pool
            and vm.state in states
            and not vm.health_failures
            and vm.hypervisor in live
            and vm.hypervisor not in drained
        ):
            out.add(kv.key)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=15, max_size=60), st.booleans())
def test_the_index_agrees_with_the_store(steps: list[tuple[Any, ...]], shared: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "s.db", clock=ManualClock())
        try:
            _run(store, steps, shared)
        finally:
            store.close()


def _run(store: SqliteStore, steps: list[tuple[Any, ...]], shared: bool) -> None:
    for rack, hv in HOSTS[:4]:
        store.put(KEYS.host("az1", hv), host(hv, rack).model_dump_json())
    rig = Rig(store, node="wc-1")
    if shared:
        rig.index.set_instances(["wc-1", "wc-2", "wc-3"])
    followed = Followed(rig)
    handed: list[str] = []
    for op, *args in steps:
        if op == "put":
            i, h, state, failures, flavor = args
            if f"vm{i}" in handed:
                continue  # the builder never reuses a name
            rack, hv = HOSTS[h]
            vm = PoolInstance(
                name=f"vm{i}",
                az="az1",
                flavor=flavor,
                rack=rack,
                hypervisor=hv,
                state=state,
                health_failures=failures,
                created_at=0,
            )
            store.put(KEYS.pool("az1", vm.name), vm.model_dump_json())
        elif op == "delete":
            store.delete(KEYS.pool("az1", f"vm{args[0]}"))
        elif op in ("host", "drain"):
            rack, hv = HOSTS[args[0]]
            key = KEYS.host("az1", hv) if op == "host" else KEYS.drain(hv)
            if args[1]:
                mode = args[2] if op == "drain" else None
                store.put(
                    key,
                    host(hv, rack).model_dump_json()
                    if op == "host"
                    else json.dumps({"evacuate": mode} if mode else {}),
                )
            else:
                store.delete(key)
        elif op == "rack_drain":
            key = KEYS.rack_drain("az1", f"r{args[0]}")
            if args[1]:
                store.put(key, json.dumps({"at": 1.0, "evacuate": args[2]}))
            else:
                store.delete(key)
        elif op == "claim":
            try:
                got = rig.claim_vms(args[0], args[1], sync=False)
            except NoCapacity:
                continue
            handed += [vm.name for vm in got.vms]
        elif op == "reconnect":
            followed.reconnect()
        elif op == "compact":
            store.compact(store.range("")[1])
        elif op == "sync":
            followed.pump()
    followed.pump()
    assert len(handed) == len(set(handed))
    shares = Shares("wc-1", rig.index.instances)
    for pool in (("az1", "small"), ("az1", "large")):
        for use_reserve in (False, True):
            want = expected(store, pool, use_reserve)
            assert rig.index.acquirable(pool, use_reserve) == want
            if shared:
                mine = {k for k in want if shares.mine(k.rsplit("/", 1)[1])}
                assert rig.index.acquirable(pool, use_reserve, mine=True) == mine
        assert rig.index.in_flight(pool) == 0
    records = [PoolInstance.model_validate_json(kv.value) for kv in store.range(KEYS.pool_dir())[0]]
    live = {kv.key.rsplit("/", 1)[1] for kv in store.range(KEYS.hosts_dir())[0]}
    drained = evacuated(store)

    def where(r: PoolInstance) -> str:
        if r.state not in HELD_STATES:
            return "ok"
        return (
            "unreachable"
            if r.hypervisor not in live
            else ("drained" if r.hypervisor in drained else "ok")
        )

    rule = BuildRule(max_instance_per_cycle=1, total_instances=5)
    for summary in rig.index.summary({("az1", "small"): rule, ("az1", "large"): rule}):
        mine_ = [r for r in records if (r.az, r.flavor) == (summary.az, summary.flavor)]
        # Ready and reserved VMs on a dead or drained host do not count:
        # they are reported apart.
        counted = [r for r in mine_ if where(r) == "ok"]
        counts = Counter(r.state for r in counted)
        assert (summary.ready, summary.reserved, summary.building) == (
            counts[InstanceState.READY],
            counts[InstanceState.RESERVED],
            counts[InstanceState.BUILDING],
        )
        away = Counter(where(r) for r in mine_)
        assert (summary.unreachable, summary.drained) == (away["unreachable"], away["drained"])
        assert summary.ready_by_rack == dict(
            sorted(Counter(r.rack for r in counted if r.state is InstanceState.READY).items())
        )
        assert rig.index.pooled((summary.az, summary.flavor)) == sum(
            1 for r in counted if r.state in POOLED_STATES
        )
