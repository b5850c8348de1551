"""Atomic all-or-nothing claims (DESIGN §8, §12.1, §12.3)."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from warmcache.acquire.claim import Claimer
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import ManualClock
from warmcache.errors import ClaimOutcomeUnknown, NoCapacity, StoreError
from warmcache.model import InstanceState, Keys, Mode, PoolInstance
from warmcache.ports import Compare, KeyValue, Op, TxnResult

KEYS = Keys("wc")


def seed(store: SqliteStore, racks: int, per_rack: int, state: InstanceState = InstanceState.READY,
         flavor: str = "small") -> list[str]:
    names = []
    for r in range(racks):
        for i in range(per_rack):
            vm = PoolInstance(name=f"{flavor}-r{r}-{i}", az="az1", flavor=flavor, rack=f"r{r}",
                              hypervisor=f"r{r}-h{i % 2}", state=state, created_at=0)
            store.put(KEYS.pool("az1", vm.name), vm.model_dump_json())
            names.append(vm.name)
    return names


def claimer(store: SqliteStore, clock: ManualClock, seed_: int = 0) -> Claimer:
    return Claimer(store, KEYS, clock, attempts=50, rng=random.Random(seed_))


def claim(c: Claimer, count: int, mode: Mode = Mode.RACK_AWARE, **kw: object) -> list[str]:
    args = {"flavor": "small", "az": "az1", "count": count, "mode": mode,
            "use_reserve": False, "requester": "t", **kw}
    return [vm.name for vm in c.claim(**args).vms]  # type: ignore[arg-type]


def test_claimed_vms_leave_the_pool_in_one_step(sqlite_store: SqliteStore, clock: ManualClock
                                                ) -> None:
    seed(sqlite_store, racks=3, per_rack=2)
    got = claim(claimer(sqlite_store, clock), 3)
    pool, _ = sqlite_store.range(KEYS.pool_dir("az1"))
    acquired, _ = sqlite_store.range("wc/acquired/")
    assert len(pool) == 3 and len(acquired) == 3
    assert {kv.key.rsplit("/", 1)[1] for kv in acquired} == set(got)
    rec = PoolInstance.model_validate_json(acquired[0].value)
    assert rec.state is InstanceState.ACQUIRED and rec.acquired_by == "t"


def test_unsatisfiable_request_claims_nothing_and_says_why(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    seed(sqlite_store, racks=2, per_rack=3)
    before, _ = sqlite_store.range("wc/")
    with pytest.raises(NoCapacity) as err:
        claim(claimer(sqlite_store, clock), 3)
    assert (err.value.ready, err.value.racks, err.value.wanted) == (6, 2, 3)
    after, _ = sqlite_store.range("wc/")
    assert after == before


def test_reserved_vms_need_use_reserve(sqlite_store: SqliteStore, clock: ManualClock) -> None:
    seed(sqlite_store, racks=2, per_rack=1, state=InstanceState.RESERVED)
    c = claimer(sqlite_store, clock)
    with pytest.raises(NoCapacity):
        claim(c, 1, Mode.BEST_EFFORT)
    assert len(claim(c, 2, Mode.BEST_EFFORT, use_reserve=True)) == 2


def test_other_flavors_and_states_are_never_claimed(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    seed(sqlite_store, racks=3, per_rack=1, flavor="large")
    seed(sqlite_store, racks=3, per_rack=1, state=InstanceState.BUILDING)
    with pytest.raises(NoCapacity):
        claim(claimer(sqlite_store, clock), 1, Mode.BEST_EFFORT)


def test_concurrent_acquirers_never_get_the_same_vm(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    seed(sqlite_store, racks=6, per_rack=8)  # 48 VMs
    results: list[list[str]] = []
    failures: Counter[str] = Counter()
    lock = threading.Lock()

    def worker(i: int) -> None:
        c = claimer(sqlite_store, clock, seed_=i)
        while True:
            try:
                got = claim(c, 3)
            except NoCapacity:
                failures["no_capacity"] += 1
                return
            with lock:
                results.append(got)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [name for got in results for name in got]
    assert len(flat) == len(set(flat)), "a VM was handed out twice"
    for got in results:  # every success satisfied rack-aware
        assert len({name.split("-")[1] for name in got}) == 3
    left, _ = sqlite_store.range(KEYS.pool_dir("az1"))
    assert len(flat) + len(left) == 48  # none lost either
    assert len({kv.key.split("-")[1] for kv in left}) < 3  # stopped only when unsatisfiable


def test_a_stale_view_costs_a_retry_never_a_double_hand_out(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    seed(sqlite_store, racks=3, per_rack=2)
    kvs, _ = sqlite_store.range(KEYS.pool_dir("az1"))
    stale = [(PoolInstance.model_validate_json(kv.value), kv.mod_revision) for kv in kvs]
    first = set(claim(claimer(sqlite_store, clock), 3))  # the view never saw this
    c = claimer(sqlite_store, clock, seed_=1)
    for _ in range(5):
        args = {"flavor": "small", "az": "az1", "count": 1, "mode": Mode.BEST_EFFORT,
                "use_reserve": False, "requester": "t", "view": lambda: stale}
        try:
            got = c.claim(**args)  # type: ignore[arg-type]
        except NoCapacity:
            break
        assert not {vm.name for vm in got.vms} & first
        first |= {vm.name for vm in got.vms}
    assert len(first) == 6


def test_an_empty_view_is_checked_against_the_store(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    seed(sqlite_store, racks=3, per_rack=1)
    got = claimer(sqlite_store, clock).claim(
        flavor="small", az="az1", count=3, mode=Mode.RACK_AWARE, use_reserve=False,
        requester="t", view=lambda: [])
    assert len(got.vms) == 3 and got.attempts == 2


class UnansweredClaims(SqliteStore):
    """A store whose first claim transaction gets no answer, the way a
    timeout or a cut connection looks to the client: ``"applied"`` (the
    reply was lost), ``"pending"`` (held by the store, applied later on
    ``apply_late``) or ``"down"`` (and every call after it fails too)."""

    def __init__(self, *args: Any, how: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.how = how
        self.held: tuple[Sequence[Compare], Sequence[Op]] | None = None
        self.fired = False

    def txn(self, compares: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> TxnResult:
        if self.fired and self.how == "down":
            raise StoreError("etcd kv/txn: connection reset")
        is_claim = any(op.key.startswith("wc/acquired/") for op in success)
        if not is_claim or self.fired:
            return super().txn(compares, success, failure)
        self.fired = True
        if self.how == "applied":
            super().txn(compares, success, failure)
        else:
            self.held = (compares, success)
        raise StoreError("etcd kv/txn: read timed out")

    def get(self, key: str) -> KeyValue | None:
        if self.fired and self.how == "down":
            raise StoreError("etcd kv/range: connection reset")
        return super().get(key)

    def apply_late(self) -> bool:
        assert self.held is not None
        return super().txn(*self.held, ()).succeeded


def acquired_names(store: SqliteStore) -> set[str]:
    kvs, _ = store.range("wc/acquired/")
    return {kv.key.rsplit("/", 1)[1] for kv in kvs}


@pytest.mark.parametrize("how", ["applied", "pending"])
def test_an_unanswered_claim_strands_no_vm(tmp_path: Path, clock: ManualClock, how: str) -> None:
    """§12.1/§12.3 across a store timeout: whatever the store did with the
    unanswered transaction, the caller gets exactly the VMs that left the
    pool for it, and none stays in `acquired` without an owner."""
    store = UnansweredClaims(tmp_path / "s.db", clock=clock, how=how)
    try:
        seed(store, racks=3, per_rack=2)
        got = set(claim(claimer(store, clock), 3))
        if how == "pending":
            assert not store.apply_late()  # the settle made the late apply fail
        assert acquired_names(store) == got and len(got) == 3
        pool, _ = store.range(KEYS.pool_dir("az1"))
        assert len(pool) == 3 and not got & {kv.key.rsplit("/", 1)[1] for kv in pool}
        claims = {PoolInstance.model_validate_json(kv.value).claim_id
                  for kv in store.range("wc/acquired/")[0]}
        assert len(claims) == 1 and None not in claims
    finally:
        store.close()


def test_an_unanswered_claim_with_the_store_gone_says_so(tmp_path: Path,
                                                         clock: ManualClock) -> None:
    store = UnansweredClaims(tmp_path / "s.db", clock=clock, how="down")
    try:
        seed(store, racks=3, per_rack=2)
        with pytest.raises(ClaimOutcomeUnknown) as err:
            claim(claimer(store, clock), 3)
        assert err.value.code == "claim_outcome_unknown" and len(err.value.vms) == 3
        assert err.value.detail()["claim_id"] == err.value.claim_id
    finally:
        store.close()
