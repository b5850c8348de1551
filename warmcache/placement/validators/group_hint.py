from __future__ import annotations

from warmcache.model import HostFacts
from warmcache.placement.request import PlacementRequest


class GroupAntiAffinity:
    """``group_hint``: no two VMs of one group on the same hypervisor."""

    name = "group_anti_affinity"

    def keep(self, host: HostFacts, request: PlacementRequest) -> bool:
        return request.group is None or request.group not in host.groups
