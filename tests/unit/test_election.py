"""Leader lock and fencing on the SQLite store (DESIGN §5, §12.4)."""

from __future__ import annotations

import pytest

from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import ManualClock
from warmcache.errors import LeadershipLost
from warmcache.layout import Keys
from warmcache.leader.election import LeaderElection
from warmcache.ports import Put
from warmcache.testing.polling import wait_for

KEYS = Keys("wc")


def election(store: SqliteStore, clock: ManualClock, node: str) -> LeaderElection:
    return LeaderElection(store, KEYS.leader(), node, ttl_s=5, clock=clock)


def test_one_leader_at_a_time_and_the_key_says_who(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    a, b = election(sqlite_store, clock, "a"), election(sqlite_store, clock, "b")
    lead_a = a.try_acquire()
    assert lead_a is not None
    assert b.try_acquire() is None
    holder = b.holder()
    assert holder is not None and holder["node"] == "a" and holder["token"] == lead_a.token
    a.release(lead_a)
    assert a.holder() is None
    lead_b = b.try_acquire()
    assert lead_b is not None and lead_b.token > lead_a.token


def test_a_stale_leaders_writes_are_rejected(sqlite_store: SqliteStore, clock: ManualClock) -> None:
    a, b = election(sqlite_store, clock, "a"), election(sqlite_store, clock, "b")
    lead_a = a.try_acquire()
    assert lead_a is not None
    writer_a = a.writer(lead_a)
    writer_a.put("wc/pool/az1/vm1", "from a")
    clock.advance(6)  # a paused past its TTL
    lead_b = b.try_acquire()
    assert lead_b is not None
    with pytest.raises(LeadershipLost):
        writer_a.put("wc/pool/az1/vm1", "late write from a")
    assert lead_a.lost.is_set()
    with pytest.raises(LeadershipLost):  # and it stays stopped
        writer_a.put("wc/pool/az1/vm2", "x")
    assert sqlite_store.get("wc/pool/az1/vm1").value == "from a"  # type: ignore[union-attr]
    assert sqlite_store.get("wc/pool/az1/vm2") is None
    b.writer(lead_b).put("wc/pool/az1/vm1", "from b")


def test_expired_leader_without_successor_is_still_fenced(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    a = election(sqlite_store, clock, "a")
    lead = a.try_acquire()
    assert lead is not None
    clock.advance(6)
    with pytest.raises(LeadershipLost):
        a.writer(lead).put("wc/x", "1")


def test_failed_caller_compare_is_not_leadership_loss(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    from warmcache.ports import Compare

    a = election(sqlite_store, clock, "a")
    lead = a.try_acquire()
    assert lead is not None
    sqlite_store.put("wc/k", "exists")
    result = a.writer(lead).txn([Compare.absent("wc/k")], [Put("wc/k", "mine")])
    assert not result.succeeded and not lead.lost.is_set()


def test_lead_releases_when_the_block_ends(sqlite_store: SqliteStore, clock: ManualClock) -> None:
    a, b = election(sqlite_store, clock, "a"), election(sqlite_store, clock, "b")
    with a.lead() as lead:
        assert lead is not None
        with b.lead() as other:
            assert other is None
    assert a.holder() is None


def test_vacancy_watch_reports_the_token_that_went_away(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    import threading

    a, b = election(sqlite_store, clock, "a"), election(sqlite_store, clock, "b")
    stop = threading.Event()
    assert b.wait_for_vacancy(stop) is None  # nobody leads
    lead = a.try_acquire()
    assert lead is not None

    # a's session expires while b watches (the timer gives b time to start).
    def expire() -> None:
        clock.advance(6)
        sqlite_store.get(KEYS.leader())

    timer = threading.Timer(0.2, expire)
    timer.start()
    assert b.wait_for_vacancy(stop, poll_s=0.01) == lead.token
    timer.join()


def test_loss_is_signalled_once_the_moment_it_is_seen(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    a = election(sqlite_store, clock, "a")
    calls: list[str] = []
    with a.lead(on_lost=lambda leadership, why: calls.append(why)) as lead:
        assert lead is not None
        clock.advance(6)
        for _ in range(2):
            with pytest.raises(LeadershipLost):
                a.writer(lead).put("wc/x", "1")
    # Whichever saw it first (the write, or the renewer woken by the clock), once.
    assert len(calls) == 1
    assert calls[0] == "a fenced write was rejected" or calls[0].startswith("renewal failed")


def test_the_renewer_runs_when_the_clock_moves(
    sqlite_store: SqliteStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renewal follows the injected clock (Clock.wait), not real time: each
    move of 4 s (TTL 5) is renewed at once, so 20 s pass and the lead holds."""
    renewals: list[str] = []
    renew = sqlite_store.renew_session

    def counted(session: str) -> None:
        renew(session)
        renewals.append(session)

    monkeypatch.setattr(sqlite_store, "renew_session", counted)
    a = election(sqlite_store, clock, "a")
    with a.lead() as lead:
        assert lead is not None
        for moved in range(1, 6):
            clock.advance(4)
            wait_for("the renewal", lambda n=moved: len(renewals) >= n, 1.0)  # type: ignore[misc]
        a.writer(lead).put("wc/x", "still the leader")
        assert not lead.lost.is_set()
