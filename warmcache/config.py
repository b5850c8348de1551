"""Service configuration: one TOML file, the environment, and secret files.

Parsed once, in the composition root, into frozen pydantic models whose field
names carry their unit. Every option of every section can be set from the
environment as ``WARMCACHE_<SECTION>__<OPTION>`` (pydantic-settings), with the
type of the file's option: ``WARMCACHE_STORE__KIND=etcd``,
``WARMCACHE_SERVICE__LISTEN_PORT=9090``, ``WARMCACHE_ALERTS__RECIPIENTS='["ops@x"]'``
(lists and tables as JSON; a string option takes its value as it is, so
``WARMCACHE_ALERTS__PASSWORD=123456`` is the password "123456"). The
environment wins over the file.

Secrets (passwords, tokens, API keys) are ``SecretStr``: never in a log, a
``repr`` or an error. Each can also come from a file: its ``<option>_file``
option (``password_file = "/run/secrets/smtp"``), or a file named
``<section>__<option>`` in the secrets directory (``WARMCACHE_SECRETS_DIR``,
else systemd's ``$CREDENTIALS_DIRECTORY`` from ``LoadCredential=``). Relative
paths are relative to the config file.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from warmcache.errors import ConfigError
from warmcache.schedules import Schedule

ENV_PREFIX = "WARMCACHE_"
SECRETS_DIR_ENV = "WARMCACHE_SECRETS_DIR"
Secret = SecretStr
NO_SECRET = SecretStr("")
# Options holding a path, resolved against the config file's directory.
PATH_OPTIONS = frozenset({"path", "spool_dir", "ca", "cert", "key", "cert_key"})


def _read_secret(option: str, path: str) -> str:
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"{option}: cannot read {path}: {exc.strerror}") from None


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """``<secret>_file``: the secret is that file's contents (one trailing
        newline dropped); giving both is an error."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for option in cls.model_fields:
            if option.endswith("_file") and out.get(option):
                secret = option.removesuffix("_file")
                given = out.get(secret)
                if isinstance(given, SecretStr):
                    given = given.get_secret_value()
                if given and not isinstance(given, _FromSecretsDir):
                    raise ValueError(f"{secret} and {option}: give one of them")
                out[secret] = _read_secret(option, out[option])
        return out


class ServiceConfig(_Section):
    node: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="Name of this instance in the leader key and service registry.",
        json_schema_extra={"default_shown": "hostname-pid"},
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
        description="warmcache serve: open connections at most; beyond, the connection "
        "that has waited longest on a request it has not finished sending (else the "
        "longest idle one) is closed to make room.",
    )
    http_connections_per_client: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="warmcache serve: open connections from one client address at most; "
        "beyond, that address's longest-waiting (else longest idle) connection is closed.",
    )
    http_read_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="warmcache serve: a request must arrive whole (headers and body) within "
        "this long of its first byte, however steadily it trickles; else its connection "
        "is closed.",
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
    default_lease_s: float | None = Field(
        default=None,
        gt=0,
        le=366 * 86_400,
        description="The lease of an acquisition that asks for none, in a pool whose rule sets "
        "none (rule lease_s); none: VMs are held until released.",
    )
    lease_grace_s: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description="A VM whose lease ran out is reclaimed (released, per its rule's "
        "on_release) by the first cycle after expires_at plus this.",
    )
    release_interval_s: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="How often each instance's release worker looks for VMs given back "
        "(it is also woken at once by a release on its own instance).",
    )
    release_retry_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="A release whose agent could not be reached is tried again after this, "
        "doubling per try (at most 10 minutes); its capacity stays booked meanwhile.",
    )
    release_stuck_after_s: float = Field(
        default=600.0,
        gt=0,
        le=30 * 86_400,
        description="A VM still releasing this long after it was given back is reported "
        "(vm.release_stuck event and an alert), once.",
    )
    history_sample_s: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="How often each instance samples every pool's level for the dashboard's "
        "charts (kept in memory for the last 6 hours' worth of samples, at most 360).",
    )
    shrink_after_s: float = Field(
        default=1800.0,
        ge=0,
        le=30 * 86_400,
        description="A pool holding more VMs than its target (total_instances lowered, a "
        "lower demand target, a host back from an outage) retires the surplus, stale and "
        "oldest first, at most replace_per_cycle per cycle, once the surplus has lasted "
        "this long: a target that dips for one cycle retires nothing.",
    )
    address_quarantine_s: float = Field(
        default=600.0,
        ge=0,
        le=30 * 86_400,
        description="A purged or failed VM's address is handed out again only this long "
        "after its VM's record went (ARP caches, DNS records and firewall rules forget it).",
    )
    agent_update_parallel: int = Field(
        default=2,
        ge=0,
        le=1000,
        description="Agents updating to the desired build at once (never two in one rack; "
        "0 stops rollouts).",
    )
    agent_update_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="An agent that has not reported the desired build this long after its "
        "update slot was granted loses the slot and is not tried again for that build.",
    )
    image_prefetch_parallel: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="Hypervisors fetching an image at once before a cycle builds on them "
        "(a pool moved to a new image, a host's first VM of an image): bounds the load on "
        "the image server however many VMs roll over.",
    )
    run_builds: bool = Field(
        default=True, description="Take part in leader election and build cycles."
    )


