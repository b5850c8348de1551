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
    payload = txn_payload("ns/", [Compare.mod_revision("pool/a", 7)],
                          [Delete("pool/a"), Put("acquired/a", "{}")])
    assert verbs(payload) == [("delete-cas", "ns/pool/a", 7), ("set", "ns/acquired/a", None)]
    assert base64.b64decode(payload[1]["KV"]["Value"]) == b"{}"


def test_fence_and_absent_checks_stay_separate_guards() -> None:
    payload = txn_payload("", [Compare.create_revision("leader", 42), Compare.absent("pool/b")],
                          [Put("pool/b", "x")])
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
