from __future__ import annotations

from warmcache.model import HostFacts
from warmcache.placement.request import PlacementRequest


class NumaFit:
    """Drop hosts whose agent could not pin the flavor: no NUMA node with
    enough free CPUs, or an odd vCPU count (the agent's pinning rules)."""

    name = "numa_fit"

    def keep(self, host: HostFacts, request: PlacementRequest) -> bool:
        return host.numa_fits(request.flavor.vcpus)
