from __future__ import annotations

from warmcache.model import HostFacts
from warmcache.placement.request import PlacementRequest


class SpreadRacks:
    """Prefer racks holding fewer VMs of this flavor: a balanced pool is what
    lets rack-aware acquisitions of N succeed."""

    name = "spread_racks"
    weight = 300

    def score(self, host: HostFacts, request: PlacementRequest) -> float:
        return 1.0 / (1 + request.per_rack[host.rack])


class SpreadHypervisors:
    """Then prefer hypervisors holding fewer VMs of this flavor."""

    name = "spread_hypervisors"
    weight = 200

    def score(self, host: HostFacts, request: PlacementRequest) -> float:
        return 1.0 / (1 + request.per_hypervisor[host.hypervisor])
