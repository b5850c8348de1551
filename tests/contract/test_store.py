"""Contract suite of the coordination-store port, run against every adapter.

SQLite runs with a manual clock (TTL expiry by moving the clock); etcd runs
against the real server of the ``etcd_url`` session fixture, where TTLs
pass in real time (2 s, etcd's smallest) and expiry is awaited by polling
with a deadline. Every test gets its own key namespace (or database).
Consul joins when ``WARMCACHE_TEST_CONSUL`` is set.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import unavailable
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import ManualClock
from warmcache.errors import SessionExpired, StoreError, StoreUnavailable, WatchCompacted
from warmcache.ports import Change, ChangeStream, Compare, CoordinationStore, Delete, Put, Txn
from warmcache.testing.polling import wait_for


@dataclass
class Backend:
    store: CoordinationStore
    clock: ManualClock | None  # None: the server's real clock
    ttl_s: float
    exact_history: bool = True  # Consul keeps state, not history: changes coalesce
    failure_branch: bool = True  # Consul transactions have none
    cut: Callable[[], int] | None = None  # sever the client's connections (None: it has none)

    def let_pass(self, seconds: float) -> None:
        """Move the manual clock on. A real server's clock moves by itself:
        the ``eventually`` that follows polls until its TTL has run out."""
        if self.clock is not None:
            self.clock.advance(seconds)

    def now(self) -> float:
        return self.clock.now() if self.clock is not None else time.monotonic()

    def eventually(
        self, predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05
    ) -> bool:
        if self.clock is not None:
            return predicate()
        try:
            wait_for("the store to catch up", predicate, timeout_s, interval_s)
        except AssertionError:
            return False
        return True


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("etcd", marks=pytest.mark.etcd),
        pytest.param("consul", marks=pytest.mark.consul),
    ]
)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> Iterator[Backend]:
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "store.db", clock=clock, poll_interval_s=0.005)
        yield Backend(s, clock, 5.0)
        s.close()
        return
    namespace = f"test-{uuid.uuid4().hex[:12]}/"
    if request.param == "etcd":
        from urllib.parse import urlparse

        from tests.relay import Relay
        from warmcache.adapters.etcd_store import EtcdStore

        # Through a relay, so that a test can cut the client's connections.
        target = urlparse(request.getfixturevalue("etcd_url"))
        relay = Relay(target.hostname or "127.0.0.1", target.port or 2379)
        yield Backend(EtcdStore(relay.url, namespace=namespace), None, 2.0, cut=relay.cut)
        relay.stop()
        return
    url = os.environ.get("WARMCACHE_TEST_CONSUL")
    if not url:
        unavailable("consul", "no Consul server: set WARMCACHE_TEST_CONSUL=http://127.0.0.1:8500")
    from warmcache.adapters.consul_store import ConsulStore

    yield Backend(
        ConsulStore(url, namespace=namespace), None, 10.0, exact_history=False, failure_branch=False
    )


@pytest.fixture
def store(backend: Backend) -> CoordinationStore:
    return backend.store


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


def test_txn_failure_branch_runs_instead(backend: Backend) -> None:
    if not backend.failure_branch:
        pytest.skip("this store has no failure branch")
    store = backend.store
    store.put("k", "v")
    result = store.txn([Compare.absent("k")], [Put("won", "1")], [Put("lost", "1")])
    assert not result.succeeded
    assert store.get("won") is None and store.get("lost") is not None


def test_session_keys_vanish_when_the_ttl_passes(backend: Backend) -> None:
    store, ttl = backend.store, backend.ttl_s
    session = store.create_session(ttl, "n1")
    store.put("lock", "n1", session=session)
    assert store.get("lock").session == session  # type: ignore[union-attr]
    if backend.clock is not None:
        backend.let_pass(ttl - 0.1)
        assert store.get("lock") is not None
    backend.let_pass(ttl + 0.2)
    assert backend.eventually(lambda: store.get("lock") is None, timeout_s=4 * ttl)
    with pytest.raises(SessionExpired):
        store.renew_session(session)
    with pytest.raises(SessionExpired):
        store.put("again", "x", session=session)


def test_renewal_keeps_a_session_alive(backend: Backend) -> None:
    store, ttl = backend.store, backend.ttl_s
    session = store.create_session(ttl, "n1")
    store.put("lock", "n1", session=session)
    started, renewals = backend.now(), 0

    def renewed_well_past_one_ttl() -> bool:
        nonlocal renewals
        backend.let_pass(ttl * 0.4)
        store.renew_session(session)
        renewals += 1
        return renewals >= 4 and backend.now() - started >= 1.5 * ttl

    if backend.clock is not None:
        assert all(not renewed_well_past_one_ttl() for _ in range(3))
        assert renewed_well_past_one_ttl()  # 4 x 0.4 TTL
    else:  # renew every 0.2 TTL of real time until 1.5 TTL have passed
        assert backend.eventually(renewed_well_past_one_ttl, 10 * ttl, interval_s=ttl * 0.2)
    assert store.get("lock") is not None
    store.destroy_session(session)
    assert store.get("lock") is None
    store.destroy_session(session)  # idempotent


def test_lock_is_exclusive_until_its_session_ends(backend: Backend) -> None:
    store, ttl = backend.store, backend.ttl_s
    s1, s2 = store.create_session(ttl, "n1"), store.create_session(ttl * 10, "n2")

    def take(session: str) -> bool:
        return store.txn([Compare.absent("L")], [Put("L", session, session=session)]).succeeded

    assert take(s1)
    assert not take(s2)
    store.destroy_session(s1)
    assert take(s2)
    s3 = store.create_session(ttl, "n3")
    assert not take(s3)
    store.destroy_session(s2)
    assert take(s3)
    backend.let_pass(ttl + 0.2)  # s3 not renewed: the lock frees itself
    s4 = store.create_session(ttl * 10, "n4")
    assert backend.eventually(lambda: take(s4), timeout_s=4 * ttl)
    store.destroy_session(s4)


def test_a_stale_lock_holders_fenced_write_is_rejected(backend: Backend) -> None:
    """Fencing (§12.4) as the store sees it: a write guarded by the lock
    key's create revision lands only while that same acquisition holds."""
    store, ttl = backend.store, backend.ttl_s
    s1 = store.create_session(ttl, "old")
    assert store.txn([Compare.absent("L")], [Put("L", "old", session=s1)]).succeeded
    old_token = store.get("L").create_revision  # type: ignore[union-attr]
    assert store.txn([Compare.create_revision("L", old_token)], [Put("data", "v1")]).succeeded
    store.destroy_session(s1)  # the old holder is cut off ...
    s2 = store.create_session(ttl * 10, "new")
    assert store.txn([Compare.absent("L")], [Put("L", "new", session=s2)]).succeeded
    new_token = store.get("L").create_revision  # type: ignore[union-attr]
    assert new_token > old_token
    late = store.txn([Compare.create_revision("L", old_token)], [Put("data", "stale")])
    assert not late.succeeded  # ... and its late write does not land
    assert store.get("data").value == "v1"  # type: ignore[union-attr]
    assert store.txn([Compare.create_revision("L", new_token)], [Put("data", "v2")]).succeeded
    store.destroy_session(s2)


