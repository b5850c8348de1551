"""The acquisition side of one service instance, without the rest of it:
host and drain views, the pool index and the claimer over one real store,
for claim and index tests (several rigs on one store are several instances)."""

from __future__ import annotations

import random

from warmcache.acquire.claimer import Claimed, Claimer, ClaimRequest
from warmcache.acquire.index import PoolIndex
from warmcache.clock import ManualClock
from warmcache.inventory import DrainView, HostView
from warmcache.layout import Keys
from warmcache.model import HostFacts, InstanceState, Mode, PoolInstance
from warmcache.ports import CoordinationStore

KEYS = Keys("wc")


def host(hv: str, rack: str, az: str = "az1") -> HostFacts:
    return HostFacts(
        hypervisor=hv,
        rack=rack,
        az=az,
        vcpus_total=64,
        vcpus_free=0,
        memory_mib_total=1,
        memory_mib_free=0,
        disk_gib_total=1,
        disk_gib_free=0,
        endpoint=f"unix:/nowhere/{hv}",
    )


def seed(
    store: CoordinationStore,
    racks: int,
    per_rack: int,
    state: InstanceState = InstanceState.READY,
    flavor: str = "small",
    hvs_per_rack: int = 2,
) -> list[str]:
    """``per_rack`` VMs on each of ``racks`` racks (over ``hvs_per_rack``
    hypervisors each, all heartbeating). VM names are ``<flavor>-r<rack>-<i>``
    on hypervisor ``r<rack>-h<i % hvs_per_rack>``."""
    names = []
    for r in range(racks):
        for h in range(hvs_per_rack):
            store.put(
                KEYS.hosts_dir() + f"az1/r{r}-h{h}", host(f"r{r}-h{h}", f"r{r}").model_dump_json()
            )
        for i in range(per_rack):
            vm = PoolInstance(
                name=f"{flavor}-r{r}-{i}",
                az="az1",
                flavor=flavor,
                rack=f"r{r}",
                hypervisor=f"r{r}-h{i % hvs_per_rack}",
                state=state,
                created_at=0,
            )
            store.put(KEYS.pool("az1", vm.name), vm.model_dump_json())
            names.append(vm.name)
    return names


class Rig:
    def __init__(
        self,
        store: CoordinationStore,
        clock: ManualClock | None = None,
        *,
        node: str = "wc-1",
        batch: bool = True,
        attempts: int = 50,
        seed_: int = 0,
    ) -> None:
        self.store = store
        self.hosts = HostView(store, KEYS.hosts_dir())
        self.drains = DrainView(store, KEYS)
        self.index = PoolIndex(store, KEYS, hosts=self.hosts, drains=self.drains, node=node)
        self.claimer = Claimer(
            store,
            KEYS,
            self.index,
            clock or ManualClock(),
            attempts=attempts,
            batch=batch,
            rng=random.Random(seed_),
        )

    def sync(self) -> None:
        for view in (self.hosts, self.drains, self.index):
            view.catch_up()

    def request(
        self,
        count: int,
        mode: Mode = Mode.RACK_AWARE,
        *,
        flavor: str = "small",
        use_reserve: bool = False,
    ) -> ClaimRequest:
        return ClaimRequest(
            flavor=flavor, az="az1", count=count, mode=mode, use_reserve=use_reserve, requester="t"
        )

    def claim_vms(
        self,
        count: int,
        mode: Mode = Mode.RACK_AWARE,
        *,
        sync: bool = True,
        flavor: str = "small",
        use_reserve: bool = False,
    ) -> Claimed:
        if sync:
            self.sync()
        return self.claimer.claim(self.request(count, mode, flavor=flavor, use_reserve=use_reserve))

    def claim(
        self,
        count: int,
        mode: Mode = Mode.RACK_AWARE,
        *,
        flavor: str = "small",
        use_reserve: bool = False,
    ) -> list[str]:
        return [
            vm.name
            for vm in self.claim_vms(count, mode, flavor=flavor, use_reserve=use_reserve).vms
        ]
