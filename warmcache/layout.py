"""The store's key layout and its typed readers: the one file a layout
change touches (DESIGN.md §6).

Every key under the configured prefix is built by ``Keys``; the service,
the agent, the simulator and the tools all use it. The readers turn a
range of one directory into typed records with their revisions, so no
caller parses store JSON by hand.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import quote

from warmcache.model import BuildRule, HostFacts, PoolInstance
from warmcache.ports import CoordinationStore, KeyValue

T = TypeVar("T")


class Keys:
    """Key layout in the coordination store, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")

    # --- VMs -------------------------------------------------------------------------

    def pool_dir(self, az: str | None = None) -> str:
        return f"{self.prefix}/pool/{az}/" if az else f"{self.prefix}/pool/"

    def pool(self, az: str, name: str) -> str:
        return f"{self.prefix}/pool/{az}/{name}"

    def acquired_dir(self, az: str | None = None) -> str:
        return f"{self.prefix}/acquired/{az}/" if az else f"{self.prefix}/acquired/"

    def acquired(self, az: str, name: str) -> str:
        return f"{self.prefix}/acquired/{az}/{name}"

    def releasing_dir(self, az: str | None = None) -> str:
        return f"{self.prefix}/releasing/{az}/" if az else f"{self.prefix}/releasing/"

    def releasing(self, az: str, name: str) -> str:
        """A VM given back, until its agent confirms it gone (``warmcache.vms``)."""
        return f"{self.prefix}/releasing/{az}/{name}"

    def held_root(self) -> str:
        """Every requester's handed-out VMs (the holder index)."""
        return f"{self.prefix}/held/"

    def held_dir(self, requester: str) -> str:
        return f"{self.prefix}/held/{quote(requester, safe='')}/"

    def held(self, requester: str, az: str, name: str) -> str:
        """A VM handed out to ``requester``: the holder index, written and
        removed in the transactions that hand the VM out and take it back."""
        return f"{self.prefix}/held/{quote(requester, safe='')}/{az}/{name}"

    def quotas_dir(self) -> str:
        """Every requester's quota counters (window and held)."""
        return f"{self.prefix}/quotas/"

    def held_count(self, requester: str) -> str:
        """How many VMs ``requester`` holds, for its ``max_held`` quota."""
        return f"{self.prefix}/quotas/{quote(requester, safe='')}/held"

    def claims_dir(self) -> str:
        return f"{self.prefix}/claims/"

    def claim(self, claim_id: str) -> str:
        """A named claim's record (``warmcache.claims.claim_log``)."""
        return f"{self.prefix}/claims/{claim_id}"

    def claim_expiry_dir(self, bucket: int | None = None) -> str:
        """The claims' expiry index: one folder per time bucket in which
        records expire (``warmcache.claims.claim_log``), so that a sweep
        reads only what expired."""
        if bucket is None:
            return f"{self.prefix}/claim-expiry/"
        return f"{self.prefix}/claim-expiry/{bucket:012d}/"

    def claim_expiry(self, bucket: int, claim_id: str) -> str:
        return f"{self.claim_expiry_dir(bucket)}{claim_id}"

    # --- rules and operator state ----------------------------------------------------

    def rules_dir(self, az: str | None = None) -> str:
        return f"{self.prefix}/rules/{az}/" if az else f"{self.prefix}/rules/"

    def rule(self, az: str, flavor: str) -> str:
        return f"{self.prefix}/rules/{az}/{flavor}"

    RACK_DRAINS = "racks"

    def drain(self, hypervisor: str | None = None) -> str:
        """A drained hypervisor (``warmcache.drains``); the folder of every drain."""
        return f"{self.prefix}/drain/{hypervisor}" if hypervisor else f"{self.prefix}/drain/"

    def rack_drain(self, az: str, rack: str) -> str:
        """A drained rack: every hypervisor of it (beside the hosts' own drains)."""
        return f"{self.prefix}/drain/{self.RACK_DRAINS}/{az}/{rack}"

    def surplus(self, az: str, flavor: str) -> str:
        """Since when a pool holds more than its target (the leader's
        hysteresis before it retires the surplus, ``builders.upkeep``)."""
        return f"{self.prefix}/surplus/{az}/{flavor}"

    def quota_limits_dir(self) -> str:
        return f"{self.prefix}/quota-limits/"

    def quota_limit(self, requester: str) -> str:
        """A requester's limits (``acquire.quotas``): set through the API,
        seeded from the config file's ``[[quotas.limits]]``."""
        return f"{self.prefix}/quota-limits/{quote(requester, safe='')}"

    def requests_dir(self) -> str:
        return f"{self.prefix}/requests/"

    def request(self, request_id: str) -> str:
        """A maker-checker change request (``warmcache.approvals``)."""
        return f"{self.prefix}/requests/{request_id}"

    # --- leaders ---------------------------------------------------------------------

    def leader(self) -> str:
        return f"{self.prefix}/leader"

    def health_lock(self) -> str:
        return f"{self.prefix}/health-lock"

    def last_cycle(self) -> str:
        return f"{self.prefix}/cycles/last"

    # --- what agents publish ---------------------------------------------------------

    def hosts_dir(self) -> str:
        return f"{self.prefix}/hosts/"

    def host(self, az: str, hypervisor: str) -> str:
        """An agent's host facts, bound to its session (``agent.inventory``)."""
        return f"{self.prefix}/hosts/{az}/{hypervisor}"

    def findings_dir(self) -> str:
        return f"{self.prefix}/findings/"

    def findings(self, az: str, hypervisor: str) -> str:
        """An agent's latest reconcile findings (``builders.findings``)."""
        return f"{self.prefix}/findings/{az}/{hypervisor}"

    def findings_reported(self) -> str:
        """The store revision up to which the leader reported findings."""
        return f"{self.prefix}/findings-reported"

    def agents_desired(self) -> str:
        """The agent build the fleet should run (warmcache.agent_versions)."""
        return f"{self.prefix}/agents/desired"

    def agents_updating(self, hypervisor: str | None = None) -> str:
        """An update slot the leader granted to one agent (a few at a time)."""
        base = f"{self.prefix}/agents/updating/"
        return base + hypervisor if hypervisor else base

    def agents_status(self, hypervisor: str | None = None) -> str:
        """How an agent's last update went (timed out, failed, rolled back)."""
        base = f"{self.prefix}/agents/status/"
        return base + hypervisor if hypervisor else base

    # --- address pools (warmcache.networks) --------------------------------------

    def networks_dir(self, az: str | None = None) -> str:
        return f"{self.prefix}/networks/{az}/" if az else f"{self.prefix}/networks/"

    def network(self, az: str, name: str) -> str:
        return f"{self.prefix}/networks/{az}/{name}"

    def addresses_dir(self, az: str) -> str:
        return f"{self.prefix}/addresses/{az}/"

    def address(self, az: str, address: str) -> str:
        """One key per address in use: created only if absent."""
        return f"{self.prefix}/addresses/{az}/{address}"

    # --- demand sizing (warmcache.demand) ---------------------------------------

    def demand_dir(self, az: str | None = None) -> str:
        return f"{self.prefix}/demand/{az}/" if az else f"{self.prefix}/demand/"

    def demand(self, az: str, flavor: str, hour: int, node: str) -> str:
        """One instance's demand for one pool in one hour (``demand.Chunk``):
        written by that instance only."""
        return f"{self.prefix}/demand/{az}/{flavor}/{hour}/{quote(node, safe='')}"

    def targets_dir(self) -> str:
        return f"{self.prefix}/targets/"

    def target(self, az: str, flavor: str) -> str:
        """A demand-sized pool's current target, written by the leader."""
        return f"{self.prefix}/targets/{az}/{flavor}"

    def budgets_dir(self) -> str:
        return f"{self.prefix}/budgets/"

    def budget(self, az: str) -> str:
        """An AZ's budget for its demand-sized pools (VMs or vCPUs)."""
        return f"{self.prefix}/budgets/{az}"

    def quota(self, requester: str, scope: str) -> str:
        """A requester's use of one windowed quota (``acquire.quotas``)."""
        return f"{self.prefix}/quotas/{quote(requester, safe='')}/{quote(scope, safe='')}"

    @staticmethod
    def tail(key: str, depth: int) -> list[str]:
        """The last ``depth`` path segments of ``key``."""
        return key.rsplit("/", depth)[1:]

    @staticmethod
    def name(key: str) -> str:
        """The last path segment of ``key``."""
        return key.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Stored(Generic[T]):
    """A typed record as read, with what a conditional write compares."""

    key: str
    mod_revision: int
    record: T


