"""Address pools (PPeC's IPDB role): every pooled VM gets its IP from the
pool of its AZ (or of its rack, standing for a VRF or subnet) before its
agent creates it.

A pool is CIDRs, a gateway inside one of them, DNS servers and excluded
ranges, stored at ``<prefix>/networks/<az>/<name>``. Each address in use is
one key, ``<prefix>/addresses/<az>/<ip>``, created only if absent in the
same fenced transaction that records the VM as ``building``: two builders,
two cycles or a stale leader can never hand one address out twice. A purged
or failed VM's address is put in quarantine in the transaction that removes
its record, and the leader frees it once ``service.address_quarantine_s``
has passed; an address held by no VM that was not released that way is
reported (``address.leaked``), never freed silently.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from warmcache.errors import InvalidRequest, NetworkExists, UnknownNetwork
from warmcache.layout import Keys
from warmcache.model import NAME_PATTERN, PoolInstance, StaticNetwork, is_valid_name
from warmcache.ports import Clock, Compare, CoordinationStore, Delete, Op, Put, TxnResult

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Txn = Callable[[Sequence[Compare], Sequence[Op]], TxnResult]
# The syntax (the values are checked by ``ipaddress`` too).
IP = r"^([0-9]{1,3}\.){3}[0-9]{1,3}$|^[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*$"
CIDR = r"^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$|^[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*/[0-9]{1,3}$"
EXCLUDED = r"^[0-9A-Fa-f:./-]{2,100}$"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressPool(BaseModel):
    """One pool of addresses (validated on write: ``InvalidRequest`` lists
    every problem)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cidrs: tuple[Annotated[StrictStr, Field(pattern=CIDR)], ...] = Field(
        min_length=1, max_length=64, description="e.g. 10.20.0.0/22"
    )
    gateway: StrictStr = Field(pattern=IP, description="Inside one of the CIDRs; never allocated.")
    dns: tuple[Annotated[StrictStr, Field(pattern=IP)], ...] = Field(
        default=(), max_length=8, description="Name servers for the VMs."
    )
    excluded: tuple[Annotated[StrictStr, Field(pattern=EXCLUDED)], ...] = Field(
        default=(),
        max_length=1024,
        description="Never allocated: addresses, CIDRs or ranges (10.20.0.1-10.20.0.20).",
    )
    rack: StrictStr | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Only for VMs on this rack (a VRF or subnet); none: the whole AZ.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> AddressPool:
        networks = [ipaddress.ip_network(c, strict=True) for c in self.cidrs]
        if len({n.version for n in networks}) > 1:
            raise ValueError("cidrs: one IP version per pool")
        for i, a in enumerate(networks):
            for b in networks[i + 1 :]:
                if a.overlaps(b):
                    raise ValueError(f"cidrs: {a} and {b} overlap")
        gateway = ipaddress.ip_address(self.gateway)
        if not any(gateway in n for n in networks):
            raise ValueError(f"gateway {gateway} is in none of the cidrs")
        for server in self.dns:
            ipaddress.ip_address(server)
        for item in self.excluded:
            first, last = _bounds(item)
            if not any(first in n and last in n for n in networks):
                raise ValueError(f"excluded {item} is not inside one CIDR of the pool")
        return self

    def networks(self) -> list[Network]:
        return [ipaddress.ip_network(c) for c in self.cidrs]

    def network_of(self, address: Address) -> Network:
        return next(n for n in self.networks() if address in n)

    def candidates(self) -> Iterator[Address]:
        """Every address this pool may hand out, in order."""
        gateway = ipaddress.ip_address(self.gateway)
        excluded = [(int(lo), int(hi)) for lo, hi in map(_bounds, self.excluded)]
        for network in self.networks():
            for address in network.hosts():
                if address == gateway or any(lo <= int(address) <= hi for lo, hi in excluded):
                    continue
                yield address

    def size(self) -> int:
        """How many addresses ``candidates`` yields, by arithmetic (a /8 has
        16 million: never counted one by one)."""
        excluded = [(int(lo), int(hi)) for lo, hi in map(_bounds, self.excluded)]
        gateway = int(ipaddress.ip_address(self.gateway))
        excluded.append((gateway, gateway))
        total = 0
        for network in self.networks():
            lo, hi = _host_bounds(network)
            total += hi - lo + 1
            merged_hi = lo - 1
            for a, b in sorted((max(a, lo), min(b, hi)) for a, b in excluded):
                if a > b or b <= merged_hi:
                    continue
                total -= b - max(a, merged_hi + 1) + 1
                merged_hi = b
        return total

    def overlaps(self, other: AddressPool) -> bool:
        return any(a.overlaps(b) for a in self.networks() for b in other.networks())