def test_changes_deliver_the_latest_state_of_every_changed_key(backend: Backend) -> None:
    store = backend.store
    store.put("w/gone", "0")
    store.changes("w/", 0, timeout_s=0)  # establishes the watcher's position
    start = store.put("other/x", "-")
    store.put("w/a", "1")
    store.put("w/a", "2")
    store.delete("w/gone")
    store.put("w/b", "1")
    changes = store.changes("w/", start, timeout_s=1)
    last = {c.key: (c.kind, c.value) for c in changes}
    assert last == {"w/a": ("put", "2"), "w/gone": ("delete", None), "w/b": ("put", "1")}
    assert [c.revision for c in changes] == sorted(c.revision for c in changes)


def test_changes_deliver_every_change_in_order(backend: Backend) -> None:
    if not backend.exact_history:
        pytest.skip("this store coalesces changes (state, not history)")
    store = backend.store
    start = store.put("other/x", "-")
    store.put("w/a", "1")
    store.put("w/a", "2")
    store.delete("w/a")
    store.txn([], [Put("w/b", "1"), Put("w/c", "1")])
    changes = store.changes("w/", start, timeout_s=0)
    assert [(c.key, c.kind, c.value) for c in changes] == [
        ("w/a", "put", "1"),
        ("w/a", "put", "2"),
        ("w/a", "delete", None),
        ("w/b", "put", "1"),
        ("w/c", "put", "1"),
    ]
    assert [c.revision for c in changes] == sorted(c.revision for c in changes)
    assert store.changes("w/", changes[-1].revision, timeout_s=0) == []


