"""After the process stalls (SIGSTOP, a long pause) its change feeds stop
with it: a refusal is only definitive from views checked against the store
since (issue 28, item 9)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from warmcache.errors import NoCapacity
from warmcache.service import WarmCache
from warmcache.stalls import StallWatch

RULE = {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 1}


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_late_tick_is_a_stall_and_an_overdue_one_is_a_stall_under_way() -> None:
    ticks = Ticks()
    watch = StallWatch(tick_s=0.1, late_s=1.0, clock=ticks)
    ticks.now += 5.0
    assert not watch.stalled_since(0.0)  # never ticked (not started): no stall
    for _ in range(20):
        ticks.now += 0.1
        watch.tick()
    assert not watch.stalled_since(0.0) and watch.stalls == 0
    ticks.now += 8.0  # SIGSTOP for 8 s; resumed, the ticker has not run yet
    assert watch.stalled_since(ticks.now)
    watch.tick()
    assert watch.stalls == 1
    assert watch.stalled_since(ticks.now - 1) and not watch.stalled_since(ticks.now)


def test_after_a_stall_no_capacity_is_said_only_once_the_views_caught_up(
    make_service: Callable[..., WarmCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = make_service()
    svc.rules.put("az1", "small", RULE)
    svc.run_cycle()
    svc.acquire("small", "az1", 6, "best-effort")  # the pool is empty, and it knows
    acquirer = svc.acquirer
    for view in acquirer.views:  # a feed that stopped with the process
        monkeypatch.setattr(view, "catch_up", lambda *_a, **_k: None)
    ticks = Ticks()
    acquirer.stalls = StallWatch(clock=ticks)
    acquirer._checked_at = acquirer._checked_done = ticks.now  # the last check, same clock
    acquirer.stalls.tick()  # its ticker runs (a started service)
    svc.run_cycle()  # the pool refilled in the store: 6 ready VMs the views missed
    ticks.now += 8.0  # the process was stopped 8 s
    got = svc.acquire("small", "az1", 3, "best-effort")
    assert len(got) == 3  # served: not a false "0 ready on 0 racks"
    acquirer.stalls.tick()
    assert len(svc.acquire("small", "az1", 3, "best-effort")) == 3
    with pytest.raises(NoCapacity):  # truly empty now: refused, definitively
        svc.acquire("small", "az1", 1, "best-effort")


def test_a_feed_that_caught_up_between_the_claim_and_the_check_still_gets_a_second_claim(
    make_service: Callable[..., WarmCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race CI found: the claim saw the views still stale, then the feed
    caught up on its own before the stall check, so the barrier found
    nothing missing; the request must not be refused on the claim's stale
    view ("0 ready" while the store held 8)."""
    svc = make_service()
    svc.rules.put("az1", "small", RULE)
    svc.run_cycle()
    svc.acquire("small", "az1", 6, "best-effort")
    acquirer = svc.acquirer
    caught_up = {view: view.catch_up for view in acquirer.views}
    for view in acquirer.views:
        monkeypatch.setattr(view, "catch_up", lambda *_a, **_k: None)
    ticks = Ticks()
    acquirer.stalls = StallWatch(clock=ticks)
    acquirer._checked_at = acquirer._checked_done = ticks.now  # the last check, same clock
    acquirer.stalls.tick()
    svc.run_cycle()  # refilled behind the views' back
    ticks.now += 8.0
    real_behind = acquirer._behind

    def feed_first(claim_began: float) -> bool:  # the feed runs between claim and check
        for view, catch_up in caught_up.items():
            catch_up()
            view.sync()
        return real_behind(claim_began)

    monkeypatch.setattr(acquirer, "_behind", feed_first)
    assert len(svc.acquire("small", "az1", 3, "best-effort")) == 3


def test_a_claim_that_began_while_another_request_checked_the_views_gets_a_second_claim(
    make_service: Callable[..., WarmCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race CI found next: request A's check brings the views up to date
    one after the other; request B's claim began meanwhile and read a view
    A had not reached yet. B's refusal must not be final because a check
    began before its claim: the views were current only when it ended."""
    svc = make_service()
    acquirer = svc.acquirer
    ticks = Ticks()
    acquirer.stalls = StallWatch(clock=ticks)
    acquirer._checked_at = acquirer._checked_done = ticks.now
    acquirer.stalls.tick()
    ticks.now += 8.0  # stopped 8 s; resumed, the ticker notices
    acquirer.stalls.tick()
    real_sync = acquirer.hosts.sync

    def slow_sync() -> bool:  # A's check takes a second
        ticks.now += 1.0
        return real_sync()

    monkeypatch.setattr(acquirer.hosts, "sync", slow_sync)
    assert acquirer._behind(claim_began=7.9)  # A: checks the views (8.0 -> 9.0)
    assert acquirer._behind(claim_began=8.5)  # B: began during A's check: claims again
    assert not acquirer._behind(claim_began=9.5)  # C: began after it ended: final
