"""NUMA pinning, greedy (DESIGN.md §10), pure: no libvirt, no I/O.

Three rules, checked for every VM:

1. no VM has more vCPUs than the largest socket (NUMA node) has CPUs: a VM
   never spans nodes;
2. odd vCPU counts are rejected (pairs of hyperthreads stay together);
3. the vCPUs of all VMs together never exceed the host's CPUs minus the
   reserved buffer. The buffer is the lowest-numbered CPUs (the host's
   housekeeping runs there), and they are never pinned.

``plan`` places a whole set of VMs: sorted by vCPUs descending, each goes to
the first node with enough free CPUs and is pinned to that node's lowest
free CPUs (first-fit decreasing). ``place`` adds one VM next to VMs that are
already pinned (running VMs are never moved).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from warmcache.agent_codes import AgentCode
from warmcache.ports import Pinning


class NumaRejected(Exception):
    """A VM breaks a pinning rule, or no node has room for it."""

    def __init__(self, code: AgentCode, message: str) -> None:
        super().__init__(message)
        self.code = code


Pin = Pinning  # node + the host CPU of each vCPU


@dataclass(frozen=True)
class Topology:
    nodes: tuple[tuple[int, ...], ...]  # host CPU ids, per NUMA node
    reserved: int = 0  # CPUs kept for the host

    @classmethod
    def uniform(cls, nodes: int, cpus_per_node: int, reserved: int = 0) -> Topology:
        return cls(
            tuple(tuple(range(n * cpus_per_node, (n + 1) * cpus_per_node)) for n in range(nodes)),
            reserved,
        )

    def __post_init__(self) -> None:
        every = [c for node in self.nodes for c in node]
        if len(every) != len(set(every)):
            raise ValueError("a CPU belongs to two NUMA nodes")
        if not 0 <= self.reserved <= len(every):
            raise ValueError("reserved must be between 0 and the host's CPU count")

    @property
    def total(self) -> int:
        return sum(len(node) for node in self.nodes)

    @property
    def largest_node(self) -> int:
        return max((len(node) for node in self.nodes), default=0)

    def reserved_cpus(self) -> frozenset[int]:
        return frozenset(sorted(c for node in self.nodes for c in node)[: self.reserved])

    def usable(self) -> int:
        return self.total - self.reserved


def check_shape(topology: Topology, vcpus: int) -> None:
    """Rules 1 and 2: could a VM of ``vcpus`` ever be pinned on this host?"""
    if vcpus < 1:
        raise NumaRejected(AgentCode.INVALID_REQUEST, "a VM needs at least one vCPU")
    if vcpus % 2:
        raise NumaRejected(
            AgentCode.INVALID_REQUEST,
            f"{vcpus} vCPUs: odd vCPU counts are not pinned (use an even count)",
        )
    if vcpus > topology.largest_node:
        raise NumaRejected(
            AgentCode.INVALID_REQUEST,
            f"{vcpus} vCPUs exceed the largest NUMA node ({topology.largest_node} CPUs)",
        )


def check(topology: Topology, vcpus: int, already: int = 0) -> None:
    """Raise ``NumaRejected`` unless a VM of ``vcpus`` may join ``already``
    pinned vCPUs on this host (the three rules)."""
    check_shape(topology, vcpus)
    if already + vcpus > topology.usable():
        raise NumaRejected(
            AgentCode.INSUFFICIENT_CAPACITY,
            f"{vcpus} more vCPUs would pin {already + vcpus} of the "
            f"{topology.usable()} CPUs left after the reserved buffer",
        )


def _free_by_node(topology: Topology, taken: Iterable[int]) -> list[list[int]]:
    used = set(taken) | topology.reserved_cpus()
    return [[c for c in sorted(node) if c not in used] for node in topology.nodes]


def place(topology: Topology, pinned: Collection[Pin], vcpus: int) -> Pin:
    """Pin one more VM next to the ``pinned`` ones (first node that fits)."""
    already = sum(len(p.cpus) for p in pinned)
    check(topology, vcpus, already)
    free = _free_by_node(topology, (c for p in pinned for c in p.cpus))
    for node, cpus in enumerate(free):
        if len(cpus) >= vcpus:
            return Pin(node, tuple(cpus[:vcpus]))
    raise NumaRejected(
        AgentCode.INSUFFICIENT_CAPACITY,
        f"no NUMA node has {vcpus} free CPUs (free per node: {[len(c) for c in free]})",
    )


def plan(topology: Topology, vms: Mapping[str, int]) -> dict[str, Pin]:
    """Pin a set of VMs from scratch: vCPUs descending, first fit."""
    pinned: dict[str, Pin] = {}
    for name, vcpus in sorted(vms.items(), key=lambda kv: (-kv[1], kv[0])):
        pinned[name] = place(topology, list(pinned.values()), vcpus)
    return pinned


def free_per_node(topology: Topology, pinned: Iterable[Pin]) -> tuple[int, ...]:
    """Free CPUs on each node (what placement's NUMA-fit rule reads)."""
    return tuple(len(c) for c in _free_by_node(topology, (c for p in pinned for c in p.cpus)))
