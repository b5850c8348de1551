"""The key layout lives in ``warmcache/layout.py`` alone: every other module
builds its keys with ``Keys`` and reads records through its readers."""

from __future__ import annotations

import re
from pathlib import Path

from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.layout import HostRecords, Keys, PoolRecords, RuleRecords
from warmcache.model import BuildRule, HostFacts, InstanceState, PoolInstance

ROOT = Path(__file__).resolve().parents[2]
# A key spelled by hand: a prefix variable followed by a path, or the
# default prefix written out.
HAND_BUILT = re.compile(r'f"\{[^}]*prefix[^}]*\}/|"warmcache/\w')


def test_no_module_outside_the_layout_spells_a_key() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for package in ("warmcache", "agent", "bench")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name != "layout.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if HAND_BUILT.search(line)
    ]
    assert offenders == []


def test_key_layout() -> None:
    keys = Keys("wc/")
    assert keys.pool("az1", "vm") == "wc/pool/az1/vm"
    assert keys.rule("az1", "small") == "wc/rules/az1/small"
    assert keys.host("az1", "h1") == "wc/hosts/az1/h1"
    assert keys.host("az1", "h1").startswith(keys.hosts_dir())
    assert keys.findings("az1", "h1").startswith(keys.findings_dir())
    assert keys.request("abc").startswith(keys.requests_dir())
    assert keys.acquired("az1", "vm").startswith(keys.acquired_dir("az1"))
    assert Keys.tail(keys.rule("az1", "small"), 2) == ["az1", "small"]
    assert Keys.name(keys.drain("h7")) == "h7"


def _vm(name: str, hv: str, state: InstanceState = InstanceState.READY) -> PoolInstance:
    return PoolInstance(
        name=name, az="az1", flavor="small", hypervisor=hv, rack="r1", state=state, created_at=1.0
    )


def test_pool_records_read_what_was_written_with_revisions(sqlite_store: SqliteStore) -> None:
    keys = Keys("wc")
    records = PoolRecords(sqlite_store, keys)
    sqlite_store.put(keys.pool("az1", "a"), _vm("a", "h1").model_dump_json())
    sqlite_store.put(keys.pool("az1", "b"), _vm("b", "h2").model_dump_json())
    sqlite_store.put(
        keys.acquired("az1", "c"), _vm("c", "h1", InstanceState.ACQUIRED).model_dump_json()
    )
    items, revision = records.read("az1")
    assert [i.record.name for i in items] == ["a", "b"]
    assert all(0 < i.mod_revision <= revision for i in items)
    assert records.get("az1", "a") == items[0]
    assert records.get("az1", "c") is None and records.get_acquired("az1", "c") is not None
    assert records.by_az() == {"az1": [items[0].record, items[1].record]}
    assert records.on_host("az1", "h1") == {"a": "ready", "c": "acquired"}


def test_rule_and_host_records(sqlite_store: SqliteStore) -> None:
    keys = Keys("wc")
    rule = BuildRule(max_instance_per_cycle=1, total_instances=2)
    sqlite_store.put(keys.rule("az1", "small"), rule.model_dump_json())
    sqlite_store.put(keys.rule("az2", "large"), rule.model_dump_json())
    rules = RuleRecords(sqlite_store, keys)
    assert rules.get("az1", "small") == rule and rules.get("az1", "large") is None
    assert rules.by_az() == {"az1": {"small": rule}, "az2": {"large": rule}}
    facts = HostFacts(
        hypervisor="h1",
        rack="r1",
        az="az1",
        vcpus_total=8,
        vcpus_free=8,
        memory_mib_total=8192,
        memory_mib_free=8192,
        disk_gib_total=100,
        disk_gib_free=100,
    )
    sqlite_store.put(keys.host("az1", "h1"), facts.model_dump_json())
    sqlite_store.put(keys.drain("h1"), "{}")
    hosts = HostRecords(sqlite_store, keys)
    assert hosts.facts() == [facts] and hosts.drained() == {"h1"}
