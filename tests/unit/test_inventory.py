"""Agent heartbeats into the store and the service's host view (§7, §10)."""

from __future__ import annotations

from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import ManualClock
from warmcache.inventory import HostView
from warmcache.layout import Keys
from warmcache.model import HostFacts
from warmcache_agent.inventory import InventoryPublisher

KEYS = Keys("wc")


def facts(hv: str = "h1", free: int = 8) -> HostFacts:
    return HostFacts(
        hypervisor=hv,
        rack="r1",
        az="az1",
        vcpus_total=8,
        vcpus_free=free,
        memory_mib_total=1024,
        memory_mib_free=1024,
        disk_gib_total=10,
        disk_gib_free=10,
        endpoint=f"unix:/run/{hv}.sock",
    )


def test_a_dead_agent_leaves_the_view_within_one_ttl(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    current = {"f": facts()}
    publisher = InventoryPublisher(sqlite_store, "wc", lambda: current["f"], ttl_s=5, now=clock.now)
    view = HostView(sqlite_store, KEYS.hosts_dir())
    publisher.beat()
    view.catch_up()
    assert [h.hypervisor for h in view.hosts()] == ["h1"]
    # what GET /v1/hosts shows of its heartbeat: when, and within what TTL
    published = view.get("h1")
    assert published is not None
    assert (published.published_at, published.ttl_s) == (clock.now(), 5)
    for _ in range(3):  # heartbeats keep it alive past several TTLs
        clock.advance(3)
        publisher.beat()
    view.catch_up()
    assert view.get("h1") is not None
    clock.advance(5.1)  # the agent stopped beating
    view.catch_up()
    assert view.hosts() == []
    publisher.beat()  # it comes back: a new session, published again
    view.catch_up()
    assert view.get("h1") is not None


def test_changed_facts_are_published_at_once(sqlite_store: SqliteStore) -> None:
    current = {"f": facts()}
    publisher = InventoryPublisher(sqlite_store, "wc", lambda: current["f"], ttl_s=5)
    view = HostView(sqlite_store, KEYS.hosts_dir())
    publisher.beat()
    current["f"] = facts(free=2)
    publisher.changed()
    publisher.beat()
    view.catch_up()
    assert view.get("h1").vcpus_free == 2  # type: ignore[union-attr]
    publisher.withdraw()
    view.catch_up()
    assert view.hosts() == []


def test_the_view_follows_changes_and_survives_compaction(tmp_path: object) -> None:
    from pathlib import Path

    store = SqliteStore(Path(str(tmp_path)) / "s.db", keep_changes=10)
    view = HostView(store, KEYS.hosts_dir())
    view.catch_up()
    for i in range(1200):  # far past what the change feed keeps
        store.put(KEYS.host("az1", "h1"), facts(free=i % 8).model_dump_json())
    store.put(KEYS.host("az1", "h2"), facts("h2").model_dump_json())
    store.put(KEYS.host("az1", "bad"), "{not json")
    view.catch_up()  # compacted: re-reads instead of missing changes
    assert [h.hypervisor for h in view.hosts()] == ["h1", "h2"]
    store.delete(KEYS.host("az1", "h2"))
    view.catch_up()
    assert [h.hypervisor for h in view.hosts()] == ["h1"]
    store.close()


def test_a_restarting_agent_hands_its_session_to_its_next_self(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    """An agent restarting into a new build: the host's key is never gone
    from the view, and the new process publishes its new facts under the
    old session; a session that expired during the restart is replaced."""
    view = HostView(sqlite_store, KEYS.hosts_dir())
    old = InventoryPublisher(sqlite_store, "wc", lambda: facts(), ttl_s=5)
    old.beat()
    session = old.handover()
    assert session is not None
    view.catch_up()
    assert view.get("h1") is not None  # not withdrawn
    published: list[int] = []
    new = InventoryPublisher(sqlite_store, "wc", lambda: facts(free=3), ttl_s=5)
    new.on_published = lambda: published.append(1)
    new.adopt(session)
    new.beat()
    assert published == [1]
    clock.advance(3)
    new.beat()  # renews the adopted session
    clock.advance(3)  # past the first TTL: the adopted session is still alive
    view.catch_up()
    assert view.get("h1").vcpus_free == 3  # type: ignore[union-attr]
    late = InventoryPublisher(sqlite_store, "wc", lambda: facts(free=1), ttl_s=5)
    late.adopt(new.handover() or "")
    clock.advance(6)  # the handed-over session expired before it was adopted
    late.beat()
    view.catch_up()
    assert view.get("h1").vcpus_free == 1  # type: ignore[union-attr]