def test_changes_wait_for_a_change_from_another_thread(store: CoordinationStore) -> None:
    start = store.put("seed", "x")
    writer = threading.Timer(0.3, lambda: store.put("w/late", "1"))
    writer.start()
    changes = store.changes("w/", start, timeout_s=10)
    writer.join()
    assert [c.key for c in changes] == ["w/late"]


def test_session_expiry_shows_in_the_change_feed(backend: Backend) -> None:
    store, ttl = backend.store, backend.ttl_s
    session = store.create_session(ttl, "n1")
    start = store.put("w/lock", "n1", session=session)
    backend.let_pass(ttl + 0.2)
    assert backend.eventually(lambda: store.get("w/lock") is None, timeout_s=4 * ttl)
    changes = store.changes("w/", start, timeout_s=0)
    assert [(c.key, c.kind) for c in changes] == [("w/lock", "delete")]


def test_services_expire_with_their_ttl(backend: Backend) -> None:
    store, ttl = backend.store, backend.ttl_s
    store.register_service("warmcache", "wc-1", "http://a", ttl * 20)
    store.register_service("warmcache", "wc-2", "http://b", ttl)
    assert [s.node for s in store.services("warmcache")] == ["wc-1", "wc-2"]
    assert store.services("warmcache")[0].address == "http://a"
    backend.let_pass(ttl + 0.2)
    assert backend.eventually(
        lambda: [s.node for s in store.services("warmcache")] == ["wc-1"], timeout_s=4 * ttl
    )
    assert [s.node for s in store.services("warmcache")] == ["wc-1"]
    store.register_service("warmcache", "wc-1", "http://a2", ttl * 20)  # re-registered
    assert [s.address for s in store.services("warmcache")] == ["http://a2"]
    store.deregister_service("warmcache", "wc-1")
    assert store.services("warmcache") == []


def test_concurrent_cas_increments_lose_no_update(store: CoordinationStore) -> None:
    store.put("counter", "0")

    def bump(times: int) -> None:
        done = 0
        while done < times:
            kv = store.get("counter")
            assert kv is not None
            ok = store.txn(
                [Compare.mod_revision("counter", kv.mod_revision)],
                [Put("counter", str(int(kv.value) + 1))],
            ).succeeded
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
        done += store.txn(
            [Compare.mod_revision("counter", kv.mod_revision)],
            [Put("counter", str(int(kv.value) + 1))],
        ).succeeded
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


# --- batches of transactions --------------------------------------------------------


def test_txns_decide_each_transaction_on_its_own(store: CoordinationStore) -> None:
    store.put("b/x", "1")
    store.put("b/y", "1")
    x, y = store.get("b/x"), store.get("b/y")
    assert x is not None and y is not None
    store.put("b/y", "2")  # y's compare below is now stale
    results = store.txns(
        [
            Txn(
                [Compare.mod_revision("b/x", x.mod_revision)],
                [Put("b/x", "mine"), Put("b/x2", "m")],
            ),
            Txn([Compare.mod_revision("b/y", y.mod_revision)], [Put("b/y", "mine")]),
            Txn([Compare.absent("b/z")], [Put("b/z", "mine"), Delete("b/x3")]),
        ]
    )
    assert [r.succeeded for r in results] == [True, False, True]
    assert results[1].current["b/y"] is not None and results[1].current["b/y"].value == "2"
    values = {kv.key: kv.value for kv in store.range("b/")[0]}
    assert values == {"b/x": "mine", "b/x2": "m", "b/y": "2", "b/z": "mine"}
    assert store.txns([]) == []


