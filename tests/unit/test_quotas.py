"""Fair shares: a request over its requester's quota gets quota_exceeded and
claims nothing; windowed counts hold across instances and concurrent
claims (never more than the limit handed out), on SQLite and real etcd;
over HTTP the error is a 429 with Retry-After and rebuilds in the client."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.acquiring import Rig, seed
from warmcache import Client, QuotaExceeded
from warmcache.claims.quotas import Quotas, sweep_windows
from warmcache.clock import ManualClock
from warmcache.config import QuotaLimit, parse_config
from warmcache.errors import ConfigError, NoCapacity
from warmcache.layout import Keys
from warmcache.model import Mode
from warmcache.service import WarmCache
from warmcache.web import create_app

KEYS = Keys("wc")
RULE = {"max_instance_per_cycle": 12, "total_instances": 12, "min_fault_domain": 1}


def ready(service: WarmCache) -> int:
    return next(p.ready for p in service.pools() if p.flavor == "small")


def acquired(service: WarmCache) -> int:
    return len(service.store.range(KEYS.acquired_dir())[0])


@pytest.fixture
def filled(make_service: Callable[..., WarmCache]) -> Callable[..., WarmCache]:
    def make(*limits: QuotaLimit, **config: Any) -> WarmCache:
        svc = make_service(quotas=limits, **config)
        svc.rules.put("az1", "small", RULE)
        svc.run_cycle()
        return svc

    return make


def test_a_window_quota_refuses_what_is_over_and_claims_nothing(
    filled: Callable[..., WarmCache], clock: ManualClock
) -> None:
    clock.advance(-clock.now() % 3600 + 3600)  # the start of a window
    svc = filled(QuotaLimit(requester="ci", vms_per_window=5, window_s=3600))
    svc.acquire("small", "az1", 3, "best-effort", requester="ci")
    with pytest.raises(QuotaExceeded) as refused:
        svc.acquire("small", "az1", 3, "best-effort", requester="ci")
    e = refused.value
    assert (e.requester, e.limit, e.used, e.wanted) == ("ci", 5, 3, 3)
    assert e.retry_after_s == pytest.approx(3600) and e.quota == "ci/*/*"
    assert ready(svc) == 9 and acquired(svc) == 3  # nothing claimed
    svc.acquire("small", "az1", 2, "best-effort", requester="ci")  # exactly the limit
    svc.acquire("small", "az1", 4, "best-effort", requester="web")  # others are not limited
    with pytest.raises(QuotaExceeded):
        svc.acquire("small", "az1", 1, "best-effort", requester="ci")
    clock.advance(3600)  # a new window
    svc.acquire("small", "az1", 1, "best-effort", requester="ci")
    assert acquired(svc) == 10


def test_a_star_quota_counts_each_requester_on_its_own(
    filled: Callable[..., WarmCache],
) -> None:
    svc = filled(QuotaLimit(requester="*", flavor="small", vms_per_window=2))
    for who in ("a", "b", "c"):
        svc.acquire("small", "az1", 2, "best-effort", requester=who)
    with pytest.raises(QuotaExceeded):
        svc.acquire("small", "az1", 1, "best-effort", requester="a")
    svc.rules.put("az1", "medium", RULE)
    svc.run_cycle()
    svc.acquire("medium", "az1", 3, "best-effort", requester="a")  # another flavor: no quota


def test_window_counters_go_when_their_window_ends(
    filled: Callable[..., WarmCache], clock: ManualClock
) -> None:
    """Issue 28, item 8: every requester name a "*" quota saw left a
    counter key for ever (2,002 keys after 2,000 names)."""
    clock.advance(-clock.now() % 3600 + 3600)
    svc = filled(QuotaLimit(requester="*", vms_per_window=2, window_s=3600))
    for who in ("a", "b", "c"):
        svc.acquire("small", "az1", 1, "best-effort", requester=who)

    def counters() -> int:
        return len(svc.store.range(KEYS.quotas_dir())[0])

    assert counters() == 3
    assert sweep_windows(svc.store, KEYS, clock.now()) == 0  # the window is still on
    clock.advance(3600)
    assert sweep_windows(svc.store, KEYS, clock.now()) == 3 and counters() == 0
    # the requester starts a new window as if the counter had stayed
    svc.acquire("small", "az1", 2, "best-effort", requester="a")
    with pytest.raises(QuotaExceeded):
        svc.acquire("small", "az1", 1, "best-effort", requester="a")


def test_a_share_quota_keeps_one_request_from_draining_the_pool(
    filled: Callable[..., WarmCache],
) -> None:
    svc = filled(QuotaLimit(requester="*", max_share=0.5))
    with pytest.raises(QuotaExceeded) as refused:
        svc.acquire("small", "az1", 7, "best-effort", requester="burst")
    assert refused.value.limit == 6 and refused.value.retry_after_s == 0
    assert ready(svc) == 12
    svc.acquire("small", "az1", 6, "best-effort", requester="burst")
    svc.acquire("small", "az1", 3, "best-effort", requester="burst")  # half of the 6 left
    svc.acquire("small", "az1", 1, "best-effort", requester="burst")  # 1 of 3: at least one
    svc.acquire("small", "az1", 1, "best-effort", requester="burst")
    svc.acquire("small", "az1", 1, "best-effort", requester="burst")
    with pytest.raises(NoCapacity):  # an empty pool is no_capacity, not a quota
        svc.acquire("small", "az1", 1, "best-effort", requester="burst")


def test_a_repeat_of_a_named_claim_that_landed_is_not_refused_by_its_quota(
    filled: Callable[..., WarmCache],
) -> None:
    svc = filled(QuotaLimit(requester="ci", vms_per_window=3))
    first = svc.acquire("small", "az1", 3, "best-effort", requester="ci", claim_id="job-1")
    again = svc.acquire("small", "az1", 3, "best-effort", requester="ci", claim_id="job-1")
    assert [v.name for v in again] == [v.name for v in first] and acquired(svc) == 3


@pytest.mark.parametrize("batch", [True, False])
def test_two_instances_racing_never_hand_out_more_than_the_window_allows(
    make_service: Callable[..., WarmCache], batch: bool
) -> None:
    limit = QuotaLimit(requester="ci", vms_per_window=7)
    one = make_service(node="wc-1", batch_claims=batch, quotas=(limit,))
    two = make_service(node="wc-2", batch_claims=batch, quotas=(limit,))
    one.rules.put("az1", "small", {"max_instance_per_cycle": 20, "total_instances": 20})
    one.run_cycle()
    got: list[int] = []
    refused: list[QuotaExceeded] = []
    other: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(svc: WarmCache) -> None:
        barrier.wait()
        for _ in range(3):
            try:
                got.append(len(svc.acquire("small", "az1", 1, "best-effort", requester="ci")))
            except QuotaExceeded as exc:
                refused.append(exc)
            except BaseException as exc:
                other.append(exc)

    threads = [threading.Thread(target=worker, args=(svc,)) for svc in (one, two) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert other == []
    assert sum(got) == 7 and len(refused) == 24 - 7  # exactly the limit, no more
    assert acquired(one) == 7


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def any_store(request: pytest.FixtureRequest, sqlite_store: Any) -> Iterator[Any]:
    if request.param == "sqlite":
        yield sqlite_store
        return
    import uuid

    from warmcache.adapters.etcd_store import EtcdStore

    store = EtcdStore(request.getfixturevalue("etcd_url"), namespace=f"t-{uuid.uuid4().hex[:8]}/")
    yield store
    store.close()


def test_one_batch_writes_a_counter_once_and_counts_every_claim(any_store: Any) -> None:
    """Three claims of one requester in one group commit: etcd refuses two
    writes of one key in a transaction, so the second and third go in the
    next rounds; the counter ends at the sum, the fourth is refused."""
    seed(any_store, racks=3, per_rack=2)
    limit = QuotaLimit(requester="t", vms_per_window=5)
    rig = Rig(any_store)
    rig.claimer._quotas = Quotas((limit,), KEYS)  # the rig's claimer, with a quota
    rig.sync()
    requests = [rig.request(2, Mode.BEST_EFFORT) for _ in range(3)]
    for r in requests:
        r.quotas = (limit,)
    rig.claimer.claim_batch(requests)
    outcomes = [r.outcome for r in requests]
    assert [type(o).__name__ for o in outcomes] == ["Claimed", "Claimed", "QuotaExceeded"]
    kv = any_store.get(KEYS.quota("t", "*/*"))
    assert kv is not None and '"used": 4' in kv.value
    assert len(any_store.range(KEYS.acquired_dir())[0]) == 4


def test_over_http_a_quota_is_a_429_with_retry_after_and_the_client_raises_it(
    filled: Callable[..., WarmCache],
) -> None:
    svc = filled(QuotaLimit(requester="anonymous", vms_per_window=2, window_s=600))
    web = create_app(svc).test_client()
    body = {"flavor": "small", "az": "az1", "count": 3, "mode": "best-effort"}
    reply = web.post("/v1/acquire", json=body)
    assert reply.status_code == 429 and reply.get_json()["error"] == "quota_exceeded"
    assert 0 < int(reply.headers["Retry-After"]) <= 600
    detail = reply.get_json()["detail"]
    assert detail["limit"] == 2 and detail["wanted"] == 3
    http = httpx.Client(transport=httpx.WSGITransport(app=create_app(svc)), base_url="http://wc")
    client = Client("http://wc", http=http, retry_attempts=1)
    with pytest.raises(QuotaExceeded) as refused:
        client.acquire("small", "az1", 3, "best-effort")
    assert refused.value.limit == 2 and ready(svc) == 12


def test_quota_limits_are_validated_in_the_config() -> None:
    config = parse_config(
        {"quotas": {"limits": [{"requester": "ci", "vms_per_window": 10, "window_s": 60}]}},
        environ={},
    )
    assert config.quotas.limits[0].vms_per_window == 10
    for bad in (
        {"requester": "ci"},  # limits nothing
        {"requester": "ci", "max_share": 1.5},
        {"requester": "ci", "vms_per_window": -1},
        {"requester": "ci", "max_share": 0.5, "colour": "red"},
    ):
        with pytest.raises(ConfigError):
            parse_config({"quotas": {"limits": [bad]}}, environ={})
