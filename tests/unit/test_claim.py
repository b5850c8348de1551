"""Atomic all-or-nothing claims, group-committed (DESIGN §8, §12.1, §12.3)."""

from __future__ import annotations

import itertools
import tempfile
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.acquiring import KEYS, Rig, host, seed
from warmcache.acquire.claimer import ClaimRequest
from warmcache.acquire.modes import satisfiable
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import ManualClock
from warmcache.errors import ClaimOutcomeUnknown, NoCapacity, StoreError
from warmcache.model import InstanceState, Mode, PoolInstance
from warmcache.ports import KeyValue, Put, Txn, TxnResult


def acquired_names(store: SqliteStore) -> set[str]:
    kvs, _ = store.range(KEYS.acquired_dir())
    return {kv.key.rsplit("/", 1)[1] for kv in kvs}


def pool_names(store: SqliteStore) -> set[str]:
    kvs, _ = store.range(KEYS.pool_dir("az1"))
    return {kv.key.rsplit("/", 1)[1] for kv in kvs}


def test_claimed_vms_leave_the_pool_in_one_step(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    seed(sqlite_store, racks=3, per_rack=2)
    got = Rig(sqlite_store, clock).claim(3)
    assert len(pool_names(sqlite_store)) == 3 and acquired_names(sqlite_store) == set(got)
    rec = PoolInstance.model_validate_json(sqlite_store.range(KEYS.acquired_dir())[0][0].value)
    assert rec.state is InstanceState.ACQUIRED and rec.acquired_by == "t" and rec.claim_id


def test_unsatisfiable_request_claims_nothing_and_says_why(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    seed(sqlite_store, racks=2, per_rack=3)
    before, _ = sqlite_store.range("wc/")
    with pytest.raises(NoCapacity) as err:
        Rig(sqlite_store, clock).claim(3)
    assert (err.value.ready, err.value.racks, err.value.wanted) == (6, 2, 3)
    assert sqlite_store.range("wc/")[0] == before


def test_reserved_vms_need_use_reserve(sqlite_store: SqliteStore, clock: ManualClock) -> None:
    seed(sqlite_store, racks=2, per_rack=1, state=InstanceState.RESERVED)
    rig = Rig(sqlite_store, clock)
    with pytest.raises(NoCapacity):
        rig.claim(1, Mode.BEST_EFFORT)
    assert len(rig.claim(2, Mode.BEST_EFFORT, use_reserve=True)) == 2


def test_other_flavors_and_states_are_never_claimed(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    seed(sqlite_store, racks=3, per_rack=1, flavor="large")
    seed(sqlite_store, racks=3, per_rack=1, state=InstanceState.BUILDING)
    with pytest.raises(NoCapacity):
        Rig(sqlite_store, clock).claim(1, Mode.BEST_EFFORT)


def test_vms_on_silent_or_drained_hosts_or_failing_health_are_never_claimed(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    seed(sqlite_store, racks=3, per_rack=2)  # r<r>-h0 and r<r>-h1 each hold one VM
    rig = Rig(sqlite_store, clock)
    sqlite_store.delete(KEYS.hosts_dir() + "az1/r0-h0")  # its heartbeat is gone
    sqlite_store.put(KEYS.drain("r1-h0"), "{}")
    sick = PoolInstance.model_validate_json(sqlite_store.get(KEYS.pool("az1", "small-r2-0")).value)  # type: ignore[union-attr]
    sqlite_store.put(
        KEYS.pool("az1", sick.name),
        sick.model_copy(update={"health_failures": 1}).model_dump_json(),
    )
    got = set(rig.claim(3, Mode.BEST_EFFORT))
    assert got == {"small-r0-1", "small-r1-1", "small-r2-1"}
    with pytest.raises(NoCapacity):
        rig.claim(1, Mode.BEST_EFFORT)
    sqlite_store.put(KEYS.hosts_dir() + "az1/r0-h0", host("r0-h0", "r0").model_dump_json())
    assert rig.claim(1, Mode.BEST_EFFORT) == ["small-r0-0"]  # back with its heartbeat


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "unbatched"])
def test_concurrent_acquirers_over_two_instances_never_get_the_same_vm(
    sqlite_store: SqliteStore, clock: ManualClock, batch: bool
) -> None:
    seed(sqlite_store, racks=6, per_rack=8)  # 48 VMs
    rigs = [Rig(sqlite_store, clock, node=f"wc-{i}", batch=batch, seed_=i) for i in range(2)]
    for rig in rigs:
        rig.index.set_instances(["wc-0", "wc-1"])  # each prefers its own share
    results: list[list[str]] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        rig = rigs[i % 2]
        while True:
            try:
                got = rig.claim(3)
            except NoCapacity:
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
    assert acquired_names(sqlite_store) == set(flat)  # every failure claimed nothing
    left = pool_names(sqlite_store)
    assert len(flat) + len(left) == 48  # none lost either
    assert len({name.split("-")[1] for name in left}) < 3  # stopped only when unsatisfiable


def test_a_stale_index_costs_a_retry_never_a_double_hand_out(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    seed(sqlite_store, racks=3, per_rack=2)
    stale = Rig(sqlite_store, clock, node="b", seed_=1)
    stale.sync()
    first = set(Rig(sqlite_store, clock, node="a").claim(3))  # `stale` never saw this
    for _ in range(5):
        try:
            got = stale.claim_vms(1, Mode.BEST_EFFORT, sync=False)
        except NoCapacity:
            break
        names = {vm.name for vm in got.vms}
        assert not names & first
        first |= names
    assert len(first) == 6
    assert stale.claimer.conflicts >= 1  # it did lose to what it had not seen


class CountingStore(SqliteStore):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def txns(self, batch: Sequence[Txn]) -> list[TxnResult]:
        self.batches.append(len(batch))
        return super().txns(batch)


def test_a_batch_commits_in_one_transaction_and_one_bad_request_fails_alone(
    tmp_path: Path, clock: ManualClock
) -> None:
    store = CountingStore(tmp_path / "s.db", clock=clock)
    try:
        seed(store, racks=4, per_rack=3)
        rig = Rig(store, clock)
        rig.sync()
        requests = [
            rig.request(3),
            rig.request(5),
            rig.request(2, Mode.HYPERVISOR_AWARE),
            rig.request(4, Mode.BEST_EFFORT),
        ]
        rig.claimer.claim_batch(requests)
        assert store.batches == [3]  # one transaction for the three that could be served
        assert isinstance(requests[1].outcome, NoCapacity)
        got = [vm.name for r in (requests[0], requests[2], requests[3]) for vm in r.result().vms]
        assert len(got) == len(set(got)) == 9
        assert acquired_names(store) == set(got)
    finally:
        store.close()


def test_a_request_behind_claims_in_flight_is_decided_after_them(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    seed(sqlite_store, racks=3, per_rack=1)
    rig = Rig(sqlite_store, clock)
    rig.sync()
    first, second = rig.request(3), rig.request(1, Mode.BEST_EFFORT)
    rig.claimer.claim_batch([first, second])
    assert len(first.result().vms) == 3
    assert isinstance(second.outcome, NoCapacity)  # in that order, nothing was left


class UnansweredClaims(SqliteStore):
    """A store whose first batch of claims gets no answer, the way a
    timeout or a cut connection looks to the client: ``"applied"`` (the
    reply was lost), ``"pending"`` (held by the store, applied later on
    ``apply_late``) or ``"down"`` (and every call after it fails too); or
    ``"through"``: answered as usual.
    ``before`` runs just before the batch reaches the store (a concurrent
    writer)."""

    def __init__(self, *args: Any, how: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.how = how
        self.held: list[Txn] = []
        self.fired = False
        self.before: Any = None

    def txns(self, batch: Sequence[Txn]) -> list[TxnResult]:
        if self.fired and self.how == "down":
            raise StoreError("etcd kv/txn: connection reset")
        is_claim = any(op.key.startswith(KEYS.acquired_dir()) for t in batch for op in t.success)
        if not is_claim or self.fired:
            return super().txns(batch)
        self.fired = True
        if self.before:
            self.before()
        if self.how == "through":  # answered normally (only `before` runs)
            return super().txns(batch)
        if self.how == "applied":
            super().txns(batch)
        else:
            self.held = list(batch)
        raise StoreError("etcd kv/txn: read timed out")

    def get(self, key: str) -> KeyValue | None:
        if self.fired and self.how == "down":
            raise StoreError("etcd kv/range: connection reset")
        return super().get(key)

    def apply_late(self) -> list[bool]:
        return [r.succeeded for r in super().txns(self.held)]


@pytest.mark.parametrize("how", ["applied", "pending"])
@pytest.mark.parametrize("size", [1, 3])
def test_an_unanswered_batch_strands_no_vm(
    tmp_path: Path, clock: ManualClock, how: str, size: int
) -> None:
    """§12.1/§12.3 across a store timeout: whatever the store did with the
    unanswered batch, each caller gets exactly the VMs that left the pool
    for it, and none stays in `acquired` without an owner."""
    store = UnansweredClaims(tmp_path / "s.db", clock=clock, how=how)
    try:
        seed(store, racks=4, per_rack=3)
        rig = Rig(store, clock)
        rig.sync()
        requests = [rig.request(2) for _ in range(size)]
        rig.claimer.claim_batch(requests)
        if how == "pending":
            assert not any(store.apply_late())  # the settle made every late apply fail
        got = [vm.name for r in requests for vm in r.result().vms]
        assert len(got) == len(set(got)) == 2 * size
        assert acquired_names(store) == set(got)
        assert not set(got) & pool_names(store)
        claims = Counter(
            PoolInstance.model_validate_json(kv.value).claim_id
            for kv in store.range(KEYS.acquired_dir())[0]
        )
        assert sorted(claims.values()) == [2] * size and set(claims) == {
            r.claim_id for r in requests
        }
    finally:
        store.close()


def test_an_unanswered_batch_where_one_claim_lost_a_conflict(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Nested transactions: in one lost reply, one claim landed and another
    failed its compare. The settle tells them apart: the first is returned,
    the second runs again."""
    store = UnansweredClaims(tmp_path / "s.db", clock=clock, how="applied")
    try:
        seed(store, racks=4, per_rack=3)
        rig = Rig(store, clock)
        rig.sync()
        a, b = rig.request(2), rig.request(2)

        def concurrent_writer() -> None:  # another instance changes one of b's VMs
            vm, _ = b.chosen[-1]
            store.put(KEYS.pool("az1", vm.name), vm.model_dump_json())

        store.before = concurrent_writer
        rig.claimer.claim_batch([a, b])
        got_a = {vm.name for vm in a.result().vms}
        got_b = {vm.name for vm in b.result().vms}
        assert a.result().attempts == 1 and b.result().attempts == 2
        assert not got_a & got_b and acquired_names(store) == got_a | got_b
    finally:
        store.close()


def test_an_unanswered_batch_with_the_store_gone_says_so(
    tmp_path: Path, clock: ManualClock
) -> None:
    store = UnansweredClaims(tmp_path / "s.db", clock=clock, how="down")
    try:
        seed(store, racks=3, per_rack=2)
        rig = Rig(store, clock)
        rig.sync()
        requests = [rig.request(3), rig.request(1, Mode.BEST_EFFORT)]
        rig.claimer.claim_batch(requests)
        for r in requests:
            assert isinstance(r.outcome, ClaimOutcomeUnknown)
            assert r.outcome.claim_id == r.claim_id and len(r.outcome.vms) == r.count
            assert r.outcome.detail()["claim_id"] == r.claim_id
    finally:
        store.close()


# --- a batch's outcome is that of the requests run one after the other --------------

spots = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)), min_size=0, max_size=14)
asks = st.lists(st.tuples(st.integers(1, 4), st.sampled_from(list(Mode))), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spots, asks, st.integers(0, 2**16))
def test_a_batch_equals_some_sequential_order_of_its_requests(
    layout: list[tuple[int, int]], wanted: list[tuple[int, Mode]], rng_seed: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "s.db", clock=ManualClock())
        try:
            vms = {}
            for i, (r, h) in enumerate(layout):
                vm = PoolInstance(
                    name=f"vm{i}",
                    az="az1",
                    flavor="small",
                    rack=f"r{r}",
                    hypervisor=f"r{r}-h{h}",
                    state=InstanceState.READY,
                    created_at=0,
                )
                store.put(
                    KEYS.hosts_dir() + f"az1/{vm.hypervisor}",
                    host(vm.hypervisor, vm.rack).model_dump_json(),
                )
                store.put(KEYS.pool("az1", vm.name), vm.model_dump_json())
                vms[vm.name] = vm
            rig = Rig(store, seed_=rng_seed)
            rig.sync()
            requests = [rig.request(n, mode) for n, mode in wanted]
            rig.claimer.claim_batch(requests)
        finally:
            store.close()
    outcomes: list[set[str] | None] = []
    for req in requests:
        assert req.outcome is not None
        outcomes.append(
            None if isinstance(req.outcome, NoCapacity) else {vm.name for vm in req.result().vms}
        )
    assert any(
        _sequential(order, requests, outcomes, vms)
        for order in itertools.permutations(range(len(requests)))
    )


def _sequential(
    order: Sequence[int],
    requests: list[ClaimRequest],
    outcomes: list[set[str] | None],
    vms: dict[str, PoolInstance],
) -> bool:
    left = dict(vms)
    for i in order:
        request, got = requests[i], outcomes[i]
        if got is None:
            if satisfiable(list(left.values()), request.count, request.mode):
                return False
            continue
        if not got <= set(left) or len(got) != request.count:
            return False
        chosen = [left[n] for n in got]
        if request.mode is Mode.RACK_AWARE and len({v.rack for v in chosen}) < len(chosen):
            return False
        if request.mode is Mode.HYPERVISOR_AWARE and len({v.hypervisor for v in chosen}) < len(
            chosen
        ):
            return False
        for n in got:
            del left[n]
    return True


def test_a_fenced_claim_is_never_applied_late(tmp_path: Path, clock: ManualClock) -> None:
    """The settle's fence is what makes the late apply fail: remove it and a
    held claim lands after its caller was told something else."""
    store = UnansweredClaims(tmp_path / "s.db", clock=clock, how="pending")
    try:
        seed(store, racks=3, per_rack=2)
        rig = Rig(store, clock)
        rig.sync()
        request = rig.request(3)
        rig.claimer.claim_batch([request])
        first = request.result().vms
        late = store.apply_late()
        assert late == [False]
        assert acquired_names(store) == {vm.name for vm in first}
        assert all(
            isinstance(op, Put) or op.key.startswith(KEYS.pool_dir())
            for t in store.held
            for op in t.success
        )
    finally:
        store.close()


def test_a_request_behind_a_claim_that_fails_gets_the_vms_it_gives_back(
    tmp_path: Path, clock: ManualClock
) -> None:
    """First takes all three VMs, but one is purged under it, so it fails
    for good; the request queued behind it must then be served from what
    first gives back, not told 'no capacity' while first's VMs were in
    flight (no order of the two would explain that)."""
    store = UnansweredClaims(tmp_path / "s.db", clock=clock, how="through")
    try:
        seed(store, racks=3, per_rack=1)
        rig = Rig(store, clock)
        rig.sync()
        first, second = rig.request(3), rig.request(1, Mode.BEST_EFFORT)

        def purge() -> None:
            vm, _ = first.chosen[0]
            store.delete(KEYS.pool("az1", vm.name))

        store.before = purge
        rig.claimer.claim_batch([first, second])
        assert isinstance(first.outcome, NoCapacity)
        assert len(second.result().vms) == 1
    finally:
        store.close()


def test_a_claimed_vm_leaves_the_index_before_the_feed_says_so(
    tmp_path: Path, clock: ManualClock
) -> None:
    """The claim's own reply takes its VMs out of the index: the next
    request is answered without a wasted transaction on them."""
    store = CountingStore(tmp_path / "s.db", clock=clock)
    try:
        seed(store, racks=1, per_rack=1)
        rig = Rig(store, clock)
        assert rig.claim(1, Mode.BEST_EFFORT) == ["small-r0-0"]
        with pytest.raises(NoCapacity):
            rig.claim_vms(1, Mode.BEST_EFFORT, sync=False)  # the feed has not run
        assert store.batches == [1]
    finally:
        store.close()
