"""``warmcache config check``: every configured backend tried the way the
service will use it (its adapter, its TLS and credentials), one line each:
reachable and authenticated, or why not. Nothing is written: the store is
read, the catalog listed, Elasticsearch asked who it is, the SMTP server
greeted and signed in to (no mail is sent)."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

from warmcache import deadline
from warmcache.adapters.stores import STORES
from warmcache.bootstrap import CATALOGS, EVENTS, elasticsearch_options
from warmcache.clock import SystemClock
from warmcache.config import AgentTlsConfig, AlertsConfig, Config, EventsConfig, StoreConfig
from warmcache.layout import Keys


@dataclass(frozen=True)
class Check:
    backend: str  # "store etcd https://10.0.0.5:2379"
    ok: bool
    detail: str


def check_config(config: Config, timeout_s: float = 5.0) -> list[Check]:
    """One check per backend of ``config``, each bounded by ``timeout_s``."""
    checks = [
        _run(
            f"store {config.store.kind} {_where(config.store.url or config.store.path)}",
            lambda: _store(config, timeout_s),
        ),
        _run(
            f"catalog {config.catalog.kind} {_where(config.catalog.url or config.catalog.path)}",
            lambda: _catalog(config),
        ),
        _run(
            f"events {config.events.kind} {_where(config.events.url or config.events.path)}",
            lambda: _events(config.events, timeout_s),
        ),
        _run(f"alerts {config.alerts.kind}", lambda: _alerts(config.alerts, timeout_s)),
    ]
    tls = config.agent_tls
    if tls is not None:
        checks.append(_run("agent_tls", lambda: _agent_tls(tls)))
    return checks


def _run(backend: str, probe: Callable[[], str]) -> Check:
    try:
        return Check(backend.strip(), True, probe())
    except Exception as exc:  # every failure is reported, in words
        return Check(backend.strip(), False, _why(exc))


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _where(location: str) -> str:
    """A location without the credentials a URL may carry."""
    parsed = urlparse(location)
    if parsed.password is not None or parsed.username is not None:
        return parsed._replace(netloc=parsed.hostname or "").geturl()
    return location


def _security(cfg: StoreConfig) -> str:
    parts = []
    if cfg.url.startswith("https://"):
        parts.append("TLS" + (" with a client certificate" if cfg.cert else ""))
    if cfg.kind == "etcd" and cfg.username:
        parts.append(f"signed in as {cfg.username!r}")
    if cfg.kind == "consul" and cfg.token.get_secret_value():
        parts.append("with an ACL token")
    return ", ".join(parts) or "no TLS, no authentication"


def _store(config: Config, timeout_s: float) -> str:
    if config.store.kind not in STORES:
        raise ValueError(f"unknown kind (valid: {', '.join(sorted(STORES))})")
    store = STORES[config.store.kind](config.store, SystemClock())
    try:
        with deadline.within(timeout_s):
            store.get(Keys(config.service.prefix).leader())
    finally:
        store.close()
    return f"reachable, {_security(config.store)}"


def _catalog(config: Config) -> str:
    if config.catalog.kind not in CATALOGS:
        raise ValueError(f"unknown kind (valid: {', '.join(sorted(CATALOGS))})")
    catalog = CATALOGS[config.catalog.kind](config.catalog, SystemClock())
    try:
        flavors = catalog.list()
    finally:
        catalog.close()
    signed_in = f", signed in as {config.catalog.username!r}" if config.catalog.username else ""
    return f"reachable{signed_in}, {len(flavors)} flavor(s)"


def _events(cfg: EventsConfig, timeout_s: float) -> str:
    if cfg.kind not in EVENTS:
        raise ValueError(f"unknown kind (valid: {', '.join(sorted(EVENTS))})")
    if cfg.kind == "elasticsearch":
        # The sink never raises (it spools): ask the cluster itself.
        from elasticsearch import Elasticsearch

        client = Elasticsearch(cfg.url, request_timeout=timeout_s, **elasticsearch_options(cfg))
        try:
            info = client.info()
        finally:
            client.close()
        how = (
            "API key"
            if cfg.api_key.get_secret_value()
            else (f"user {cfg.username!r}" if cfg.username else "no credentials")
        )
        return f"reachable, authenticated ({how}), version {info['version']['number']}"
    sink = EVENTS[cfg.kind](cfg, SystemClock())
    try:
        sink.recent(1)
    finally:
        sink.close()
    return "writable" if cfg.kind == "sqlite" else "logs only: nothing to reach"


def _alerts(cfg: AlertsConfig, timeout_s: float) -> str:
    if cfg.kind == "log":
        return "logs only: nothing to reach"
    if cfg.kind != "smtp":
        raise ValueError("unknown kind (valid: log, smtp)")
    context = ssl.create_default_context(cafile=cfg.ca or None)
    smtp: smtplib.SMTP
    if cfg.tls:
        smtp = smtplib.SMTP_SSL(cfg.smtp_host, cfg.smtp_port, timeout=timeout_s, context=context)
    else:
        smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=timeout_s)
    with smtp:
        smtp.ehlo()
        if cfg.starttls:
            smtp.starttls(context=context)
            smtp.ehlo()
        if cfg.username:
            smtp.login(cfg.username, cfg.password.get_secret_value())
    tls = "SMTPS" if cfg.tls else "STARTTLS" if cfg.starttls else "no TLS"
    signed_in = f"signed in as {cfg.username!r}" if cfg.username else "no login"
    return f"reachable, {tls}, {signed_in}"


def _agent_tls(cfg: AgentTlsConfig) -> str:
    context = ssl.create_default_context(cafile=cfg.ca)
    context.load_cert_chain(cfg.cert, cfg.key)
    return "client certificate, key and CA load"
