"""Service configuration: one TOML file plus ``WARMCACHE_`` environment overrides.

Parsed once, in the composition root, into frozen pydantic models whose field
names carry their unit. An override names a section and a key separated by a
double underscore, e.g. ``WARMCACHE_STORE__KIND=etcd`` or
``WARMCACHE_SERVICE__LISTEN_PORT=9090``; its value is read as JSON when it
parses as JSON (numbers, booleans, lists) and as a plain string otherwise,
like Flask's ``from_prefixed_env``. Relative paths are relative to the file.
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from warmcache.errors import ConfigError

ENV_PREFIX = "WARMCACHE_"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServiceConfig(_Section):
    node: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="Name of this instance in the leader key and service registry.",
    )
    prefix: str = Field(default="warmcache", description="Key prefix in the store.")
    listen_host: str = Field(default="127.0.0.1", description="HTTP API address.")
    listen_port: int = Field(default=8080, ge=0, le=65535, description="HTTP API port.")
    cycle_interval_s: float = Field(
        default=900.0, gt=0, description="Seconds between build cycles (DESIGN §5)."
    )
    retry_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="After a cycle that left a pool short (failed builds, a store or agent "
        "outage, lost leadership), the next cycle comes after this many seconds instead of "
        "cycle_interval_s.",
    )
    leader_ttl_s: float = Field(
        default=10.0,
        ge=2.0,
        le=86400.0,
        description="TTL of the leader session; failover takes about this long. "
        "Renewed every leader_ttl_s / 3.",
    )
    service_ttl_s: float = Field(
        default=3600.0, gt=0, description="TTL of this instance's service registration."
    )
    low_water_ratio: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="An acquisition that leaves fewer acquirable VMs than this share of "
        "the pool's total_instances triggers an early build cycle (0 disables).",
    )
    build_concurrency: int = Field(
        default=8, ge=1, le=256, description="Parallel agent calls per AZ in a cycle."
    )
    build_retries: int = Field(
        default=3, ge=1, le=20, description="Attempts per agent call on transient errors."
    )
    agent_timeout_s: float = Field(default=60.0, gt=0, description="Per agent request.")
    max_acquire_count: int = Field(
        default=1000, ge=1, le=100_000, description="Largest count one acquire may ask."
    )
    acquire_attempts: int = Field(
        default=16, ge=1, le=1000, description="Claim attempts before claim_contention."
    )
    request_deadline_s: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="How long an API request or an acquisition may wait for the store: "
        "past it, 503 store_unavailable (or claim_outcome_unknown when a claim may have "
        "landed), within the deadline plus half a second.",
    )
    readiness_timeout_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="GET /readyz: how long each dependency (store, catalog, event sink) "
        "may take to answer.",
    )
    batch_claims: bool = Field(
        default=True,
        description="Group-commit concurrent acquisitions of this instance: one store "
        "transaction per batch, each claim still all-or-nothing on its own (false: one "
        "transaction per acquisition).",
    )
    max_batch_vms: int = Field(
        default=512,
        ge=1,
        le=100_000,
        description="At most this many VMs in one batch of claims (keeps one store request "
        "within etcd's --max-request-bytes; a larger single acquisition still goes alone).",
    )
    shares_refresh_s: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between reads of the service registry that deal each pool "
        "into disjoint shares over the live instances (fewer claim conflicts).",
    )
    http_threads: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="warmcache serve: worker threads of the HTTP server (requests beyond "
        "them wait in the accept backlog).",
    )
    http_max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        le=64 * 1_048_576,
        description="warmcache serve: largest request body accepted (larger: 413).",
    )
    http_idle_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="warmcache serve: a connection that sends nothing for this long (idle "
        "keep-alive, or a request half sent) is closed.",
    )
    http_queue: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="warmcache serve: requests that may wait for a worker thread; beyond "
        "them a request gets 503 overloaded at once.",
    )
    http_connection_limit: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="warmcache serve: open connections at most; beyond them new ones wait "
        "in the listen backlog.",
    )
    run_health: bool = Field(
        default=True, description="Take part in health polling (one poller at a time)."
    )
    health_interval_s: float = Field(
        default=30.0, gt=0, description="Seconds between health polls of the pooled VMs."
    )
    health_failures_to_purge: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Consecutive failed polls that purge a VM; after the first it is "
        "already never handed out.",
    )
    claim_retention_s: float = Field(
        default=86_400.0,
        gt=0,
        le=30 * 86_400,
        description="How long the record of a named claim (claim_id / Idempotency-Key) is "
        "kept at least: a repeat within it returns the same VMs (a day by default; one "
        "record per named claim in the store).",
    )
    claim_sweep_interval_s: float = Field(
        default=3600.0,
        gt=0,
        description="The leader deletes claim records past claim_retention_s at most this "
        "often (each sweep reads every claim record).",
    )
    requests_ttl_s: float = Field(
        default=3600.0, gt=0, description="How long a maker-checker request waits for its approval."
    )
    run_builds: bool = Field(
        default=True, description="Take part in leader election and build cycles."
    )


class StoreConfig(_Section):
    kind: str = Field(default="sqlite", description="Backend: sqlite, etcd or consul.")
    path: str = Field(default="warmcache-store.db", description="sqlite: database file.")
    url: str = Field(
        default="",
        description="etcd: member URLs, comma-separated; consul: "
        "agent URL (default CONSUL_HTTP_ADDR)",
    )
    token: str = Field(default="", description="consul: ACL token (default CONSUL_HTTP_TOKEN)")
    max_txn_ops: int = Field(
        default=128,
        ge=8,
        le=1_000_000,
        description="etcd: the servers' --max-txn-ops (etcd's default 128). One acquisition "
        "is one transaction, so it claims at most max_txn_ops - 2 VMs; raise both together "
        "for larger ones.",
    )


class CatalogConfig(_Section):
    kind: str = Field(default="file", description="Backend: file or mongodb.")
    path: str = Field(default="flavors.toml", description="file: TOML flavor catalog.")
    url: str = Field(
        default="",
        description="mongodb: connection string (with credentials, "
        "e.g. mongodb://user:pass@host/warmcache?authSource=admin)",
    )


class EventsConfig(_Section):
    kind: str = Field(default="sqlite", description="Backend: sqlite, log or elasticsearch.")
    path: str = Field(default="warmcache-events.db", description="sqlite: database file.")
    url: str = Field(default="", description="elasticsearch: http://host:9200")
    spool_dir: str = Field(
        default="warmcache-events-spool",
        description="elasticsearch: where events wait while it is down.",
    )


class AgentTlsConfig(_Section):
    cert: str = Field(description="Client certificate (PEM) presented to agent proxies.")
    key: str = Field(description="Its private key (PEM).")
    ca: str = Field(description="CA that signed the proxies' server certificates.")


class TokenConfig(_Section):
    name: str = Field(
        min_length=1,
        max_length=100,
        description="Identity: the requester of its acquisitions, and who "
        "asked or approved in maker-checker requests.",
    )
    role: str = Field(
        default="user",
        pattern="^(user|admin)$",
        description="user: read and acquire; admin: also change rules and "
        "ask for or approve destructive operations.",
    )
    token_sha256: str = Field(
        default="",
        pattern="^([0-9a-f]{64})?$",
        description="SHA-256 (hex) of the bearer token (preferred).",
    )
    token: str = Field(default="", description="The bearer token itself (tests, dev).")


class AuthConfig(_Section):
    tokens: tuple[TokenConfig, ...] = Field(
        default=(),
        description="Bearer tokens; none configured means no authentication "
        "(the embedded quickstart only).",
    )


class AlertsConfig(_Section):
    kind: str = Field(default="log", description="Alerts: log or smtp.")
    smtp_host: str = Field(default="localhost", description="smtp: server host")
    smtp_port: int = Field(default=25, ge=1, le=65535, description="smtp: server port")
    starttls: bool = Field(default=False, description="smtp: upgrade with STARTTLS")
    username: str = Field(default="", description="smtp: login (empty: none)")
    password: str = Field(default="", description="smtp: password")
    sender: str = Field(default="warmcache@localhost", description="smtp: From address")
    recipients: tuple[str, ...] = Field(default=(), description="smtp: To addresses")
    max_per_window: int = Field(default=10, ge=1, description="Mails per window at most.")
    window_s: float = Field(default=600.0, gt=0, description="Rate-limit window, seconds.")


class Config(_Section):
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    agent_tls: AgentTlsConfig | None = Field(
        default=None, description="Needed when agents advertise https:// (a proxy)."
    )


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in ("service", "store", "catalog", "events", "alerts"):
            continue
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(section, {})[key] = value
    return out


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for section in ("store", "catalog", "events"):
        sect = data.get(section)
        for field in ("path", "spool_dir"):
            if isinstance(sect, dict) and isinstance(sect.get(field), str):
                sect[field] = str((base / sect[field]).resolve())
    tls = data.get("agent_tls")
    if isinstance(tls, dict):
        for field in ("cert", "key", "ca"):
            if isinstance(tls.get(field), str):
                tls[field] = str((base / tls[field]).resolve())


def parse_config(
    data: Mapping[str, Any], *, base: Path | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate a config mapping (file contents) with environment overrides."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for section, values in _env_overrides(os.environ if environ is None else environ).items():
        merged.setdefault(section, {}).update(values)
    _resolve_paths(merged, base or Path.cwd())
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        ) from exc


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError([f"{path}: no such file"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc
    return parse_config(data, base=path.parent, environ=environ)
