from __future__ import annotations

from warmcache.model import HostFacts
from warmcache.placement.request import PlacementRequest


class PackTightly:
    """Among equally spread hosts, prefer the fullest one (least vCPUs left
    after placing), so large flavors still find whole free hosts later."""

    name = "pack_tightly"
    weight = 100

    def score(self, host: HostFacts, request: PlacementRequest) -> float:
        if host.vcpus_total <= 0:
            return 0.0
        left = host.vcpus_free - request.flavor.vcpus
        # Coarse buckets, so tiny differences do not defeat the random pick
        # among the top few (it spreads concurrent builders apart).
        return round(1.0 - left / host.vcpus_total, 1)
