"""What placement is asked: one VM of a flavor, with what is already placed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from warmcache.model import Flavor


@dataclass(frozen=True)
class PlacementRequest:
    flavor: Flavor
    group: str | None = None
    # VMs of this flavor already in the pool or planned, per rack / hypervisor:
    # the spread preferences read these.
    per_rack: Counter[str] = field(default_factory=Counter)
    per_hypervisor: Counter[str] = field(default_factory=Counter)
    # The VMs this batch (one cycle's builds of the pool) placed so far, per
    # rack, and how many distinct racks the batch must span (the rule's
    # ``min_fault_domain``, capped by the batch's size): until it does, a
    # rack the batch has not used yet comes first.
    batch_racks: Counter[str] = field(default_factory=Counter)
    span: int = 0

    @property
    def span_met(self) -> bool:
        return len(self.batch_racks) >= self.span
