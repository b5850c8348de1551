"""A membership change re-deals the pools' shares without stalling
acquisitions: the index re-places its VMs in chunks and lets go of its lock
between them (30,000 VMs held it 3.5 s in one piece), and ends where a
whole re-deal would: each instance's own share is exactly what the new
membership gives it."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

import warmcache.acquire.index as index_module
from tests.acquiring import Rig, seed
from warmcache.acquire.shares import Shares
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import ManualClock
from warmcache.model import Mode


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    store = SqliteStore(tmp_path / "s.db", clock=ManualClock())
    seed(store, racks=3, per_rack=15)  # 45 ready VMs
    rig = Rig(store, node="wc-1")
    rig.sync()
    return rig


def _own_share_selected(rig: Rig, nodes: list[str]) -> tuple[int, set[str]]:
    """How many VMs the new membership gives this instance, and what a
    selection of that many returns."""
    shares = Shares("wc-1", nodes)
    names = [rec.name for rec in rig.index.values()]
    mine = sum(shares.mine(name) for name in names)
    picked = rig.index.select(("az1", "small"), mine, Mode.BEST_EFFORT, False, random.Random(0))
    assert picked is not None
    return mine, {vm.name for vm, _ in picked if not shares.mine(vm.name)}


def test_a_membership_change_lets_go_of_the_lock_between_chunks(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "REDEAL_CHUNK", 10)
    free: list[bool] = []

    def try_lock() -> None:
        got = rig.index._lock.acquire(blocking=False)
        if got:
            rig.index._lock.release()
        free.append(got)

    dealt_during: list[int] = []

    def between_chunks() -> None:
        probe = threading.Thread(target=try_lock)  # another thread: the lock is re-entrant
        probe.start()
        probe.join()
        dealt_during.append(rig.index.dealt_instances)

    monkeypatch.setattr(index_module, "_let_others_in", between_chunks)
    assert rig.index.dealt_instances == 1
    rig.index.set_instances(["wc-1", "wc-2"])
    assert free == [True, True, True, True]  # 45 VMs: 5 chunks, 4 gaps, lock free in each
    # /metrics' warmcache_share_instances: the new count once every VM is re-dealt
    assert dealt_during == [1, 1, 1, 1] and rig.index.dealt_instances == 2
    mine, foreign = _own_share_selected(rig, ["wc-1", "wc-2"])
    assert 0 < mine < 45
    assert foreign == set()  # every VM reached: own-share selection holds only its own


def test_a_newer_membership_met_between_chunks_takes_over(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "REDEAL_CHUNK", 10)
    calls = []

    def between_chunks() -> None:
        calls.append(1)
        if len(calls) == 1:  # a third instance joins while the second's re-deal runs
            rig.index.set_instances(["wc-1", "wc-2", "wc-3"])

    monkeypatch.setattr(index_module, "_let_others_in", between_chunks)
    rig.index.set_instances(["wc-1", "wc-2"])
    assert rig.index.instances == ("wc-1", "wc-2", "wc-3")
    assert rig.index.dealt_instances == 3  # the one taken over never says it finished
    assert len(calls) == 5  # the first re-deal stopped at its next chunk: 1 + the newer one's 4
    mine, foreign = _own_share_selected(rig, ["wc-1", "wc-2", "wc-3"])
    assert 0 < mine < 45
    assert foreign == set()


def test_claims_between_the_chunks_of_a_re_deal_never_get_the_same_vm(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two instances claim while one of them is half way through its
    re-deal (VMs not reached yet keep their old share, the whole pool): each
    VM goes to one of them, never both (DESIGN §12)."""
    other = Rig(rig.store, node="wc-2", seed_=1)
    other.index.set_instances(["wc-1", "wc-2"])
    monkeypatch.setattr(index_module, "REDEAL_CHUNK", 10)
    handed: list[str] = []

    def claim_between_chunks() -> None:
        for claimer in (rig, other):
            handed.extend(claimer.claim(2, Mode.BEST_EFFORT))

    monkeypatch.setattr(index_module, "_let_others_in", claim_between_chunks)
    rig.index.set_instances(["wc-1", "wc-2"])
    handed.extend(rig.claim(45 - len(handed), Mode.BEST_EFFORT))  # the rest: the pool is whole
    assert len(handed) == 45 and len(set(handed)) == 45
