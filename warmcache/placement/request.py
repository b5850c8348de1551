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
