"""The composition root: the only place that turns config into adapters.

Backends are picked by ``kind`` from the tables below and imported lazily,
so a driver is needed only when its backend is chosen. Unknown kinds are
reported together, each with the valid names, in one ``ConfigError``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warmcache.clock import SystemClock
from warmcache.config import CatalogConfig, Config, EventsConfig, StoreConfig, load_config
from warmcache.errors import ConfigError
from warmcache.ports import Clock, CoordinationStore, EventSink, FlavorCatalog, HostAgent

# kind -> "module:factory"; factories take (section config, clock).
STORES: dict[str, str] = {
    "sqlite": "warmcache.bootstrap:_sqlite_store",
    "etcd": "warmcache.bootstrap:_etcd_store",
    "consul": "warmcache.bootstrap:_consul_store",
}
CATALOGS: dict[str, str] = {
    "file": "warmcache.bootstrap:_file_catalog",
}
EVENTS: dict[str, str] = {
    "sqlite": "warmcache.bootstrap:_sqlite_events",
    "log": "warmcache.bootstrap:_log_events",
}


def _sqlite_store(cfg: StoreConfig, clock: Clock) -> CoordinationStore:
    from warmcache.adapters.sqlite_store import SqliteStore

    return SqliteStore(cfg.path, clock=clock)


def _etcd_store(cfg: StoreConfig, clock: Clock) -> CoordinationStore:
    from warmcache.adapters.etcd_store import EtcdStore

    return EtcdStore(cfg.url or "http://127.0.0.1:2379")


def _consul_store(cfg: StoreConfig, clock: Clock) -> CoordinationStore:
    import os

    from warmcache.adapters.consul_store import ConsulStore

    # py-consul's own convention: CONSUL_HTTP_ADDR / CONSUL_HTTP_TOKEN.
    url = cfg.url or os.environ.get("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500")
    if "://" not in url:
        url = f"http://{url}"
    return ConsulStore(url, token=cfg.token or os.environ.get("CONSUL_HTTP_TOKEN", ""))


def _file_catalog(cfg: CatalogConfig, clock: Clock) -> FlavorCatalog:
    from warmcache.adapters.file_catalog import FileFlavorCatalog

    return FileFlavorCatalog(cfg.path)


def _sqlite_events(cfg: EventsConfig, clock: Clock) -> EventSink:
    from warmcache.adapters.sqlite_events import SqliteEvents

    return SqliteEvents(cfg.path)


def _log_events(cfg: EventsConfig, clock: Clock) -> EventSink:
    from warmcache.adapters.sqlite_events import LogEvents

    return LogEvents()


def check_kinds(config: Config) -> None:
    problems = [
        f"{section}.kind: unknown {kind!r} (valid: {', '.join(sorted(table))})"
        for section, kind, table in (
            ("store", config.store.kind, STORES),
            ("catalog", config.catalog.kind, CATALOGS),
            ("events", config.events.kind, EVENTS),
        )
        if kind not in table
    ]
    if problems:
        raise ConfigError(problems)


def _factory(table: dict[str, str], kind: str) -> Callable[..., Any]:
    module, _, name = table[kind].partition(":")
    factory: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return factory


def build_store(config: Config, clock: Clock | None = None) -> CoordinationStore:
    check_kinds(config)
    store: CoordinationStore = _factory(STORES, config.store.kind)(
        config.store, clock or SystemClock()
    )
    return store


def build_catalog(config: Config) -> FlavorCatalog:
    check_kinds(config)
    catalog: FlavorCatalog = _factory(CATALOGS, config.catalog.kind)(
        config.catalog, SystemClock()
    )
    return catalog


def agent_connector(config: Config) -> Callable[[str], HostAgent]:
    """How the service reaches an agent, from the endpoint it advertises."""
    from warmcache.adapters.agent_client import AgentClient

    clients: dict[str, HostAgent] = {}

    def agent_for(endpoint: str) -> HostAgent:
        if endpoint not in clients:
            clients[endpoint] = AgentClient(endpoint, timeout_s=config.service.agent_timeout_s)
        return clients[endpoint]

    return agent_for


def build(config: Config | str | Path, *, clock: Clock | None = None) -> Any:
    """Assemble a ``WarmCache`` from a config (or the path of a TOML file)."""
    from warmcache.service import WarmCache

    if not isinstance(config, Config):
        config = load_config(config)
    check_kinds(config)
    clock = clock or SystemClock()
    store = build_store(config, clock)
    catalog = build_catalog(config)
    events: EventSink = _factory(EVENTS, config.events.kind)(config.events, clock)

    def close() -> None:
        store.close()
        closer = getattr(events, "close", None)
        if closer:
            closer()

    return WarmCache(
        config=config.service, store=store, catalog=catalog, events=events,
        agent_for=agent_connector(config), clock=clock, on_close=close,
    )