class StoreConnection(_Section):
    """How to reach the coordination store: the service's ``[store]`` and the
    agent's ``[inventory]`` share these options."""

    kind: str = Field(default="sqlite", description="Backend: sqlite, etcd or consul.")
    path: str = Field(default="warmcache-store.db", description="sqlite: database file.")
    url: str = Field(
        default="",
        description="etcd: member URLs, comma-separated (https:// for TLS); consul: "
        "agent URL (default CONSUL_HTTP_ADDR)",
    )
    token: Secret = Field(
        default=NO_SECRET, description="consul: ACL token (default CONSUL_HTTP_TOKEN)"
    )
    token_file: str = Field(default="", description="consul: read the ACL token from this file")
    username: str = Field(default="", description="etcd: user (etcd's authentication)")
    password: Secret = Field(default=NO_SECRET, description="etcd: the user's password")
    password_file: str = Field(default="", description="etcd: read the password from this file")
    ca: str = Field(default="", description="etcd, consul: CA bundle (PEM) to verify the server")
    cert: str = Field(default="", description="etcd, consul: client certificate (PEM)")
    key: str = Field(default="", description="etcd, consul: the client certificate's key (PEM)")

    @model_validator(mode="after")
    def _cert_with_key(self) -> StoreConnection:
        if bool(self.cert) != bool(self.key):
            raise ValueError("cert and key: give both or neither")
        return self


class StoreConfig(StoreConnection):
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
        description="mongodb: connection string without credentials, e.g. "
        "mongodb://host1,host2/warmcache?replicaSet=rs0 (the database is the path's)",
    )
    username: str = Field(default="", description="mongodb: user")
    password: Secret = Field(default=NO_SECRET, description="mongodb: the user's password")
    password_file: str = Field(default="", description="mongodb: read the password from this file")
    auth_source: str = Field(default="", description="mongodb: authSource (default: the database)")
    tls: bool = Field(default=False, description="mongodb: connect over TLS")
    ca: str = Field(default="", description="mongodb: CA bundle (PEM); implies tls")
    cert_key: str = Field(
        default="",
        description="mongodb: client certificate and key in one PEM (tlsCertificateKeyFile); "
        "implies tls",
    )


class EventsConfig(_Section):
    kind: str = Field(default="sqlite", description="Backend: sqlite, log or elasticsearch.")
    path: str = Field(default="warmcache-events.db", description="sqlite: database file.")
    retention_s: float = Field(
        default=7 * 86_400.0,
        ge=60,
        description="sqlite: events older than this are deleted as new ones are written.",
    )
    max_rows: int = Field(
        default=1_000_000,
        ge=1000,
        description="sqlite: at most this many events are kept (the oldest go first).",
    )
    url: str = Field(default="", description="elasticsearch: http(s)://host:9200")
    spool_dir: str = Field(
        default="warmcache-events-spool",
        description="elasticsearch: where events wait while it is down.",
    )
    ca: str = Field(default="", description="elasticsearch: CA bundle (PEM) to verify it")
    api_key: Secret = Field(
        default=NO_SECRET, description="elasticsearch: API key (the encoded id:key form)"
    )
    api_key_file: str = Field(default="", description="elasticsearch: read the API key from a file")
    username: str = Field(default="", description="elasticsearch: basic-auth user")
    password: Secret = Field(default=NO_SECRET, description="elasticsearch: its password")
    password_file: str = Field(
        default="", description="elasticsearch: read the password from a file"
    )

    @model_validator(mode="after")
    def _one_credential(self) -> EventsConfig:
        if self.api_key.get_secret_value() and self.username:
            raise ValueError("api_key and username: give one way to authenticate")
        return self


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
    token: Secret = Field(default=NO_SECRET, description="The bearer token itself (tests, dev).")
    token_file: str = Field(default="", description="Read the bearer token from this file.")


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
    tls: bool = Field(default=False, description="smtp: TLS from the first byte (SMTPS, 465)")
    ca: str = Field(default="", description="smtp: CA bundle (PEM) to verify the server's TLS")
    username: str = Field(default="", description="smtp: login (empty: none)")
    password: Secret = Field(default=NO_SECRET, description="smtp: password")
    password_file: str = Field(default="", description="smtp: read the password from this file")
    sender: str = Field(default="warmcache@localhost", description="smtp: From address")
    recipients: tuple[str, ...] = Field(default=(), description="smtp: To addresses")
    max_per_window: int = Field(default=10, ge=1, description="Mails per window at most.")
    window_s: float = Field(default=600.0, gt=0, description="Rate-limit window, seconds.")

    @model_validator(mode="after")
    def _one_tls_mode(self) -> AlertsConfig:
        if self.tls and self.starttls:
            raise ValueError("tls and starttls: SMTPS or STARTTLS, not both")
        return self