def test_txns_refuse_writes_to_one_key_from_two_transactions(store: CoordinationStore) -> None:
    with pytest.raises(ValueError):
        store.txns([Txn([], [Put("b/k", "1")]), Txn([], [Delete("b/k")])])
    assert store.get("b/k") is None


def test_a_large_batch_is_one_batch(backend: Backend) -> None:
    """More transactions than one etcd request level holds (128)."""
    store = backend.store
    results = store.txns(
        [Txn([Compare.absent(f"b/{i}")], [Put(f"b/{i}", str(i))]) for i in range(300)]
    )
    assert all(r.succeeded for r in results) and len(results) == 300
    assert len(store.range("b/")[0]) == 300


def test_the_largest_transaction_the_store_takes_is_all_or_nothing(
    store: CoordinationStore,
) -> None:
    """An acquisition as large as one transaction can be (etcd: 126 VMs
    under --max-txn-ops=128, compared and moved; without a limit: 300): one
    stale compare fails it all; one key more is refused before anything is
    written."""
    n = store.txn_limit or 300
    store.txn([], [Put(f"p/{i:03}", "ready") for i in range(n + 1)])
    kvs, _ = store.range("p/")

    def claim(upto: int) -> tuple[list[Compare], list[Put | Delete]]:
        compares = [Compare.mod_revision(kv.key, kv.mod_revision) for kv in kvs[:upto]]
        ops: list[Put | Delete] = [
            op for kv in kvs[:upto] for op in (Delete(kv.key), Put("a/" + kv.key[2:], "mine"))
        ]
        return compares, ops

    if store.txn_limit is not None:
        with pytest.raises(ValueError):
            store.txn(*claim(n + 1))
        assert store.range("a/")[0] == []
    store.put(kvs[n - 1].key, "changed")
    failed = store.txn(*claim(n))
    assert not failed.succeeded and failed.current[kvs[n - 1].key].value == "changed"  # type: ignore[union-attr]
    assert len(store.range("p/")[0]) == n + 1 and store.range("a/")[0] == []
    kvs, _ = store.range("p/")
    assert store.txn(*claim(n)).succeeded
    assert len(store.range("p/")[0]) == 1 and len(store.range("a/")[0]) == n


# --- watch streams -------------------------------------------------------------------


def _drain(stream: ChangeStream, want: int, timeout_s: float = 10.0) -> list[Change]:
    got: list[Change] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got += stream.get(0.2)
    return got


def test_a_watch_stream_delivers_every_change_once_in_order(backend: Backend) -> None:
    store = backend.store
    start = store.put("other/x", "-")
    stream = store.watch("w/", start)
    try:
        for i in range(5):
            store.put("w/a", str(i))
        store.delete("w/a")
        got = _drain(stream, 6 if backend.exact_history else 1)
        if backend.exact_history:
            assert [(c.kind, c.value) for c in got] == [("put", str(i)) for i in range(5)] + [
                ("delete", None)
            ]
        assert [c.revision for c in got] == sorted(c.revision for c in got)
        assert stream.get(0.1) == []
    finally:
        stream.close()


def test_a_watch_stream_resumes_after_its_connection_is_cut(backend: Backend) -> None:
    """Changes made while the stream's connection is down arrive after it
    reconnects, from where it left off: none lost, none twice."""
    if backend.cut is None:
        pytest.skip("this store keeps no connection to cut")
    store = backend.store
    start = store.put("other/x", "-")
    stream = store.watch("w/", start)
    try:
        store.put("w/k", "0")
        assert [c.value for c in _drain(stream, 1)] == ["0"]
        assert backend.cut() >= 1
        for i in range(1, 4):
            store.put("w/k", str(i))
        got: list[Change] = []
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            # the outage is reported once (StoreError); the stream reconnects
            with contextlib.suppress(StoreError):
                got += stream.get(0.2)
        assert [c.value for c in got] == ["1", "2", "3"]
        assert stream.get(0.3) == []
        assert getattr(stream, "connects", 2) >= 2  # it did reconnect
    finally:
        stream.close()


