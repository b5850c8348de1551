"""What the service's feature packages share: ``WarmCache`` builds one
``ServiceContext`` from the ports it was given and hands it to each package
(``acquire/``, ``builders/duty``, ``health/``, the approvals and their actions),
so a package's constructor names only what is its own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from warmcache.config import CostConfig, DemandConfig, QuotaLimit, ServiceConfig
from warmcache.inventory import DrainView, HostView
from warmcache.layout import Keys
from warmcache.model import PoolInstance
from warmcache.networks import AddressRelease
from warmcache.ports import (
    AlertSink,
    Clock,
    CoordinationStore,
    Event,
    EventSink,
    FlavorCatalog,
    HostAgent,
)
from warmcache.schedules import Schedule


@dataclass(frozen=True)
class ServiceContext:
    config: ServiceConfig
    store: CoordinationStore
    keys: Keys
    clock: Clock
    catalog: FlavorCatalog
    hosts: HostView
    drains: DrainView
    agent_for: Callable[[str], HostAgent]
    events: EventSink  # the metrics-feeding sink: every event also counts in /metrics
    alerts: AlertSink
    addresses: AddressRelease  # how a removed VM's addresses go into quarantine
    demand: DemandConfig = field(default_factory=DemandConfig)  # demand-driven sizing ([demand])
    quotas: tuple[QuotaLimit, ...] = ()  # per-requester limits ([[quotas.limits]])
    cost: CostConfig = field(default_factory=CostConfig)  # tier weights ([cost])
    schedules: tuple[Schedule, ...] = ()  # scheduled floors ([[schedules]])
    # Take a handed-out VM back from its holder for deletion (an operator's
    # purge_vm): set once the VMs' lifecycle exists (``WarmCache``).
    release_vm: Callable[[str], PoolInstance] | None = None

    @classmethod
    def assemble(
        cls,
        config: ServiceConfig,
        store: CoordinationStore,
        catalog: FlavorCatalog,
        agent_for: Callable[[str], HostAgent],
        events: EventSink,
        alerts: AlertSink,
        clock: Clock,
        demand: DemandConfig | None = None,
        quotas: Sequence[QuotaLimit] = (),
        cost: CostConfig | None = None,
        schedules: Sequence[Schedule] = (),
    ) -> ServiceContext:
        """The context over these ports, with the key layout of
        ``config.prefix`` and the live host and drain views over it."""
        keys = Keys(config.prefix)
        release = AddressRelease(keys, clock, config.address_quarantine_s)
        return cls(
            config,
            store,
            keys,
            clock,
            catalog,
            HostView(store, keys.hosts_dir()),
            DrainView(store, keys),
            agent_for,
            events,
            alerts,
            release,
            demand or DemandConfig(),
            tuple(quotas),
            cost=cost or CostConfig(),
            schedules=tuple(schedules),
        )

    def emit(self, type_: str, **fields: object) -> None:
        self.events.emit(Event(type_, self.clock.now(), fields))
