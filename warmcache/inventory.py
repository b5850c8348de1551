"""The fleet as placement and acquisition see it: host facts that agents
publish in the store (``<prefix>/hosts/<az>/<hypervisor>``, bound to each
agent's TTL'd session), kept current from the store's change feed.

A dead agent's session expires, its key is deleted, and the host drops out
of this view (and so out of placement and acquisition) within one TTL. The
view is loaded once and then only follows changes; it is never rebuilt from
the whole fleet per cycle or per VM, and a host is found by a dict lookup.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from warmcache.drains import Drain, DrainKey, Drains
from warmcache.layout import Keys
from warmcache.model import HostFacts
from warmcache.ports import CoordinationStore
from warmcache.views import PrefixView

# Called with (hypervisor, present) when a host appears or goes away.
PresenceListener = Callable[[str, bool], None]
# Called with (old, new) facts on every change of one host's facts.
FactsListener = Callable[[HostFacts | None, HostFacts | None], None]
# Called with ((az, rack), evacuating) when a rack's drain starts or ends.
RackListener = Callable[[tuple[str, str], bool], None]


class HostView(PrefixView[HostFacts]):
    def __init__(self, store: CoordinationStore, hosts_dir: str) -> None:
        self._by_hv: dict[str, HostFacts] = {}
        self._per_az: Counter[str] = Counter()  # kept with _by_hv: O(1) per change
        self._listeners: list[PresenceListener] = []
        self._watchers: list[FactsListener] = []
        super().__init__(store, hosts_dir, lambda _key, value: HostFacts.model_validate_json(value))

    def hosts(self) -> list[HostFacts]:
        with self._lock:
            return sorted(self._by_hv.values(), key=lambda h: (h.az, h.hypervisor))

    def get(self, hypervisor: str) -> HostFacts | None:
        return self._by_hv.get(hypervisor)

    def count(self) -> int:
        return len(self._by_hv)

    def count_by_az(self) -> dict[str, int]:
        """Heartbeating hosts per AZ (O(AZs), whatever the fleet's size)."""
        with self._lock:
            return {az: n for az, n in self._per_az.items() if n}

    def subscribe(self, listener: PresenceListener) -> None:
        """``listener`` hears of every host present now, then of every
        arrival and departure (from the thread that applies the change)."""
        with self._lock:
            self._listeners.append(listener)
            for hv in self._by_hv:
                listener(hv, True)

    def watch(self, watcher: FactsListener) -> None:
        """``watcher(None, facts)`` for every host present now, then
        ``watcher(old, new)`` for every change of a host's facts (None: it
        appears or goes), from the thread that applies the change."""
        with self._lock:
            self._watchers.append(watcher)
            for facts in self._by_hv.values():
                watcher(None, facts)

    def _changed(self, key: str, old: HostFacts | None, new: HostFacts | None) -> None:
        for watcher in self._watchers:
            watcher(old, new)
        if old is not None and (new is None or new.hypervisor != old.hypervisor):
            gone = self._by_hv.pop(old.hypervisor)
            self._per_az[gone.az] -= 1
            for listener in self._listeners:
                listener(old.hypervisor, False)
        if new is not None:
            previous = self._by_hv.get(new.hypervisor)
            if previous is not None:
                self._per_az[previous.az] -= 1
            self._by_hv[new.hypervisor] = new
            self._per_az[new.az] += 1
            if previous is None:
                for listener in self._listeners:
                    listener(new.hypervisor, True)


class DrainView(PrefixView[tuple[DrainKey, Drain]]):
    """Drained hypervisors and racks (``warmcache.drains``): no new VM is
    placed there, and the pooled VMs of those evacuating ``now`` are not
    handed out. Listeners hear when a host's or a rack's evacuation starts
    or ends (not of ``as_acquired`` drains: their VMs stay in their pools)."""

    def __init__(self, store: CoordinationStore, keys: Keys) -> None:
        self._keys = keys
        self.now = Drains()
        self._listeners: list[PresenceListener] = []
        self._rack_listeners: list[RackListener] = []
        super().__init__(
            store,
            keys.drain(),
            lambda key, value: (DrainKey.parse(keys, key), Drain.parse(value)),
        )

    def drained(self) -> set[str]:
        """Hypervisors drained one by one."""
        with self._lock:
            return set(self.now.hosts)

    def __contains__(self, hypervisor: object) -> bool:
        return hypervisor in self.now.hosts

    def of(self, hypervisor: str, az: str, rack: str) -> Drain | None:
        with self._lock:
            return self.now.of(hypervisor, az, rack)

    def subscribe(self, listener: PresenceListener, racks: RackListener | None = None) -> None:
        """``listener(hypervisor, evacuating)`` for hosts' own drains and
        ``racks((az, rack), evacuating)`` for racks': every evacuation now,
        then every start and end."""
        with self._lock:
            self._listeners.append(listener)
            for hv, drain in self.now.hosts.items():
                if drain.evacuate == "now":
                    listener(hv, True)
            if racks is not None:
                self._rack_listeners.append(racks)
                for rack, drain in self.now.racks.items():
                    if drain.evacuate == "now":
                        racks(rack, True)

    def _changed(
        self,
        key: str,
        old: tuple[DrainKey, Drain] | None,
        new: tuple[DrainKey, Drain] | None,
    ) -> None:
        target = (new or old or (None, None))[0]
        if target is None:
            return
        was = old is not None and old[1].evacuate == "now"
        self.now.set(target, new[1] if new else None)
        now = new is not None and new[1].evacuate == "now"
        if was == now:
            return
        if target.hypervisor is not None:
            for listener in self._listeners:
                listener(target.hypervisor, now)
        elif target.rack is not None:
            for rack_listener in self._rack_listeners:
                rack_listener(target.rack, now)
