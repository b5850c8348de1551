"""The fleet as placement sees it: host facts that agents publish in the
store (``<prefix>/hosts/<az>/<hypervisor>``, bound to each agent's TTL'd
session), kept current from the store's change feed (``PrefixView``).

A dead agent's session expires, its key is deleted, and the host drops out
of this view (and so out of placement and acquisition) within one TTL. The
view is loaded once and then only follows changes; it is never rebuilt from
the whole fleet per cycle or per VM.
"""

from __future__ import annotations

from warmcache.model import HostFacts
from warmcache.ports import CoordinationStore
from warmcache.views import PrefixView


class HostView(PrefixView[HostFacts]):
    def __init__(self, store: CoordinationStore, hosts_dir: str) -> None:
        super().__init__(store, hosts_dir, lambda _key, value: HostFacts.model_validate_json(value))

    def hosts(self) -> list[HostFacts]:
        return sorted(self.values(), key=lambda h: (h.az, h.hypervisor))

    def get(self, hypervisor: str) -> HostFacts | None:
        return next((h for h in self.values() if h.hypervisor == hypervisor), None)