def _read(
    store: CoordinationStore, prefix: str, parse: Callable[[str], T]
) -> tuple[list[Stored[T]], int]:
    kvs, revision = store.range(prefix)
    return [_stored(kv, parse) for kv in kvs], revision


def _stored(kv: KeyValue, parse: Callable[[str], T]) -> Stored[T]:
    return Stored(kv.key, kv.mod_revision, parse(kv.value))


class PoolRecords:
    """VM records: pooled (``<prefix>/pool/<az>/<name>``) and handed out
    (``<prefix>/acquired/<az>/<name>``)."""

    def __init__(self, store: CoordinationStore, keys: Keys) -> None:
        self._store = store
        self._keys = keys

    def read(self, az: str | None = None) -> tuple[list[Stored[PoolInstance]], int]:
        """Every pooled record (of one AZ, or all), and the revision read at."""
        return _read(self._store, self._keys.pool_dir(az), PoolInstance.model_validate_json)

    def get(self, az: str, name: str) -> Stored[PoolInstance] | None:
        kv = self._store.get(self._keys.pool(az, name))
        return _stored(kv, PoolInstance.model_validate_json) if kv else None

    def by_az(self) -> dict[str, list[PoolInstance]]:
        records: dict[str, list[PoolInstance]] = defaultdict(list)
        for item in self.read()[0]:
            records[item.record.az].append(item.record)
        return records

    def get_acquired(self, az: str, name: str) -> Stored[PoolInstance] | None:
        kv = self._store.get(self._keys.acquired(az, name))
        return _stored(kv, PoolInstance.model_validate_json) if kv else None

    def acquired(self, az: str | None = None) -> list[Stored[PoolInstance]]:
        return _read(self._store, self._keys.acquired_dir(az), PoolInstance.model_validate_json)[0]

    def get_releasing(self, az: str, name: str) -> Stored[PoolInstance] | None:
        kv = self._store.get(self._keys.releasing(az, name))
        return _stored(kv, PoolInstance.model_validate_json) if kv else None

    def releasing(self, az: str | None = None) -> list[Stored[PoolInstance]]:
        return _read(self._store, self._keys.releasing_dir(az), PoolInstance.model_validate_json)[0]

    def on_host(self, az: str, hypervisor: str) -> dict[str, str]:
        """Name -> state of every VM tracked on one hypervisor: pooled,
        handed out, and given back but not yet gone."""
        return {
            item.record.name: item.record.state.value
            for item in [*self.read(az)[0], *self.acquired(az), *self.releasing(az)]
            if item.record.hypervisor == hypervisor
        }