class DemandConfig(_Section):
    """Demand-driven sizing (rules with ``sizing = "demand"``; warmcache.demand)."""

    bin_s: float = Field(
        default=60.0,
        ge=1.0,
        le=3600.0,
        description="Width of a demand bin in seconds (must divide an hour): the forecast "
        "measures demand over the build horizon in these steps.",
    )
    keep_h: int = Field(
        default=48,
        ge=1,
        le=24 * 28,
        description="Hours of demand history kept per pool (the leader deletes older "
        "chunks); a day or more lets the forecast follow the time of day.",
    )
    lookback_s: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86_400,
        description="The recent demand a forecast samples (beside the same time of day on "
        "earlier days once keep_h covers them), seconds.",
    )
    flush_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="How often an instance writes what it was asked for to the store "
        "(one key per pool and hour); a crash loses at most this much demand history.",
    )
    refresh_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="The leader re-reads an AZ's demand history at most this often (every "
        "cycle re-splits the budget over what pools hold now).",
    )
    build_s: float = Field(
        default=120.0,
        gt=0,
        le=86_400,
        description="Time to build a VM, seconds, until a pool has VMs whose build was "
        "measured (the horizon is the build time plus service.cycle_interval_s).",
    )

    @model_validator(mode="after")
    def _bins_fill_an_hour(self) -> DemandConfig:
        if (3600.0 / self.bin_s) != int(3600.0 / self.bin_s):
            raise ValueError(f"bin_s must divide an hour (3600 s), got {self.bin_s}")
        return self


class CostConfig(_Section):
    """What an idle VM costs per hour in each standby tier, and what waking
    one adds to an acquisition (issue 29): the objective sizer's weights.
    Defaults: a VM's cost taken as half memory, half CPU (paused keeps the
    memory, saved only a disk image), and bench/standby.py's wake times on
    real guests."""

    running: float = Field(
        default=1.0, gt=0, le=1_000_000, description="Cost units per running VM-hour."
    )
    paused: float = Field(
        default=0.5, gt=0, le=1_000_000, description="Cost units per paused VM-hour."
    )
    saved: float = Field(
        default=0.02, gt=0, le=1_000_000, description="Cost units per saved VM-hour."
    )
    running_ms: float = Field(
        default=2.0,
        ge=0,
        le=600_000,
        description="Latency an acquisition served from running VMs pays (its 99th "
        "percentile, ms): the objective's p99 compares against these.",
    )
    paused_ms: float = Field(
        default=150.0,
        ge=0,
        le=600_000,
        description="Latency waking paused VMs adds to an acquisition (p99, ms).",
    )
    saved_ms: float = Field(
        default=1000.0,
        ge=0,
        le=600_000,
        description="Latency restoring saved VMs adds to an acquisition (p99, ms).",
    )

    def weight(self, tier: str) -> float:
        return float(getattr(self, tier))

    def wake_ms(self, tier: str) -> float:
        return float(getattr(self, f"{tier}_ms"))


