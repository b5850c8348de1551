"""Offline checks of ConsulStore's transaction translation (no server here;
the contract suite covers the rest when WARMCACHE_TEST_CONSUL is set)."""

from __future__ import annotations

import base64

import pytest

from warmcache.adapters.consul_store import MAX_TXN_OPS, _CompareFailed, txn_payload
from warmcache.ports import Compare, Delete, KeyValue, Put


def verbs(payload: list[dict]) -> list[tuple[str, str, int | None]]:  # type: ignore[type-arg]
    return [(op["KV"]["Verb"], op["KV"]["Key"], op["KV"].get("Index")) for op in payload]


def test_a_claim_fuses_each_compare_with_its_writes() -> None:
    payload = txn_payload(
        "ns/", [Compare.mod_revision("pool/a", 7)], [Delete("pool/a"), Put("acquired/a", "{}")]
    )
    assert verbs(payload) == [("delete-cas", "ns/pool/a", 7), ("set", "ns/acquired/a", None)]
    assert base64.b64decode(payload[1]["KV"]["Value"]) == b"{}"


def test_fence_and_absent_checks_stay_separate_guards() -> None:
    payload = txn_payload(
        "", [Compare.create_revision("leader", 42), Compare.absent("pool/b")], [Put("pool/b", "x")]
    )
    assert verbs(payload) == [("check-index", "leader", 42), ("cas", "pool/b", 0)]


def test_session_puts_are_lock_acquisitions() -> None:
    payload = txn_payload("", [Compare.absent("leader")], [Put("leader", "n1", session="s1")])
    assert verbs(payload)[-1] == ("lock", "leader", None)
    assert payload[-1]["KV"]["Session"] == "s1"
    assert verbs(payload)[0] == ("check-not-exists", "leader", None)


def test_value_compares_are_checked_here_and_pinned_by_index() -> None:
    current = {"k": KeyValue("k", "v1", 3, 9)}
    payload = txn_payload("", [Compare("k", "value", "v1")], [Put("other", "x")], current)
    assert verbs(payload)[0] == ("check-index", "k", 9)
    with pytest.raises(_CompareFailed):
        txn_payload("", [Compare("k", "value", "v2")], [Put("other", "x")], current)


def test_oversized_transactions_are_refused_with_a_reason() -> None:
    n = MAX_TXN_OPS // 2 + 1
    compares = [Compare.mod_revision(f"pool/{i}", i + 1) for i in range(n)]
    ops = [op for i in range(n) for op in (Delete(f"pool/{i}"), Put(f"acquired/{i}", "{}"))]
    with pytest.raises(ValueError, match="at most 64"):
        txn_payload("", compares, ops)
    txn_payload("", compares[:32], ops[:64])  # 32 VMs fit


class _StubConsul:
    """py-consul's surface that ConsulStore.txn touches, recording reads."""

    def __init__(self, txn_error: Exception | None) -> None:
        self.reads: list[tuple[str, bool]] = []
        self.kv = self
        self.txn = self
        self._error = txn_error

    def get(self, key: str, recurse: bool = False, **_kw: object) -> tuple[int, object]:
        self.reads.append((key, recurse))
        return 4242, None

    def put(self, _payload: object) -> dict[str, object]:
        if self._error is not None:
            raise self._error
        return {"Results": []}


def test_a_failed_or_delete_only_txn_reads_one_key_not_the_whole_cluster() -> None:
    from consul.exceptions import ClientError

    from warmcache.adapters.consul_store import ConsulStore

    # 409: a compare failed (the claim lost a race): a typed failed result,
    # the current state of the compared key, and the index from one key.
    stub = _StubConsul(ClientError("409 Transaction failed"))
    store = ConsulStore(client=stub)
    result = store.txn([Compare.mod_revision("pool/a", 7)], [Delete("pool/a")])
    assert not result.succeeded and result.revision == 4242 and result.current == {"pool/a": None}
    assert all(not recurse for _key, recurse in stub.reads), stub.reads
    # a delete-only transaction: no KV results carry an index
    stub = _StubConsul(None)
    assert ConsulStore(client=stub).txn([], [Delete("x")]).revision == 4242
    assert stub.reads == [("warmcache-index-probe", False)]


class _DownConsul(_StubConsul):
    """Every read fails as ``error``; counts how often it was sent."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.session = self
        self.sent = 0

    def get(self, key: str, recurse: bool = False, **_kw: object) -> tuple[int, object]:
        self.sent += 1
        assert self._error is not None
        raise self._error

    def renew(self, _session_id: str) -> object:
        assert self._error is not None
        raise self._error


def test_driver_errors_become_the_ports_errors_most_specific_first() -> None:
    import consul
    import requests
    from consul.exceptions import ClientError

    from warmcache.adapters.consul_store import ConsulStore
    from warmcache.errors import SessionExpired, StoreError, StoreUnavailable

    def store(error: Exception) -> tuple[ConsulStore, _DownConsul]:
        stub = _DownConsul(error)
        return ConsulStore(client=stub, sleep=lambda _s: None), stub

    # never connected: nothing was sent, so nothing applied; reads retried
    refused, stub = store(requests.ConnectionError("[Errno 111] Connection refused"))
    with pytest.raises(StoreUnavailable):
        refused.get("pool/a")
    assert stub.sent == 3
    # an answer that never came: the outcome is unknown, a plain StoreError
    timed_out, _ = store(requests.ReadTimeout("read timed out"))
    with pytest.raises(StoreError) as err:
        timed_out.range("pool/")
    assert type(err.value) is StoreError and isinstance(err.value.__cause__, requests.Timeout)
    unknown, _ = store(consul.NotFound("no such session"))
    with pytest.raises(SessionExpired):
        unknown.renew_session("s-1")
    with pytest.raises(SessionExpired):
        store(ClientError('500 invalid session "s-1"'))[0].renew_session("s-1")
