"""Contract suite of the coordination-store port, for every adapter.

Each test gets a fresh store with its own data and a manual clock, so TTL
expiry is tested by moving the clock, never by sleeping. Later backends
(etcd, Consul) join the ``store`` fixture's parameters.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import ManualClock
from warmcache.errors import SessionExpired, WatchCompacted
from warmcache.ports import Compare, CoordinationStore, Delete, Put


@pytest.fixture(params=["sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
          ) -> Iterator[CoordinationStore]:
    s = SqliteStore(tmp_path / "store.db", clock=clock, poll_interval_s=0.005)
    yield s
    s.close()


def test_revisions_increase_and_track_create_and_modify(store: CoordinationStore) -> None:
    r1 = store.put("a", "1")
    r2 = store.put("a", "2")
    kv = store.get("a")
    assert kv is not None and r2 > r1
    assert (kv.value, kv.create_revision, kv.mod_revision) == ("2", r1, r2)
    assert store.get("missing") is None


def test_range_returns_only_the_prefix_sorted(store: CoordinationStore) -> None:
    for key in ("p/b", "p/a", "p2/x", "q/a"):
        store.put(key, key)
    kvs, revision = store.range("p/")
    assert [kv.key for kv in kvs] == ["p/a", "p/b"]
    assert revision >= max(kv.mod_revision for kv in kvs)


def test_txn_is_all_or_nothing_on_a_stale_revision(store: CoordinationStore) -> None:
    store.put("x", "0")
    stale = store.get("x")
    assert stale is not None
    store.put("x", "changed")
    result = store.txn(
        [Compare.mod_revision("x", stale.mod_revision), Compare.absent("y")],
        [Put("x", "mine"), Put("y", "mine")],
    )
    assert not result.succeeded
    assert result.current["x"] is not None and result.current["x"].value == "changed"
    assert store.get("x").value == "changed"  # type: ignore[union-attr]
    assert store.get("y") is None


def test_txn_applies_every_op_at_one_revision(store: CoordinationStore) -> None:
    store.put("gone", "1")
    result = store.txn([Compare.absent("new")], [Put("new", "1"), Delete("gone"), Put("b", "2")])
    assert result.succeeded
    new, b = store.get("new"), store.get("b")
    assert new and b and new.mod_revision == b.mod_revision == result.revision
    assert store.get("gone") is None


def test_txn_failure_branch_runs_instead(store: CoordinationStore) -> None:
    store.put("k", "v")
    result = store.txn([Compare.absent("k")], [Put("won", "1")], [Put("lost", "1")])
    assert not result.succeeded
    assert store.get("won") is None and store.get("lost") is not None


def test_session_keys_vanish_when_the_ttl_passes(
    store: CoordinationStore, clock: ManualClock
) -> None:
    session = store.create_session(5, "n1")
    store.put("lock", "n1", session=session)
    clock.advance(4.9)
    assert store.get("lock") is not None
    clock.advance(0.2)
    assert store.get("lock") is None
    with pytest.raises(SessionExpired):
        store.renew_session(session)
    with pytest.raises(SessionExpired):
        store.put("again", "x", session=session)


def test_renewal_keeps_a_session_alive(store: CoordinationStore, clock: ManualClock) -> None:
    session = store.create_session(5, "n1")
    store.put("lock", "n1", session=session)
    for _ in range(4):
        clock.advance(4)
        store.renew_session(session)
    assert store.get("lock") is not None


def test_lock_is_exclusive_until_its_session_ends(
    store: CoordinationStore, clock: ManualClock
) -> None:
    s1, s2 = store.create_session(5, "n1"), store.create_session(5, "n2")
    take = lambda s: store.txn([Compare.absent("L")], [Put("L", s, session=s)]).succeeded  # noqa: E731
    assert take(s1)
    assert not take(s2)
    store.destroy_session(s1)
    assert take(s2)
    store.renew_session(s2)
    clock.advance(6)
    assert take(store.create_session(5, "n3"))


def test_changes_deliver_every_change_in_order(store: CoordinationStore) -> None:
    start = store.put("other/x", "-")
    store.put("w/a", "1")
    store.put("w/a", "2")
    store.delete("w/a")
    store.txn([], [Put("w/b", "1"), Put("w/c", "1")])
    changes = store.changes("w/", start, timeout_s=0)
    assert [(c.key, c.kind, c.value) for c in changes] == [
        ("w/a", "put", "1"), ("w/a", "put", "2"), ("w/a", "delete", None),
        ("w/b", "put", "1"), ("w/c", "put", "1"),
    ]
    assert [c.revision for c in changes] == sorted(c.revision for c in changes)
    assert store.changes("w/", changes[-1].revision, timeout_s=0) == []


def test_changes_wait_for_a_change_from_another_thread(store: CoordinationStore) -> None:
    start = store.put("seed", "x")
    writer = threading.Timer(0.05, lambda: store.put("w/late", "1"))
    writer.start()
    changes = store.changes("w/", start, timeout_s=10)
    writer.join()
    assert [c.key for c in changes] == ["w/late"]


def test_session_expiry_shows_in_the_change_feed(
    store: CoordinationStore, clock: ManualClock
) -> None:
    session = store.create_session(3, "n1")
    start = store.put("w/lock", "n1", session=session)
    clock.advance(4)
    changes = store.changes("w/", start, timeout_s=0)
    assert [(c.key, c.kind) for c in changes] == [("w/lock", "delete")]


def test_services_expire_with_their_ttl(store: CoordinationStore, clock: ManualClock) -> None:
    store.register_service("warmcache", "wc-1", "http://a", 60)
    store.register_service("warmcache", "wc-2", "http://b", 10)
    assert [s.node for s in store.services("warmcache")] == ["wc-1", "wc-2"]
    clock.advance(11)
    assert [s.node for s in store.services("warmcache")] == ["wc-1"]
    store.register_service("warmcache", "wc-1", "http://a", 60)  # re-registered in time
    clock.advance(55)
    assert [s.node for s in store.services("warmcache")] == ["wc-1"]
    store.deregister_service("warmcache", "wc-1")
    assert store.services("warmcache") == []


def test_concurrent_cas_increments_lose_no_update(store: CoordinationStore) -> None:
    store.put("counter", "0")

    def bump(times: int) -> None:
        done = 0
        while done < times:
            kv = store.get("counter")
            assert kv is not None
            ok = store.txn([Compare.mod_revision("counter", kv.mod_revision)],
                           [Put("counter", str(int(kv.value) + 1))]).succeeded
            done += ok

    threads = [threading.Thread(target=bump, args=(50,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("counter").value == "400"  # type: ignore[union-attr]


def _bump_in_process(path: str, times: int) -> None:
    store = SqliteStore(path)
    done = 0
    while done < times:
        kv = store.get("counter")
        assert kv is not None
        done += store.txn([Compare.mod_revision("counter", kv.mod_revision)],
                          [Put("counter", str(int(kv.value) + 1))]).succeeded
    store.close()


def test_sqlite_store_is_shared_safely_by_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    store = SqliteStore(path)
    store.put("counter", "0")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bump_in_process, args=(path, 40)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert store.get("counter").value == "160"  # type: ignore[union-attr]
    store.close()


def test_compacted_history_is_reported_not_silently_skipped(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "small.db", keep_changes=10)
    for i in range(1000):
        store.put("w/k", str(i))
    with pytest.raises(WatchCompacted):
        store.changes("w/", 5, timeout_s=0)
    _, revision = store.range("w/")
    assert store.changes("w/", revision - 1, timeout_s=0)[0].value == "999"
    store.close()