def _host_bounds(network: Network) -> tuple[int, int]:
    """The first and last of ``network.hosts()``, as integers: IPv4 leaves
    out the network and broadcast addresses (not on /31, /32), IPv6 the
    subnet-router anycast (not on /127, /128)."""
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.version == 4 and network.prefixlen < 31:
        return first + 1, last - 1
    if network.version == 6 and network.prefixlen < 127:
        return first + 1, last
    return first, last


def _bounds(item: str) -> tuple[Address, Address]:
    if "-" in item:
        lo, hi = (ipaddress.ip_address(part.strip()) for part in item.split("-", 1))
        if lo.version != hi.version or int(hi) < int(lo):
            raise ValueError(f"excluded {item}: the range ends before it starts")
        return lo, hi
    if "/" in item:
        network = ipaddress.ip_network(item, strict=True)
        return network[0], network[-1]
    address = ipaddress.ip_address(item)
    return address, address


class Held(BaseModel):
    """The value of ``<prefix>/addresses/<az>/<ip>``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vm: str
    network: str  # the pool's name
    state: Literal["held", "quarantined"] = "held"
    since: float
    until: float | None = None  # quarantined: free after this


class NetworkBook:
    """The address pools of the store, read and written through ``Keys``."""

    def __init__(self, store: CoordinationStore, keys: Keys) -> None:
        self._store = store
        self._keys = keys

    def get(self, az: str, name: str) -> AddressPool | None:
        found = self._store.get(self._keys.network(az, name))
        return AddressPool.model_validate_json(found.value) if found else None

    def all(self) -> dict[tuple[str, str], AddressPool]:
        items, _ = self._store.range(self._keys.networks_dir())
        return {
            tuple(Keys.tail(kv.key, 2)): AddressPool.model_validate_json(kv.value)  # type: ignore[misc]
            for kv in items
        }

    def in_az(self, az: str) -> dict[str, AddressPool]:
        items, _ = self._store.range(self._keys.networks_dir(az))
        return {Keys.name(kv.key): AddressPool.model_validate_json(kv.value) for kv in items}

    def held(self, az: str) -> dict[str, Held]:
        items, _ = self._store.range(self._keys.addresses_dir(az))
        return {Keys.name(kv.key): Held.model_validate_json(kv.value) for kv in items}

    def validated(self, az: str, name: str, data: Mapping[str, Any] | AddressPool) -> AddressPool:
        """The pool as it would be stored (``InvalidRequest`` when it is not
        one, or overlaps another pool of the AZ)."""
        if not is_valid_name(az) or not is_valid_name(name):
            raise InvalidRequest(f"invalid AZ or network name {az!r}/{name!r}")
        try:
            pool = data if isinstance(data, AddressPool) else AddressPool.model_validate(data)
        except ValidationError as exc:
            raise InvalidRequest.from_validation(f"invalid address pool {az}/{name}", exc) from exc
        others = self.overlapping(az, name, pool)
        if others:
            raise InvalidRequest(f"address pool {az}/{name} overlaps {', '.join(others)}")
        return pool

    def create(self, az: str, name: str, data: Mapping[str, Any]) -> AddressPool:
        """A new pool (``NetworkExists`` if one of that name is there: a change
        goes through maker-checker, ``update_network``)."""
        pool = self.validated(az, name, data)
        key = self._keys.network(az, name)
        if not self._store.txn([Compare.absent(key)], [Put(key, pool.model_dump_json())]).succeeded:
            raise NetworkExists(az, name)
        return pool

    def replace(self, az: str, name: str, pool: AddressPool) -> None:
        """An approved ``update_network``: addresses held stay held."""
        key = self._keys.network(az, name)
        pool = self.validated(az, name, pool)
        if self._store.get(key) is None:
            raise UnknownNetwork(az, name)
        self._store.put(key, pool.model_dump_json())

    def delete(self, az: str, name: str) -> bool:
        """An approved ``delete_network``: its VMs keep their addresses; no
        new VM gets one from it."""
        return self._store.delete(self._keys.network(az, name))

    def overlapping(self, az: str, name: str, pool: AddressPool) -> list[str]:
        """Other pools of ``az`` whose CIDRs ``pool`` would overlap."""
        return sorted(
            n for n, other in self.in_az(az).items() if n != name and pool.overlaps(other)
        )


class Allocator:
    """One cycle's view of an AZ's pools: which address to try next for a VM
    on a rack (the rack's own pool first, else the AZ's). The store decides:
    the address key is created only if absent, so a wrong guess here (an
    address taken meanwhile) costs one more try, never a duplicate."""

    def __init__(self, pools: dict[str, AddressPool], held: Iterable[str]) -> None:
        self._pools = pools
        self._taken = set(held)
        self._cursors: dict[str, Iterator[Address]] = {}
        self._lock = threading.Lock()  # the AZ's build threads share it

    def pools_for(self, rack: str) -> list[str]:
        """The pools a VM on ``rack`` may take an address from, in the order
        they are used: the rack's own, then the AZ-wide ones (by name)."""
        scoped = sorted(n for n, p in self._pools.items() if p.rack == rack)
        whole = sorted(n for n, p in self._pools.items() if p.rack is None)
        return scoped + whole

    def next(self, rack: str) -> tuple[str, StaticNetwork] | None:
        """The next untaken address for a VM on ``rack``, marked taken: from
        the first of its pools that has one left; None when none has (or
        no pool serves the rack)."""
        with self._lock:
            for name in self.pools_for(rack):
                found = self._next_of(name)
                if found is not None:
                    return found
        return None

    def _next_of(self, name: str) -> tuple[str, StaticNetwork] | None:
        pool = self._pools[name]
        cursor = self._cursors.setdefault(name, pool.candidates())
        for address in cursor:
            text = str(address)
            if text in self._taken:
                continue
            self._taken.add(text)
            prefix = pool.network_of(address).prefixlen
            return name, StaticNetwork(
                address=text, prefix=prefix, gateway=pool.gateway, dns=pool.dns
            )
        return None

    def taken(self, address: str) -> None:
        """Another writer holds it (the store said so)."""
        with self._lock:
            self._taken.add(address)


