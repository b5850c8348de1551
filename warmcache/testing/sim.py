"""Simulated hypervisors behind the host-agent port, for benchmarks.

A ``SimAgent`` keeps its capacity and VMs in memory, takes a create latency
drawn from a distribution, and publishes its facts into the store like a real
agent's heartbeat, so the service (host view, placement, build cycles,
acquisition) runs unchanged against thousands of them in one process.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from warmcache.errors import AgentVmExists, AgentVmNotFound, InsufficientHostCapacity
from warmcache.images import Image
from warmcache.layout import Keys
from warmcache.model import Flavor, HostFacts
from warmcache.ports import CoordinationStore, Put, VmSpec, VmStatus


def lognormal_latency(mean_s: float, rng: random.Random, sigma: float = 0.5) -> Callable[[], float]:
    """Create latencies with the given mean (a right-skewed, always-positive
    shape, as VM boot times are)."""
    import math

    mu = math.log(max(mean_s, 1e-9)) - sigma * sigma / 2
    return lambda: rng.lognormvariate(mu, sigma) if mean_s > 0 else 0.0


class SimAgent:
    def __init__(
        self,
        az: str,
        rack: str,
        hypervisor: str,
        *,
        vcpus: int = 64,
        memory_mib: int = 262_144,
        disk_gib: int = 4000,
        latency: Callable[[], float] = lambda: 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._base = HostFacts(
            hypervisor=hypervisor,
            rack=rack,
            az=az,
            vcpus_total=vcpus,
            vcpus_free=vcpus,
            memory_mib_total=memory_mib,
            memory_mib_free=memory_mib,
            disk_gib_total=disk_gib,
            disk_gib_free=disk_gib,
            endpoint=f"sim:{hypervisor}",
        )
        self.vms: dict[str, tuple[Flavor, str | None]] = {}
        self._used = [0, 0, 0]
        self.standbys: dict[str, str] = {}  # VMs not running: paused or saved
        self.images: set[str] = set()  # sha256 of the images it holds (prefetched or booted)
        self.disks: dict[str, dict[str, int]] = {}  # VM -> its data disks (target -> GiB)
        self.recycled: dict[str, int] = {}  # VM -> times recycled
        self._latency = latency
        self._sleep = sleep
        self._lock = threading.Lock()
        self.store: CoordinationStore | None = None
        self.prefix = ""

    @property
    def endpoint(self) -> str:
        return self._base.endpoint

    def facts(self) -> HostFacts:
        with self._lock:
            return self._base.model_copy(
                update={
                    "vcpus_free": self._base.vcpus_total - self._used[0],
                    "memory_mib_free": self._base.memory_mib_total - self._used[1],
                    "disk_gib_free": self._base.disk_gib_total - self._used[2],
                    "vms": tuple(self.vms),
                    "groups": tuple(g for _, g in self.vms.values() if g),
                    "images": tuple(sorted(self.images)),
                }
            )

    def publish_op(self) -> Put:
        f = self.facts()
        return Put(Keys(self.prefix).host(f.az, f.hypervisor), f.model_dump_json())

    def _publish(self) -> None:
        if self.store is not None:
            op = self.publish_op()
            self.store.put(op.key, op.value)

    @staticmethod
    def _needs(f: Flavor) -> tuple[int, int, int]:
        return f.vcpus, f.memory_mib, f.disk_gib + sum(f.extra_disks_gib)

    def create(self, spec: VmSpec) -> VmStatus:
        need = self._needs(spec.flavor)
        with self._lock:
            if spec.name in self.vms:
                raise AgentVmExists(self.endpoint, spec.name)
            totals = (
                self._base.vcpus_total,
                self._base.memory_mib_total,
                self._base.disk_gib_total,
            )
            if any(u + n > t for u, n, t in zip(self._used, need, totals, strict=True)):
                raise InsufficientHostCapacity(self.endpoint, spec.name)
            self.vms[spec.name] = (spec.flavor, spec.group)
            self._used = [u + n for u, n in zip(self._used, need, strict=True)]
            if spec.image is not None:
                self.images.add(spec.image.sha256)
        self._sleep(self._latency())  # booting
        self._publish()
        return VmStatus(spec.name, "running", True, f"sim-{spec.name}")

    def delete(self, name: str) -> None:
        with self._lock:
            found = self.vms.pop(name, None)
            if found is None:
                raise AgentVmNotFound(self.endpoint, name)
            self.standbys.pop(name, None)
            self._used = [u - n for u, n in zip(self._used, self._needs(found[0]), strict=True)]
            self._used[2] -= sum(self.disks.pop(name, {}).values())
        self._publish()

    def status(self, name: str) -> VmStatus:
        with self._lock:
            if name not in self.vms:
                raise AgentVmNotFound(self.endpoint, name)
            kept = self.standbys.get(name, "running")
        return VmStatus(name, kept, True, f"sim-{name}", standby=kept)

    def standby(self, name: str, state: str) -> VmStatus:
        """Simulated: the state is recorded, no capacity changes hands."""
        with self._lock:
            if name not in self.vms:
                raise AgentVmNotFound(self.endpoint, name)
            self.standbys[name] = state
        self._sleep(self._latency() / 10 if state == "running" else 0.0)
        return self.status(name)

    def recycle(self, spec: VmSpec) -> VmStatus:
        """Simulated: the VM is made new where it is (its booking kept)."""
        with self._lock:
            if spec.name not in self.vms:
                raise AgentVmNotFound(self.endpoint, spec.name)
            self.standbys.pop(spec.name, None)
            self._used[2] -= sum(self.disks.pop(spec.name, {}).values())  # its data disks go
            if spec.image is not None:
                self.images.add(spec.image.sha256)
            self.recycled[spec.name] = self.recycled.get(spec.name, 0) + 1
        self._sleep(self._latency())  # booting again
        return VmStatus(spec.name, "running", True, f"sim-{spec.name}")

    def attach_disk(self, name: str, target: str, size_gib: int, preallocation: str) -> None:
        with self._lock:
            if name not in self.vms:
                raise AgentVmNotFound(self.endpoint, name)
            disks = self.disks.setdefault(name, {})
            if target in disks:
                raise AgentVmExists(self.endpoint, f"{name} already has a disk {target}")
            if self._used[2] + size_gib > self._base.disk_gib_total:
                raise InsufficientHostCapacity(self.endpoint, f"{name}:{target}")
            disks[target] = size_gib
            self._used[2] += size_gib
        self._publish()

    def detach_disk(self, name: str, target: str) -> None:
        with self._lock:
            if target not in self.disks.get(name, {}):
                raise AgentVmNotFound(self.endpoint, f"{name} has no disk {target}")
            self._used[2] -= self.disks[name].pop(target)
        self._publish()

    def prefetch(self, image: Image) -> None:
        """Simulated: the host holds the image from now on (its facts say so
        with their next publication, as a real agent's heartbeat does; the
        leader never waits for it)."""
        with self._lock:
            self.images.add(image.sha256)

    def list(self) -> list[VmStatus]:
        with self._lock:
            names = list(self.vms)
        return [self.status(n) for n in names]

    def close(self) -> None:
        pass  # nothing held: the simulated host lives in this process


def sim_fleet(
    store: CoordinationStore,
    prefix: str,
    azs: int,
    racks_per_az: int,
    hosts_per_rack: int,
    **agent_args: object,
) -> dict[str, SimAgent]:
    """A fleet of simulated hypervisors, their facts published in batches."""
    agents: dict[str, SimAgent] = {}
    for a in range(1, azs + 1):
        for r in range(1, racks_per_az + 1):
            for h in range(1, hosts_per_rack + 1):
                agent = SimAgent(f"az{a}", f"az{a}-r{r}", f"az{a}-r{r}-h{h}", **agent_args)  # type: ignore[arg-type]
                agent.store, agent.prefix = store, prefix
                agents[agent.endpoint] = agent
    ops = [agent.publish_op() for agent in agents.values()]
    for i in range(0, len(ops), 500):
        store.txn([], ops[i : i + 500])
    return agents
