"""The composition root: the only place that turns config into adapters.

Backends are picked by ``kind`` from the typed tables below; each factory
imports its driver lazily,
so a driver is needed only when its backend is chosen. Unknown kinds are
reported together, each with the valid names, in one ``ConfigError``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warmcache.adapters.stores import STORES
from warmcache.clock import SystemClock
from warmcache.config import (
    AlertsConfig,
    CatalogConfig,
    Config,
    EventsConfig,
    load_config,
)
from warmcache.errors import ConfigError
from warmcache.ports import (
    AlertSink,
    Clock,
    CoordinationStore,
    EventSink,
    FlavorCatalog,
    HostAgent,
)

if TYPE_CHECKING:
    from warmcache.service import WarmCache


def _file_catalog(cfg: CatalogConfig, clock: Clock) -> FlavorCatalog:
    from warmcache.adapters.file_catalog import FileFlavorCatalog

    return FileFlavorCatalog(cfg.path)


def _mongo_catalog(cfg: CatalogConfig, clock: Clock) -> FlavorCatalog:
    from warmcache.adapters.mongo_catalog import MongoFlavorCatalog

    if not cfg.url:
        raise ConfigError(["catalog.url: the MongoDB connection string is required"])
    return MongoFlavorCatalog(cfg.url, **mongo_options(cfg))


def mongo_options(cfg: CatalogConfig) -> dict[str, Any]:
    """pymongo's options for the catalog's credentials and TLS."""
    options: dict[str, Any] = {}
    if cfg.username:
        options["username"] = cfg.username
        options["password"] = cfg.password.get_secret_value()
    if cfg.auth_source:
        options["authSource"] = cfg.auth_source
    if cfg.tls or cfg.ca or cfg.cert_key:
        options["tls"] = True
    if cfg.ca:
        options["tlsCAFile"] = cfg.ca
    if cfg.cert_key:
        options["tlsCertificateKeyFile"] = cfg.cert_key
    return options


def _sqlite_events(cfg: EventsConfig, clock: Clock) -> EventSink:
    from warmcache.adapters.sqlite_events import SqliteEvents

    return SqliteEvents(cfg.path, retention_s=cfg.retention_s, max_rows=cfg.max_rows)


def _elasticsearch_events(cfg: EventsConfig, clock: Clock) -> EventSink:
    from warmcache.adapters.elasticsearch_events import ElasticsearchEvents

    if not cfg.url:
        raise ConfigError(["events.url: the Elasticsearch URL is required"])
    return ElasticsearchEvents(cfg.url, cfg.spool_dir, client_options=elasticsearch_options(cfg))


def elasticsearch_options(cfg: EventsConfig) -> dict[str, Any]:
    """The Elasticsearch client's options for the sink's credentials and TLS."""
    options: dict[str, Any] = {}
    if cfg.ca:
        options["ca_certs"] = cfg.ca
    if cfg.api_key.get_secret_value():
        options["api_key"] = cfg.api_key.get_secret_value()
    elif cfg.username:
        options["basic_auth"] = (cfg.username, cfg.password.get_secret_value())
    return options


def _log_events(cfg: EventsConfig, clock: Clock) -> EventSink:
    from warmcache.adapters.sqlite_events import LogEvents

    return LogEvents()


def _log_alerts(cfg: AlertsConfig, clock: Clock) -> AlertSink:
    from warmcache.adapters.log_alerts import LogAlerts

    return LogAlerts()


def _smtp_alerts(cfg: AlertsConfig, clock: Clock) -> AlertSink:
    from warmcache.adapters.smtp_alerts import SmtpAlerts

    if not cfg.recipients:
        raise ConfigError(["alerts.recipients: smtp alerts need at least one recipient"])
    return SmtpAlerts(
        cfg.smtp_host,
        cfg.smtp_port,
        cfg.sender,
        list(cfg.recipients),
        clock=clock,
        starttls=cfg.starttls,
        tls=cfg.tls,
        ca=cfg.ca,
        username=cfg.username,
        password=cfg.password.get_secret_value(),
        max_per_window=cfg.max_per_window,
        window_s=cfg.window_s,
    )


# kind -> factory of (section config, clock); each factory imports its
# driver itself, so a driver is needed only when its backend is chosen.
CATALOGS: dict[str, Callable[[CatalogConfig, Clock], FlavorCatalog]] = {
    "file": _file_catalog,
    "mongodb": _mongo_catalog,
}
EVENTS: dict[str, Callable[[EventsConfig, Clock], EventSink]] = {
    "sqlite": _sqlite_events,
    "log": _log_events,
    "elasticsearch": _elasticsearch_events,
}
ALERTS: dict[str, Callable[[AlertsConfig, Clock], AlertSink]] = {
    "log": _log_alerts,
    "smtp": _smtp_alerts,
}


def check_kinds(config: Config) -> None:
    problems = [
        f"{section}.kind: unknown {kind!r} (valid: {', '.join(sorted(table))})"
        for section, kind, table in (
            ("store", config.store.kind, STORES),
            ("catalog", config.catalog.kind, CATALOGS),
            ("events", config.events.kind, EVENTS),
            ("alerts", config.alerts.kind, ALERTS),
        )
        if kind not in table
    ]
    if problems:
        raise ConfigError(problems)


def build_store(config: Config, clock: Clock | None = None) -> CoordinationStore:
    check_kinds(config)
    return STORES[config.store.kind](config.store, clock or SystemClock())


def build_catalog(config: Config) -> FlavorCatalog:
    check_kinds(config)
    return CATALOGS[config.catalog.kind](config.catalog, SystemClock())


class AgentConnector:
    """How the service reaches an agent, from the endpoint it advertises
    (one client per endpoint, closed with the service)."""

    def __init__(self, config: Config) -> None:
        from warmcache.adapters.agent_client import AgentTls

        self._timeout_s = config.service.agent_timeout_s
        self._tls = (
            AgentTls(config.agent_tls.cert, config.agent_tls.key, config.agent_tls.ca)
            if config.agent_tls
            else None
        )
        self._clients: dict[str, HostAgent] = {}
        self._lock = threading.Lock()

    def __call__(self, endpoint: str) -> HostAgent:
        from warmcache.adapters.agent_client import AgentClient

        with self._lock:
            if endpoint not in self._clients:
                self._clients[endpoint] = AgentClient(
                    endpoint, timeout_s=self._timeout_s, tls=self._tls
                )
            return self._clients[endpoint]

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def build(config: Config | str | Path, *, clock: Clock | None = None) -> WarmCache:
    """Assemble a ``WarmCache`` from a config (or the path of a TOML file)."""
    from warmcache.service import WarmCache

    if not isinstance(config, Config):
        config = load_config(config)
    check_kinds(config)
    clock = clock or SystemClock()
    store = build_store(config, clock)
    catalog = build_catalog(config)
    events = EVENTS[config.events.kind](config.events, clock)
    agents = AgentConnector(config)
    alerts = ALERTS[config.alerts.kind](config.alerts, clock)

    def close() -> None:
        agents.close()
        store.close()
        catalog.close()
        alerts.close()
        events.close()

    return WarmCache(
        config=config.service,
        store=store,
        catalog=catalog,
        events=events,
        agent_for=agents,
        clock=clock,
        alerts=alerts,
        on_close=close,
        demand=config.demand,
        quotas=config.quotas.limits,
        cost=config.cost,
        schedules=config.schedules,
    )