def network_of(pool: AddressPool | None, address: str) -> StaticNetwork | None:
    """What a VM holding ``address`` of ``pool`` configures (a recycled VM
    keeps its address); None when the pool is gone or no longer has it."""
    if pool is None:
        return None
    try:
        ip = ipaddress.ip_address(address)
        network = pool.network_of(ip)
    except (ValueError, KeyError, StopIteration):
        return None
    return StaticNetwork(
        address=address, prefix=network.prefixlen, gateway=pool.gateway, dns=pool.dns
    )


@dataclass(frozen=True)
class AddressRelease:
    """The ops that put a removed VM's addresses in quarantine, for the
    transaction that removes its record (``purge.purge_vm``)."""

    keys: Keys
    clock: Clock
    quarantine_s: float

    def ops(self, rec: PoolInstance) -> list[Op]:
        now = self.clock.now()
        held = Held(
            vm=rec.name,
            network=rec.network or "",
            state="quarantined",
            since=now,
            until=now + self.quarantine_s,
        )
        return [Put(self.keys.address(rec.az, a), held.model_dump_json()) for a in rec.addresses]


def settle_addresses(
    store: CoordinationStore,
    keys: Keys,
    txn: Txn,
    now: float,
    emit: Callable[..., None],
    reported: set[tuple[str, str]],
) -> int:
    """The leader's pass over the addresses after a cycle: a quarantined
    address past its time is freed (conditional on its revision); an address
    held for no VM that has it, and a VM whose address is not held for it,
    are reported once each (``address.leaked``, ``address.unheld``), never
    freed or changed. Returns how many addresses were freed."""
    freed = 0
    for az in sorted({az for az, _ in NetworkBook(store, keys).all()}):
        pool, at = store.range(keys.pool_dir(az))
        acquired, _ = store.range(keys.acquired_dir(az))
        releasing, _ = store.range(keys.releasing_dir(az))  # keep theirs until gone
        vms = {
            r.name: r
            for r in (
                PoolInstance.model_validate_json(kv.value) for kv in [*pool, *acquired, *releasing]
            )
        }
        held_items, _ = store.range(keys.addresses_dir(az))
        held = {Keys.name(kv.key): (kv, Held.model_validate_json(kv.value)) for kv in held_items}
        for address, (kv, record) in held.items():
            if record.state == "quarantined":
                if (
                    record.until is not None
                    and record.until <= now
                    and txn(
                        [Compare.mod_revision(kv.key, kv.mod_revision)], [Delete(kv.key)]
                    ).succeeded
                ):
                    freed += 1
                    emit("address.freed", az=az, address=address, vm=record.vm)
                continue
            holder = vms.get(record.vm)
            if kv.create_revision > at or (holder and address in holder.addresses):
                continue  # held for a VM that has it (or newer than the VMs read)
            if (az, address) not in reported:
                reported.add((az, address))
                emit("address.leaked", az=az, address=address, vm=record.vm, network=record.network)
        for vm in vms.values():
            for address in vm.addresses:
                found = held.get(address)
                if (found is None or found[1].vm != vm.name) and (az, address) not in reported:
                    reported.add((az, address))
                    emit(
                        "address.unheld",
                        az=az,
                        address=address,
                        vm=vm.name,
                        held_for=found[1].vm if found else None,
                    )
    return freed