def test_calls_after_the_connections_are_cut_go_through_at_once(backend: Backend) -> None:
    """A network blip that drops the store's pooled keep-alive connections
    costs nothing: the next reads and transactions open new ones (no
    error, no restart), and a transaction is applied exactly once."""
    if backend.cut is None:
        pytest.skip("this store keeps no connection to cut")
    store = backend.store
    first = store.put("cut/k", "0")
    assert backend.cut() >= 1
    assert store.txn([Compare.mod_revision("cut/k", first)], [Put("cut/k", "1")]).succeeded
    assert backend.cut() >= 1
    found = store.get("cut/k")
    assert found is not None and found.value == "1" and found.mod_revision > first


def test_a_closed_stream_returns_at_once(store: CoordinationStore) -> None:
    stream = store.watch("w/", store.put("x", "1"))
    closer = threading.Timer(0.2, stream.close)
    closer.start()
    started = time.monotonic()
    stream.get(60.0)
    assert time.monotonic() - started < 30.0  # not the minute it was asked to wait
    closer.join()


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def compactable(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[CoordinationStore, Callable[[int], None]]]:
    """A store and a way to compact its history. etcd's compaction is
    cluster-wide, so it gets an etcd of its own."""
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "c.db", poll_interval_s=0.005)
        yield s, s.compact
        s.close()
        return
    import httpx

    from warmcache.adapters.etcd_store import EtcdStore
    from warmcache.testing.localetcd import EtcdCluster, EtcdUnavailable

    try:
        cluster = EtcdCluster(tmp_path / "etcd").start()
    except EtcdUnavailable as exc:
        unavailable("etcd", str(exc))
    url = cluster.urls[0]

    def compact(revision: int) -> None:
        httpx.post(
            f"{url}/v3/kv/compaction",
            json={"revision": str(revision), "physical": True},
            timeout=10,
        )

    try:
        yield EtcdStore(url), compact
    finally:
        cluster.stop()


def test_a_watch_from_a_compacted_revision_says_so(
    compactable: tuple[CoordinationStore, Callable[[int], None]],
) -> None:
    store, compact = compactable
    start = store.put("w/k", "0")
    for i in range(1, 10):
        last = store.put("w/k", str(i))
    compact(last)
    stream = store.watch("w/", start)
    try:
        with pytest.raises(WatchCompacted):
            for _ in range(50):
                stream.get(0.2)
    finally:
        stream.close()
    stream = store.watch("w/", last)  # from the compaction on: fine
    try:
        store.put("w/k", "after")
        assert [c.value for c in _drain(stream, 1)] == ["after"]
    finally:
        stream.close()


def test_sqlite_driver_errors_become_store_errors(tmp_path: Path, clock: ManualClock) -> None:
    """A raw sqlite3 error never reaches a caller (the build loop logged one
    as "crashed"): a broken database is a StoreError, a locked one
    StoreUnavailable, and the store works again once the cause is gone."""
    import sqlite3

    store = SqliteStore(tmp_path / "s.db", clock=clock, busy_timeout_s=0.05)
    try:
        store.put("a", "1")
        other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
        other.execute("ALTER TABLE kv RENAME TO kv_gone")
        for call in (
            lambda: store.get("a"),
            lambda: store.range(""),
            lambda: store.put("b", "2"),
            lambda: store.txn([], [Put("c", "3")]),
        ):
            with pytest.raises(StoreError) as err:
                call()
            assert "no such table" in str(err.value)
        other.execute("ALTER TABLE kv_gone RENAME TO kv")
        assert store.get("a") is not None and store.put("b", "2") > 0
        other.execute("BEGIN EXCLUSIVE")  # another process holds the database
        with pytest.raises(StoreUnavailable):
            store.put("d", "4")
        other.execute("ROLLBACK")
        assert store.put("d", "4") > 0
        other.close()
    finally:
        store.close()
