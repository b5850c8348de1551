"""Test doubles for the host-agent port: the simulated hosts of
``warmcache.testing.sim`` with hooks for failures, so build-cycle tests run without
processes or libvirt."""

from __future__ import annotations

from collections.abc import Callable

from warmcache.errors import AgentUnavailable, ImageInvalid
from warmcache.images import Image
from warmcache.layout import Keys
from warmcache.model import HostFacts
from warmcache.ports import CoordinationStore, VmSpec, VmStatus
from warmcache.testing.sim import SimAgent


class FakeAgent(SimAgent):
    """A simulated host (warmcache.testing.sim) with hooks tests pull: transient
    unavailability, VMs that come up sick, a callback before each create."""

    def __init__(
        self,
        az: str,
        rack: str,
        hypervisor: str,
        vcpus: int = 16,
        memory_mib: int = 65536,
        disk_gib: int = 2000,
    ) -> None:
        super().__init__(
            az, rack, hypervisor, vcpus=vcpus, memory_mib=memory_mib, disk_gib=disk_gib
        )
        self.unavailable_times = 0  # fail this many calls with AgentUnavailable
        self.unhealthy: set[str] = set()
        self.creating: set[str] = set()  # still booting, as libvirt reports it
        self.before_create: Callable[[VmSpec], None] | None = None
        self.guest_addresses: dict[str, tuple[str, ...]] = {}  # what a guest reports having
        self.calls: list[str] = []
        self.wont_resume: set[str] = set()  # VMs whose resume fails
        self.bad_images: set[str] = set()  # sha256 of images this host refuses (image_invalid)
        self.wont_recycle: set[str] = set()  # VMs whose recycle fails (and deletes them)

    def _maybe_down(self) -> None:
        with self._lock:
            if self.unavailable_times > 0:
                self.unavailable_times -= 1
                raise AgentUnavailable(self.endpoint, "connection refused")

    def attach(self, store: CoordinationStore, prefix: str) -> None:
        """Publish facts into the store, as a real agent's inventory does
        (without a session: these fakes never die on their own)."""
        self.store, self.prefix = store, prefix
        self._publish()

    def withdraw(self) -> None:
        """The agent died: its heartbeat key is gone."""
        assert self.store is not None
        f = self.current_facts()
        self.store.delete(Keys(self.prefix).host(f.az, f.hypervisor))

    def current_facts(self) -> HostFacts:
        """The facts, without the transient-failure hook."""
        return super().facts()

    def facts(self) -> HostFacts:
        self._maybe_down()
        return super().facts()

    def create(self, spec: VmSpec) -> VmStatus:
        if self.before_create:
            self.before_create(spec)
        self.calls.append(f"create {spec.name}")
        self._maybe_down()
        if spec.image is not None and spec.image.sha256 in self.bad_images:
            raise ImageInvalid(self.endpoint, f"{spec.image.id}: checksum mismatch (test)")
        super().create(spec)
        return self.status(spec.name)

    def delete(self, name: str) -> None:
        self.calls.append(f"delete {name}")
        self._maybe_down()
        super().delete(name)

    def status(self, name: str) -> VmStatus:
        super().status(name)  # not_found when it is not here
        if name in self.creating:
            return VmStatus(name, "creating", False, f"uuid-{name}")
        healthy = name not in self.unhealthy
        kept = self.standbys.get(name, "running")
        return VmStatus(
            name,
            (kept if healthy else "crashed"),
            healthy,
            f"uuid-{name}",
            self.guest_addresses.get(name, ()) if kept == "running" else (),
            kept,
        )

    def recycle(self, spec: VmSpec) -> VmStatus:
        self.calls.append(f"recycle {spec.name}")
        self._maybe_down()
        if spec.name in self.wont_recycle:
            from warmcache.errors import HypervisorError

            super().delete(spec.name)  # a failed recycle deletes the VM
            raise HypervisorError(self.endpoint, f"{spec.name}: recycle failed (test)")
        super().recycle(spec)
        return self.status(spec.name)

    def attach_disk(self, name: str, target: str, size_gib: int, preallocation: str) -> None:
        self.calls.append(f"attach_disk {name} {target}")
        self._maybe_down()
        super().attach_disk(name, target, size_gib, preallocation)

    def detach_disk(self, name: str, target: str) -> None:
        self.calls.append(f"detach_disk {name} {target}")
        self._maybe_down()
        super().detach_disk(name, target)

    def prefetch(self, image: Image) -> None:
        self.calls.append(f"prefetch {image.id}")
        self._maybe_down()
        if image.sha256 in self.bad_images:
            raise ImageInvalid(self.endpoint, f"{image.id}: checksum mismatch (test)")
        super().prefetch(image)

    def standby(self, name: str, state: str) -> VmStatus:
        self.calls.append(f"standby {name} {state}")
        self._maybe_down()
        if state == "running" and name in self.wont_resume:
            from warmcache.errors import HypervisorError

            raise HypervisorError(self.endpoint, f"{name}: restore failed (test)")
        return super().standby(name, state)

    def list(self) -> list[VmStatus]:
        return [self.status(n) for n in list(self.vms)]


def fleet(
    azs: tuple[str, ...] = ("az1",), racks: int = 3, per_rack: int = 2, **capacity: int
) -> dict[str, FakeAgent]:
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

    @property
    def dropped(self) -> int:
        return 0

    def close(self) -> None:
        pass
