from __future__ import annotations

from warmcache.model import HostFacts
from warmcache.placement.request import PlacementRequest


class SpanFaultDomains:
    """Until the batch spans the racks its rule asks (``min_fault_domain``),
    prefer a rack the batch has not used yet: outranks every other
    preference, so a batch spans min(k, min_fault_domain) racks whenever
    that many racks have a host that can take the VM. Once the span is met
    every host scores alike and the spread preferences decide."""

    name = "span_fault_domains"
    weight = 400

    def score(self, host: HostFacts, request: PlacementRequest) -> float:
        return 1.0 if request.span_met or not request.batch_racks[host.rack] else 0.0
