from __future__ import annotations

from warmcache.model import HostFacts
from warmcache.placement.request import PlacementRequest


class HostHealthy:
    """Drop hosts that are unhealthy or draining."""

    name = "host_healthy"

    def keep(self, host: HostFacts, request: PlacementRequest) -> bool:
        return host.healthy and not host.draining
