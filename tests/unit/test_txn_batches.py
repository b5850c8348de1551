"""Batches of transactions for stores without nested transactions
(Consul's path, `merged_txns`), driven through SQLite's plain `txn`: each
transaction decided on its own, as SQLite's native `txns` decides it; and
the state diff behind Consul's change stream."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmcache.adapters.consul_store import diff_states
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.adapters.txn_batches import merged_txns
from warmcache.ports import Change, Compare, KeyValue, Op, Put, Txn, TxnResult


def ops_of(txn: Txn) -> int:
    return len(txn.success) + len(txn.compares)


def claims(store: SqliteStore, n: int) -> list[Txn]:
    out = []
    for i in range(n):
        kv = store.get(f"p/{i}")
        assert kv is not None
        out.append(
            Txn(
                [Compare.mod_revision(kv.key, kv.mod_revision)],
                [Put(kv.key, "claimed"), Put(f"a/{i}", "mine")],
            )
        )
    return out


def test_a_conflict_fails_only_its_own_transaction(sqlite_store: SqliteStore) -> None:
    for i in range(6):
        sqlite_store.put(f"p/{i}", "ready")
    batch = claims(sqlite_store, 6)
    sqlite_store.put("p/2", "taken elsewhere")
    sqlite_store.put("p/4", "taken elsewhere")
    calls: list[int] = []

    def txn(compares: Sequence[Compare], success: Sequence[Op]) -> TxnResult:
        calls.append(len(compares))
        return sqlite_store.txn(compares, success)

    results = merged_txns(txn, batch, max_ops=64, ops_of=ops_of)
    assert [r.succeeded for r in results] == [True, True, False, True, False, True]
    assert results[2].current["p/2"].value == "taken elsewhere"  # type: ignore[union-attr]
    assert calls == [6, 4]  # one merged try, then the four that still hold
    assert {kv.key for kv in sqlite_store.range("a/")[0]} == {"a/0", "a/1", "a/3", "a/5"}


def test_groups_fit_the_store_limit(sqlite_store: SqliteStore) -> None:
    for i in range(10):
        sqlite_store.put(f"p/{i}", "ready")
    sizes: list[int] = []

    def txn(compares: Sequence[Compare], success: Sequence[Op]) -> TxnResult:
        sizes.append(len(compares) + len(success))
        return sqlite_store.txn(compares, success)

    results = merged_txns(txn, claims(sqlite_store, 10), max_ops=9, ops_of=ops_of)
    assert all(r.succeeded for r in results)
    assert max(sizes) <= 9 and len(sizes) == 4  # 3 + 3 + 3 + 1 transactions


def test_a_failure_the_reply_cannot_explain_is_retried_one_by_one(
    sqlite_store: SqliteStore,
) -> None:
    for i in range(3):
        sqlite_store.put(f"p/{i}", "ready")
    batch = claims(sqlite_store, 3)
    sqlite_store.put("p/1", "taken elsewhere")

    def blind(compares: Sequence[Compare], success: Sequence[Op]) -> TxnResult:
        result = sqlite_store.txn(compares, success)
        return TxnResult(result.succeeded, result.revision)  # says nothing of the state

    results = merged_txns(blind, batch, max_ops=64, ops_of=ops_of)
    assert [r.succeeded for r in results] == [True, False, True]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.integers(0, 9), max_size=10), st.integers(3, 40))
def test_merged_equals_native_batches(
    sqlite_store: SqliteStore, stale: list[int], max_ops: int
) -> None:
    """Whatever is stale and however the batch is cut, the merged path
    decides each transaction as one native batch would."""
    sqlite_store.txn([], [Put(f"p/{i}", "ready") for i in range(10)])
    batch = claims(sqlite_store, 10)
    for i in set(stale):
        sqlite_store.put(f"p/{i}", "changed")
    want = [all(c.holds(sqlite_store.get(c.key)) for c in t.compares) for t in batch]
    got = merged_txns(lambda c, s: sqlite_store.txn(c, s), batch, max_ops, ops_of)
    assert [r.succeeded for r in got] == want
    for key in [f"a/{i}" for i in range(10)]:
        sqlite_store.delete(key)


def kv(key: str, rev: int) -> KeyValue:
    return KeyValue(key, f"v{rev}", rev, rev)


def test_consul_state_diff_sees_changes_and_deletions() -> None:
    before = {"w/a": 5, "w/gone": 6, "w/same": 3}
    now = {"w/a": kv("w/a", 9), "w/same": kv("w/same", 3), "w/new": kv("w/new", 8)}
    changes = diff_states(before, now, after_revision=7, index=10)
    assert changes == [
        Change(8, "w/new", "put", "v8"),
        Change(9, "w/a", "put", "v9"),
        Change(10, "w/gone", "delete", None),
    ]
    assert diff_states(None, now, after_revision=8, index=10) == [
        Change(9, "w/a", "put", "v9")
    ]  # the first read: what is past the position
