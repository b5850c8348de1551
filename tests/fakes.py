"""Test doubles for the host-agent port (in-memory hosts with real capacity
arithmetic), so build-cycle tests run without processes or libvirt."""

from __future__ import annotations

import threading
from collections.abc import Callable

from warmcache.errors import AgentRejected, AgentUnavailable, InsufficientHostCapacity
from warmcache.model import Flavor, HostFacts
from warmcache.ports import CoordinationStore, VmSpec, VmStatus


class FakeAgent:
    def __init__(self, az: str, rack: str, hypervisor: str, vcpus: int = 16,
                 memory_mib: int = 65536, disk_gib: int = 2000) -> None:
        self._facts = HostFacts(
            hypervisor=hypervisor, rack=rack, az=az, vcpus_total=vcpus, vcpus_free=vcpus,
            memory_mib_total=memory_mib, memory_mib_free=memory_mib, disk_gib_total=disk_gib,
            disk_gib_free=disk_gib, endpoint=f"fake:{hypervisor}",
        )
        self._store: CoordinationStore | None = None
        self._prefix = ""
        self.vms: dict[str, tuple[Flavor, str | None]] = {}
        self.unavailable_times = 0  # fail this many calls with AgentUnavailable
        self.unhealthy: set[str] = set()
        self.before_create: Callable[[VmSpec], None] | None = None
        self.calls: list[str] = []
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"fake:{self._facts.hypervisor}"

    def _maybe_down(self) -> None:
        if self.unavailable_times > 0:
            self.unavailable_times -= 1
            raise AgentUnavailable(self.endpoint, "connection refused")

    def attach(self, store: CoordinationStore, prefix: str) -> None:
        """Publish facts into the store, as a real agent's inventory does
        (without a session: these fakes never die on their own)."""
        self._store, self._prefix = store, prefix
        self.publish()

    def publish(self) -> None:
        if self._store is not None:
            f = self.current_facts()
            self._store.put(f"{self._prefix}/hosts/{f.az}/{f.hypervisor}", f.model_dump_json())

    def withdraw(self) -> None:
        """The agent died: its heartbeat key is gone."""
        assert self._store is not None
        self._store.delete(f"{self._prefix}/hosts/{self._facts.az}/{self._facts.hypervisor}")

    def current_facts(self) -> HostFacts:
        with self._lock:
            f = self._facts
            for flavor, group in self.vms.values():
                f = f.minus(flavor, "x", group)
            return f.model_copy(update={"vms": tuple(self.vms)})

    def facts(self) -> HostFacts:
        with self._lock:
            self._maybe_down()
        return self.current_facts()

    def create(self, spec: VmSpec) -> VmStatus:
        if self.before_create:
            self.before_create(spec)
        with self._lock:
            self.calls.append(f"create {spec.name}")
            self._maybe_down()
            if spec.name in self.vms:
                raise AgentRejected(self.endpoint, "already_exists", spec.name)
        if not self.facts().fits(spec.flavor):
            raise InsufficientHostCapacity(self.endpoint, "insufficient_capacity", spec.name)
        with self._lock:
            self.vms[spec.name] = (spec.flavor, spec.group)
        self.publish()
        return self.status(spec.name)

    def delete(self, name: str) -> None:
        with self._lock:
            self.calls.append(f"delete {name}")
            self._maybe_down()
            if self.vms.pop(name, None) is None:
                raise AgentRejected(self.endpoint, "not_found", name)
        self.publish()

    def status(self, name: str) -> VmStatus:
        with self._lock:
            if name not in self.vms:
                raise AgentRejected(self.endpoint, "not_found", name)
            healthy = name not in self.unhealthy
            return VmStatus(name, "running" if healthy else "crashed", healthy, f"uuid-{name}")

    def list(self) -> list[VmStatus]:
        return [self.status(n) for n in list(self.vms)]


def fleet(azs: tuple[str, ...] = ("az1",), racks: int = 3, per_rack: int = 2,
          **capacity: int) -> dict[str, FakeAgent]:
    agents = {}
    for az in azs:
        for r in range(1, racks + 1):
            for h in range(1, per_rack + 1):
                agent = FakeAgent(az, f"{az}-r{r}", f"{az}-r{r}-h{h}", **capacity)
                agents[agent.endpoint] = agent
    return agents


class RecordingAlerts:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def alert(self, subject: str, body: str) -> None:
        self.sent.append((subject, body))