class QuotaLimit(_Section):
    requester: str = Field(
        min_length=1,
        max_length=100,
        description='Whose acquisitions it limits: a requester (a token\'s name), or "*" for '
        "each requester on its own.",
    )
    az: str = Field(default="*", description='Only acquisitions in this AZ ("*": every AZ).')
    flavor: str = Field(default="*", description='Only acquisitions of this flavor ("*": all).')
    vms_per_window: int | None = Field(
        default=None,
        ge=0,
        le=10_000_000,
        description="At most this many VMs handed out per window (counted across every "
        "instance, inside the claim transaction).",
    )
    window_s: float = Field(
        default=3600.0,
        ge=1,
        le=30 * 86_400,
        description="The window of vms_per_window, seconds (fixed windows from the epoch).",
    )
    max_share: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="One acquisition takes at most this share of the pool's acquirable VMs "
        "(at least one VM), so one tenant's burst cannot drain a pool for everyone.",
    )
    max_held: int | None = Field(
        default=None,
        ge=0,
        le=10_000_000,
        description="At most this many VMs held at once by the requester (counted across "
        "every instance in the claim transaction, given back when a VM is released). "
        'Held VMs are counted over every AZ and flavor: give it with az and flavor "*".',
    )

    @model_validator(mode="after")
    def _limits_something(self) -> QuotaLimit:
        if self.vms_per_window is None and self.max_share is None and self.max_held is None:
            raise ValueError("a quota needs vms_per_window, max_share or max_held")
        if self.max_held is not None and (self.az, self.flavor) != ("*", "*"):
            raise ValueError("max_held counts every VM a requester holds: az and flavor must be *")
        return self


class QuotasConfig(_Section):
    limits: tuple[QuotaLimit, ...] = Field(
        default=(),
        description="Per-requester limits on acquisitions; a request over any that "
        "applies gets 429 quota_exceeded and claims nothing.",
    )


class Config(BaseSettings):
    """The whole configuration (see the module docstring for the sources)."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        secrets_nested_delimiter="__",
        secrets_prefix="",
    )

    service: ServiceConfig = Field(default_factory=ServiceConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    demand: DemandConfig = Field(default_factory=DemandConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    schedules: tuple[Schedule, ...] = Field(
        default=(),
        description="[[schedules]]: windows that hold at least min_running running VMs in a "
        "demand-sized pool at known busy times (warmcache.schedules).",
    )
    quotas: QuotasConfig = Field(default_factory=QuotasConfig)
    agent_tls: AgentTlsConfig | None = Field(
        default=None, description="Needed when agents advertise https:// (a proxy)."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: the environment, then the file, then the secrets directory.
        return (
            _Environment(settings_cls),
            init_settings,
            _SecretsDirectory(file_secret_settings),
        )

    @model_validator(mode="before")
    @classmethod
    def _relative_to_the_file(cls, data: Any) -> Any:
        base = _parsing.get()[1]
        if not isinstance(data, dict) or base is None:
            return data
        out = dict(data)
        for name, section in data.items():
            if isinstance(section, dict):
                out[name] = {
                    option: str((base / value).resolve())
                    if isinstance(value, str)
                    and value
                    and (option in PATH_OPTIONS or option.endswith("_file"))
                    else value
                    for option, value in section.items()
                }
        return out


# What parse_config reads the environment from, and the file's directory.
_parsing: ContextVar[tuple[Mapping[str, str] | None, Path | None]] = ContextVar(
    "warmcache_config_parsing", default=(None, None)
)


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over the mapping parse_config was
    given (``environ={}`` in tests and the quickstart: the caller's
    environment does not leak in)."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        environ = _parsing.get()[0]
        if environ is None:
            return super()._load_env_vars()
        return parse_env_vars(
            environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


class _FromSecretsDir(str):
    """A value read from the secrets directory: the lowest source, so an
    ``<option>_file`` given anywhere else replaces it without a conflict."""


class _SecretsDirectory(NestedSecretsSettingsSource):
    def __call__(self) -> dict[str, Any]:
        return _tagged(super().__call__())


def _tagged(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _tagged(v) if isinstance(v, dict) else _FromSecretsDir(v) if isinstance(v, str) else v
        for k, v in values.items()
    }


@contextmanager
def _reading(environ: Mapping[str, str] | None, base: Path | None) -> Iterator[None]:
    token = _parsing.set((environ, base))
    try:
        yield
    finally:
        _parsing.reset(token)


def secrets_dir(environ: Mapping[str, str]) -> Path | None:
    """``WARMCACHE_SECRETS_DIR``, else systemd's ``$CREDENTIALS_DIRECTORY``."""
    given = environ.get(SECRETS_DIR_ENV) or environ.get("CREDENTIALS_DIRECTORY")
    return Path(given) if given else None


def parse_config(
    data: Mapping[str, Any], *, base: Path | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate a config mapping (file contents) with the environment
    (``os.environ`` unless ``environ`` is given) and the secrets directory.
    Every problem is reported at once, none with the value that caused it."""
    env = os.environ if environ is None else environ
    where = secrets_dir(env)
    try:
        with _reading(environ, base or Path.cwd()):
            return Config(_secrets_dir=where, **dict(data))  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(_problem(err) for err in exc.errors()) from exc


def _problem(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError([f"{path}: no such file"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc
    return parse_config(data, base=path.parent, environ=environ)
