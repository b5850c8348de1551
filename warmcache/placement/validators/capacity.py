from __future__ import annotations

from warmcache.model import HostFacts
from warmcache.placement.request import PlacementRequest


class HasCapacity:
    """Drop hosts without vCPUs, memory and disk left for the flavor (agents
    report capacity net of their reserved buffer)."""

    name = "has_capacity"

    def keep(self, host: HostFacts, request: PlacementRequest) -> bool:
        return host.fits(request.flavor)
