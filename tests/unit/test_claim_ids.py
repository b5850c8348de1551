"""Idempotent acquisitions: a named claim lands once, whatever repeats it,
where, how often and how concurrently; a lost reply retried returns the
same VMs and strands none."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from flask import Flask

from warmcache import (
    ClaimMismatch,
    ClaimOutcomeUnknown,
    Client,
    InvalidRequest,
    NoCapacity,
    ServerUnreachable,
    UnknownClaim,
)
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import ManualClock
from warmcache.layout import Keys
from warmcache.model import InstanceState, PoolInstance
from warmcache.service import WarmCache
from warmcache.web import create_app

RULE = {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 3}

KEYS = Keys("wc")


@pytest.fixture
def filled(service: WarmCache) -> WarmCache:
    service.rules.put("az1", "small", RULE)
    service.run_cycle()
    assert service.pools()[0].ready == 6
    return service


def acquired(store: SqliteStore) -> list[PoolInstance]:
    kvs, _ = store.range(KEYS.acquired_dir())
    return [PoolInstance.model_validate_json(kv.value) for kv in kvs]


def ready(service: WarmCache) -> int:
    return next(p.ready for p in service.pools() if p.flavor == "small")


def test_a_repeat_returns_the_same_vms_and_claims_nothing_more(
    filled: WarmCache, sqlite_store: SqliteStore
) -> None:
    first = filled.acquire("small", "az1", 2, "best-effort", claim_id="job-1")
    again = filled.acquire("small", "az1", 2, "best-effort", claim_id="job-1")
    assert [vm.name for vm in again] == [vm.name for vm in first]
    assert ready(filled) == 4 and len(acquired(sqlite_store)) == 2
    record = filled.claim("job-1")
    assert record.requester == "anonymous" and {vm.name for vm in record.vms} == {
        vm.name for vm in first
    }
    kinds = [e.type for e in filled.events.recent(10, "acquisition")]
    assert kinds.count("acquisition") == 1 and kinds.count("acquisition.replayed") == 1


def test_the_same_id_with_another_request_is_a_mismatch_and_claims_nothing(
    filled: WarmCache, sqlite_store: SqliteStore
) -> None:
    filled.acquire("small", "az1", 2, "best-effort", claim_id="job-2")
    with pytest.raises(ClaimMismatch) as err:
        filled.acquire("small", "az1", 3, "best-effort", claim_id="job-2")
    assert err.value.differs == ["count"]
    with pytest.raises(ClaimMismatch):
        filled.acquire("small", "az1", 2, "rack-aware", claim_id="job-2")
    assert ready(filled) == 4 and len(acquired(sqlite_store)) == 2


def test_a_repeat_is_answered_even_when_the_pool_is_empty_now(filled: WarmCache) -> None:
    first = filled.acquire("small", "az1", 6, "best-effort", claim_id="all-of-it")
    again = filled.acquire("small", "az1", 6, "best-effort", claim_id="all-of-it")
    assert {vm.name for vm in again} == {vm.name for vm in first}
    with pytest.raises(NoCapacity):
        filled.acquire("small", "az1", 1, "best-effort", claim_id="another")


def test_a_claim_that_never_landed_can_be_retried_under_its_id(filled: WarmCache) -> None:
    with pytest.raises(NoCapacity):
        filled.acquire("small", "az1", 7, "best-effort", claim_id="job-3")
    with pytest.raises(UnknownClaim):
        filled.claim("job-3")
    vms = filled.acquire("small", "az1", 7 - 1, "best-effort", claim_id="job-3")
    assert len(vms) == 6 and filled.claim("job-3").count == 6


def test_bad_claim_ids_are_refused(filled: WarmCache) -> None:
    for bad in ("", "a" * 65, "with space", "slash/y", "ünïcode"):
        with pytest.raises(InvalidRequest):
            filled.acquire("small", "az1", 1, "best-effort", claim_id=bad)
    assert ready(filled) == 6


@pytest.mark.parametrize("batch", [True, False])
def test_concurrent_duplicates_of_one_id_make_one_claim(
    make_service: Callable[..., WarmCache], sqlite_store: SqliteStore, batch: bool
) -> None:
    # two instances on one store, four threads each, one claim id
    one = make_service(node="wc-1", batch_claims=batch)
    two = make_service(node="wc-2", batch_claims=batch)
    one.rules.put("az1", "small", RULE)
    one.run_cycle()
    results: list[set[str]] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(svc: WarmCache) -> None:
        barrier.wait()
        try:
            vms = svc.acquire("small", "az1", 3, "best-effort", claim_id="dup")
            results.append({vm.name for vm in vms})
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(svc,)) for svc in (one, two) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(results) == 8 and len({frozenset(r) for r in results}) == 1
    held = acquired(sqlite_store)
    assert len(held) == 3 and {vm.claim_id for vm in held} == {"dup"}
    assert ready(one) == 3


def test_records_are_swept_after_their_retention(
    make_service: Callable[..., WarmCache], clock: ManualClock
) -> None:
    svc = make_service(claim_retention_s=600, claim_sweep_interval_s=60)
    svc.rules.put("az1", "small", RULE)
    svc.run_cycle()
    svc.acquire("small", "az1", 1, "best-effort", claim_id="short-lived")
    clock.advance(300)
    svc.run_cycle()
    assert svc.claim("short-lived").claim_id == "short-lived"
    clock.advance(400)
    svc.run_cycle()
    with pytest.raises(UnknownClaim):
        svc.claim("short-lived")


# --- over HTTP ----------------------------------------------------------------------------


class LosingTransport(httpx.BaseTransport):
    """Runs each request on the app, then loses the reply of the first
    ``lose`` acquisitions (the claim landed; the caller saw a timeout), and
    refuses every request while ``down`` is set."""

    def __init__(self, app: Flask, lose: int = 0) -> None:
        self._inner = httpx.WSGITransport(app=app)
        self.lose = lose
        self.down = False
        self.acquires = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        reply = self._inner.handle_request(request)
        if request.url.path == "/v1/acquire":
            self.acquires += 1
            if self.lose > 0:
                self.lose -= 1
                reply.read()
                raise httpx.ReadTimeout("timed out", request=request)
        return reply


@pytest.fixture
def over_http(filled: WarmCache) -> Iterator[tuple[Client, LosingTransport]]:
    transport = LosingTransport(create_app(filled))
    http = httpx.Client(transport=transport, base_url="http://wc")
    yield Client("http://wc", http=http, sleep=lambda _s: None), transport
    http.close()


def test_a_reply_lost_after_the_claim_landed_is_retried_to_the_same_vms(
    filled: WarmCache, sqlite_store: SqliteStore, over_http: tuple[Client, LosingTransport]
) -> None:
    client, transport = over_http
    transport.lose = 2
    vms = client.acquire("small", "az1", 3, "rack-aware", claim_id="es-cluster-7")
    assert transport.acquires == 3  # landed, lost; replayed, lost; replayed
    held = acquired(sqlite_store)
    assert {vm.name for vm in held} == {vm.name for vm in vms}  # nothing stranded
    assert all(vm.state == InstanceState.ACQUIRED and vm.claim_id == "es-cluster-7" for vm in held)
    assert ready(filled) == 3
    claim = client.claim("es-cluster-7")
    assert claim.state == "acquired" and {vm.name for vm in claim.vms} == {vm.name for vm in vms}


def test_a_client_without_an_id_still_retries_safely(
    filled: WarmCache, sqlite_store: SqliteStore, over_http: tuple[Client, LosingTransport]
) -> None:
    client, transport = over_http
    transport.lose = 1
    vms = client.acquire("small", "az1", 2, "best-effort")
    assert len(acquired(sqlite_store)) == 2 and ready(filled) == 4
    assert {vm.claim_id for vm in vms} == {vms[0].claim_id}


def test_the_outcome_is_unknown_only_when_it_cannot_be_learned(
    filled: WarmCache, over_http: tuple[Client, LosingTransport]
) -> None:
    client, transport = over_http
    transport.lose = 99  # every acquisition lands, every reply is lost
    real = transport.handle_request
    # the lookup after the retries succeeds: the VMs, not an error
    assert len(client.acquire("small", "az1", 1, "best-effort", claim_id="k1")) == 1

    def lookup_fails(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/claims/"):
            raise httpx.ConnectError("refused", request=request)
        return real(request)

    transport.handle_request = lookup_fails  # type: ignore[method-assign]
    with pytest.raises(ClaimOutcomeUnknown) as err:
        client.acquire("small", "az1", 1, "best-effort", claim_id="k2")
    assert err.value.claim_id == "k2"
    # the server never got the request: the claim surely did not land
    transport.handle_request = real  # type: ignore[method-assign]
    transport.down = True
    with pytest.raises(ServerUnreachable) as gone:
        client.acquire("small", "az1", 1, "best-effort", claim_id="k3")
    assert gone.value.sent is False


def test_http_claims_and_the_idempotency_key_header(filled: WarmCache) -> None:
    web = create_app(filled).test_client()
    body: dict[str, Any] = {"flavor": "small", "az": "az1", "count": 2, "mode": "best-effort"}
    first = web.post("/v1/acquire", json=body, headers={"Idempotency-Key": "hdr-1"})
    assert first.status_code == 200 and first.get_json()["claim_id"] == "hdr-1"
    again = web.post("/v1/acquire", json={**body, "claim_id": "hdr-1"})
    assert again.get_json()["vms"] == first.get_json()["vms"]
    clash = web.post(
        "/v1/acquire", json={**body, "claim_id": "hdr-1"}, headers={"Idempotency-Key": "hdr-2"}
    )
    assert clash.status_code == 400
    other = web.post("/v1/acquire", json={**body, "count": 1, "claim_id": "hdr-1"})
    assert other.status_code == 409 and other.get_json()["error"] == "claim_mismatch"
    got = web.get("/v1/claims/hdr-1").get_json()
    assert set(got) == {"claim_id", "state", "requester", "acquired_at", "vms"}
    assert got["state"] == "acquired" and got["vms"] == first.get_json()["vms"]
    missing = web.get("/v1/claims/never-made")
    assert missing.status_code == 404 and missing.get_json()["error"] == "unknown_claim"
    assert web.get("/v1/claims/bad%20id").status_code == 400
    assert ready(filled) == 4


# --- one batch holding two requests of one id, on every store ------------------------------


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def any_store(request: pytest.FixtureRequest, sqlite_store: SqliteStore) -> Iterator[Any]:
    if request.param == "sqlite":
        yield sqlite_store
        return
    import uuid

    from warmcache.adapters.etcd_store import EtcdStore

    url = request.getfixturevalue("etcd_url")
    store = EtcdStore(url, namespace=f"t-{uuid.uuid4().hex[:8]}/")
    yield store
    store.close()


def test_two_requests_of_one_id_in_one_batch_make_one_claim(any_store: Any) -> None:
    from tests.acquiring import Rig, seed

    seed(any_store, racks=3, per_rack=2)
    rig = Rig(any_store)
    rig.sync()
    twins = [rig.request(2, flavor="small"), rig.request(2, flavor="small")]
    for r in twins:
        r.claim_id, r.named = "twin", True
    other = rig.request(1)
    rig.claimer.claim_batch([twins[0], other, twins[1]])
    a, b = (r.result() for r in twins)
    assert [vm.name for vm in a.vms] == [vm.name for vm in b.vms] and b.replayed
    kvs, _ = any_store.range(KEYS.acquired_dir())
    assert len(kvs) == 3  # two for the twins' one claim, one for the other request


def test_one_sweep_removes_every_expired_record(sqlite_store: Any) -> None:
    """Issue 28, item 8: a sweep removed at most 1,000 records, so 20,000
    expired ones took 20 cycles (and more than ~24,000 named claims a day
    never drained)."""
    from warmcache.claims.claim_log import ClaimLog, ClaimRecord
    from warmcache.layout import Keys
    from warmcache.model import Mode
    from warmcache.ports import Put

    keys = Keys("wc")
    log = ClaimLog(sqlite_store, keys)

    def record(i: int, expires_at: float) -> Put:
        rec = ClaimRecord(
            claim_id=f"c{i}", requester="r", flavor="small", az="az1", count=1,
            mode=Mode.BEST_EFFORT, acquired_at=0.0, expires_at=expires_at, vms=[],
        )  # fmt: skip
        return Put(keys.claim(f"c{i}"), rec.model_dump_json())

    ops = [record(i, 100.0 if i < 2500 else 1e12) for i in range(2600)]
    for start in range(0, len(ops), 500):
        sqlite_store.txn([], ops[start : start + 500])
    assert log.sweep(now=200.0, batch=400) == 2500
    kvs, _ = sqlite_store.range(keys.claims_dir())
    assert len(kvs) == 100  # the unexpired stay


def test_after_its_first_sweep_a_sweep_reads_only_what_expired(
    make_service: Callable[..., WarmCache], clock: ManualClock
) -> None:
    """Issue 28, item 8: every sweep read the whole claims folder. Now the
    claim's transaction writes an expiry index key, and a sweep after the
    first reads only the buckets that ended since the last one."""
    from warmcache.claims.claim_log import BUCKET_S
    from warmcache.layout import Keys

    svc = make_service(claim_retention_s=600, claim_sweep_interval_s=60)
    svc.rules.put("az1", "small", RULE)
    svc.run_cycle()
    keys = Keys("wc")
    ranged: list[str] = []
    store_range = svc.store.range

    def counted(prefix: str) -> Any:
        ranged.append(prefix)
        return store_range(prefix)

    svc.acquire("small", "az1", 1, "best-effort", claim_id="early")
    svc.duty._claims.sweep(clock.now())  # the first: reads it all once
    svc.store.range = counted  # type: ignore[method-assign]
    clock.advance(300)
    svc.acquire("small", "az1", 1, "best-effort", claim_id="late")
    [index] = [kv.key for kv in store_range(keys.claim_expiry_dir())[0] if kv.key.endswith("/late")]
    clock.advance(600 - 300 + BUCKET_S)  # past "early"'s bucket, not past "late"'s
    assert svc.duty._claims.sweep(clock.now()) == 1
    assert keys.claims_dir() not in ranged and keys.claim_expiry_dir() not in ranged
    assert all(p.startswith(keys.claim_expiry_dir()) for p in ranged) and ranged
    with pytest.raises(UnknownClaim):
        svc.claim("early")
    assert svc.claim("late").claim_id == "late" and svc.store.get(index) is not None
    clock.advance(2 * BUCKET_S)
    assert svc.duty._claims.sweep(clock.now()) == 1
    assert store_range(keys.claim_expiry_dir())[0] == []  # the index empties too
    assert store_range(keys.claims_dir())[0] == []


def test_a_sweep_of_an_old_bucket_never_removes_a_newer_claim_of_the_same_id(
    sqlite_store: Any,
) -> None:
    """An id whose record was deleted (its VMs given back after a failed
    resume) may be claimed again, landing in a later expiry bucket: sweeping
    the first bucket must leave the second claim's record, or a repeat of
    it would claim more VMs (handed out twice under one id)."""
    from warmcache.claims.claim_log import BUCKET_S, ClaimLog, ClaimRecord
    from warmcache.layout import Keys
    from warmcache.model import Mode
    from warmcache.ports import Delete, Put

    keys = Keys("wc")
    log = ClaimLog(sqlite_store, keys)
    log.sweep(now=0.0)  # its first, whole sweep: the index from here

    def land(expires_at: float) -> None:  # as the claim's transaction writes it
        rec = ClaimRecord(
            claim_id="reused", requester="r", flavor="small", az="az1", count=1,
            mode=Mode.BEST_EFFORT, acquired_at=0.0, expires_at=expires_at, vms=[],
        )  # fmt: skip
        sqlite_store.txn(
            [],
            [
                Put(keys.claim("reused"), rec.model_dump_json()),
                Put(log.expiry_key("reused", expires_at), "1"),
            ],
        )

    land(expires_at=BUCKET_S)
    sqlite_store.txn([], [Delete(keys.claim("reused"))])  # given back
    land(expires_at=10 * BUCKET_S)  # claimed again
    assert log.sweep(now=3 * BUCKET_S) == 0  # the first bucket is past, not the second
    assert log.get("reused").expires_at == 10 * BUCKET_S
    assert log.sweep(now=12 * BUCKET_S) == 1
    assert sqlite_store.range(keys.claim_expiry_dir())[0] == []
