"""Disjoint shares of every pool across the serving instances.

Two instances that claim from the same few VMs conflict, and a conflict
costs a round trip. Each VM therefore has one preferred instance, chosen by
rendezvous (highest random weight) hashing of the VM's name over the live
instances from the service registry: every instance computes the same owner
without talking to the others, and when an instance joins or leaves only
the VMs it gains or loses change hands. An instance claims from its own
share first and from the whole pool only when its share cannot satisfy a
request, so shares shape conflicts, never answers.

The hash must agree across processes, so it is BLAKE2b, not ``hash()``
(which Python salts per process).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(node: str, name: str) -> int:
    digest = hashlib.blake2b(f"{node}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Shares:
    """Which VMs this node prefers, among ``nodes`` (itself included)."""

    def __init__(self, me: str, nodes: Iterable[str] = ()) -> None:
        self.me = me
        self.nodes: tuple[str, ...] = tuple(sorted(set(nodes) | {me}))

    @property
    def active(self) -> bool:
        """With a single instance its share is the whole pool."""
        return len(self.nodes) > 1

    def owner(self, name: str) -> str:
        return max(self.nodes, key=lambda node: weight(node, name))

    def mine(self, name: str) -> bool:
        return not self.active or self.owner(name) == self.me