class RuleRecords:
    """Build rules (``<prefix>/rules/<az>/<flavor>``), read side; writes go
    through ``warmcache.rules.RuleBook``, which validates them."""

    def __init__(self, store: CoordinationStore, keys: Keys) -> None:
        self._store = store
        self._keys = keys

    def get(self, az: str, flavor: str) -> BuildRule | None:
        kv = self._store.get(self._keys.rule(az, flavor))
        return BuildRule.model_validate_json(kv.value) if kv else None

    def all(self) -> dict[tuple[str, str], BuildRule]:
        out: dict[tuple[str, str], BuildRule] = {}
        for item in _read(self._store, self._keys.rules_dir(), BuildRule.model_validate_json)[0]:
            az, flavor = Keys.tail(item.key, 2)
            out[(az, flavor)] = item.record
        return out

    def by_az(self) -> dict[str, dict[str, BuildRule]]:
        rules: dict[str, dict[str, BuildRule]] = defaultdict(dict)
        for (az, flavor), rule in self.all().items():
            rules[az][flavor] = rule
        return rules


class HostRecords:
    """What agents publish: host facts and drain marks, read once (the
    service follows them with ``warmcache.inventory``'s views instead)."""

    def __init__(self, store: CoordinationStore, keys: Keys) -> None:
        self._store = store
        self._keys = keys

    def facts(self) -> list[HostFacts]:
        return [
            item.record
            for item in _read(self._store, self._keys.hosts_dir(), HostFacts.model_validate_json)[0]
        ]

    def drained(self) -> set[str]:
        """Hypervisors drained one by one (rack drains: ``drains.Drains``)."""
        kvs, _ = self._store.range(self._keys.drain())
        prefix = self._keys.drain()
        return {kv.key[len(prefix) :] for kv in kvs if "/" not in kv.key[len(prefix) :]}
