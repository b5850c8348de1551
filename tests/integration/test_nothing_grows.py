"""Nothing grows for ever (issue 28, item 8): 20,000 named acquisitions
from 2,000 requesters under a "*" quota, each released, with the demand
ledger flushed, then time past every retention: the store holds exactly
the keys it held before, kind by kind (claim records, quota counters,
demand history, holder indexes, addresses, VM records). In process on
SQLite with simulated hosts: about 70 s on 2 cores, hence integration."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable

import pytest

# The unit suite's service rig: SQLite, simulated agents, a manual clock.
from tests.unit.conftest import agents, make_service  # noqa: F401
from warmcache.clock import ManualClock
from warmcache.config import DemandConfig, QuotaLimit
from warmcache.service import WarmCache
from warmcache.testing.polling import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RULE = {"max_instance_per_cycle": 40, "total_instances": 40, "min_fault_domain": 1}
ACQUISITIONS = int(os.environ.get("WARMCACHE_TEST_GROWTH_N", "20000"))


def kinds(svc: WarmCache) -> Counter[str]:
    """Keys by kind: the path with every name-like part folded."""
    kvs, _ = svc.store.range("wc/")
    return Counter(re.sub(r"/[^/]*\d[^/]*", "/#", kv.key) for kv in kvs)


def ready(svc: WarmCache) -> int:
    svc.acquirer.catch_up()
    return sum(p.ready for p in svc.pools() if p.flavor == "small")


def refill(svc: WarmCache, clock: ManualClock) -> None:
    """The released VMs deleted, the demand ledger written, a minute on,
    and the pool full again."""
    svc.lifecycle.worker.run_once()
    svc.acquirer.ledger_job()
    clock.advance(60)
    svc.run_cycle()
    wait_for(
        "the pool to be full again", lambda: ready(svc) == 40 or (svc.run_cycle() and False), 30
    )


def test_the_store_returns_to_its_size_after_20000_acquisitions_and_releases(
    make_service: Callable[..., WarmCache],  # noqa: F811 - the fixture imported above
    clock: ManualClock,
) -> None:
    svc = make_service(
        claim_retention_s=600,
        claim_sweep_interval_s=60,
        quotas=(QuotaLimit(requester="*", vms_per_window=1_000_000, window_s=60),),
        demand=DemandConfig(keep_h=1, flush_s=60),
    )
    svc.rules.put("az1", "small", RULE)
    svc.run_cycle()
    before = kinds(svc)
    for i in range(ACQUISITIONS):
        svc.acquire(
            "small", "az1", 1, "best-effort", requester=f"team-{i % 2000}", claim_id=f"c{i}"
        )
        svc.release_claim(f"c{i}")
        if i % 40 == 39:  # the pool's worth: deleted, refilled, a minute on
            refill(svc, clock)
    grown = kinds(svc)
    for _ in range(3):  # past every retention: claims, windows, demand hours
        clock.advance(3 * 3600)
        svc.lifecycle.worker.run_once()
        svc.run_cycle()
    after = kinds(svc)
    assert after == before, {
        k: (before[k], grown[k], after[k]) for k in before | after if before[k] != after[k]
    }
    assert sum(grown.values()) > sum(before.values())  # it did grow meanwhile
