"""The fleet as an operator sees it: every hypervisor with its capacity,
what is booked and free, its VMs by state, its heartbeat and drain, and
the rollups per rack and per AZ (``GET /v1/hosts``, ``GET /v1/capacity``,
the rack gauges of ``/metrics``, the dashboard's capacity picture).

``FleetView`` follows the host view: every change of one host's facts
moves that host's numbers in its rack's and its AZ's rollup (O(1)), and
keeps each AZ's hypervisor names in order (one insertion), so a page of
hosts costs the page, and the capacity of the fleet costs its racks,
never its hosts. A host whose heartbeat expired leaves the host view; it
stays here, ``unreachable`` with its last facts, while pooled VMs are
still recorded on it (the pool index says), so an operator sees what the
outage holds.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from warmcache.drains import Drain
from warmcache.inventory import DrainView, HostView
from warmcache.model import HostFacts

HostStatus = Literal["up", "drained", "unhealthy", "unreachable"]
RESOURCES = ("vcpus", "memory_mib", "disk_gib", "nvme")
MAX_PAGE = 1000


@dataclass
class Capacity:
    """Totals and free amounts over a set of heartbeating hosts (net of each
    agent's buffer); booked is what VMs hold: total - free."""

    hosts: int = 0
    vcpus_total: int = 0
    vcpus_free: int = 0
    memory_mib_total: int = 0
    memory_mib_free: int = 0
    disk_gib_total: int = 0
    disk_gib_free: int = 0
    nvme_total: int = 0
    nvme_free: int = 0

    def add(self, facts: HostFacts, sign: int) -> None:
        self.hosts += sign
        for resource in RESOURCES:
            total = f"{resource}_total"
            free = f"{resource}_free"
            setattr(self, total, getattr(self, total) + sign * getattr(facts, total))
            setattr(self, free, getattr(self, free) + sign * max(0, getattr(facts, free)))

    def of(self, resource: str) -> dict[str, int]:
        total: int = getattr(self, f"{resource}_total")
        free: int = getattr(self, f"{resource}_free")
        return {"total": total, "booked": max(0, total - free), "free": free}

    def shown(self) -> dict[str, dict[str, int]]:
        return {resource: self.of(resource) for resource in RESOURCES}

    @classmethod
    def of_host(cls, facts: HostFacts) -> Capacity:
        capacity = cls()
        capacity.add(facts, 1)
        return capacity


@dataclass(frozen=True)
class HostState:
    """One hypervisor as ``GET /v1/hosts/<hypervisor>`` shows it."""

    facts: HostFacts
    status: HostStatus
    alive: bool  # its agent's heartbeat (its session) is live
    seen_for_s: float | None  # since the agent last published its facts
    gone_for_s: float | None  # since its heartbeat expired (unreachable hosts)
    drain: Drain | None
    drained_by: Literal["host", "rack"] | None
    # VMs on it by state: the pool's records, and "handed_out" for the VMs
    # its agent reports that are in no pool (handed out, or being released).
    vms: dict[str, int]


@dataclass
class RackRollup:
    az: str
    rack: str
    capacity: Capacity = field(default_factory=Capacity)
    unreachable: int = 0


class FleetView:
    def __init__(
        self,
        hosts: HostView,
        drains: DrainView,
        pooled_states: Callable[[str], dict[str, int]],
        now: Callable[[], float],
        catch_up: Callable[[], None] = lambda: None,
    ) -> None:
        self._drains = drains
        self._catch_up = catch_up  # the views' catch-up (a no-op while they follow)
        self._pooled_states = pooled_states  # VMs of the pool index on a host, by state
        self._now = now
        self._lock = threading.Lock()
        self._racks: dict[tuple[str, str], RackRollup] = {}
        self._azs: dict[str, Capacity] = {}
        # Hypervisor names in order (heartbeating and gone), per AZ and per rack.
        self._names: dict[str, list[str]] = {}
        self._rack_names: dict[tuple[str, str], list[str]] = {}
        self._facts: dict[str, HostFacts] = {}  # heartbeating hosts
        self._gone: dict[str, tuple[HostFacts, float]] = {}  # last facts, since when
        hosts.watch(self._host_changed)

    # --- following the host view ----------------------------------------------------------

    def _host_changed(self, old: HostFacts | None, new: HostFacts | None) -> None:
        with self._lock:
            either = new or old
            if either is None:
                return
            hv = either.hypervisor
            before = self._where(hv)
            if old is not None:
                self._rollups(old, -1)
                self._facts.pop(old.hypervisor, None)
                if new is None:  # its heartbeat expired: keep its last facts
                    self._gone[old.hypervisor] = (old, self._now())
                    self._rack(old.az, old.rack).unreachable += 1
            if new is not None:
                back = self._gone.pop(new.hypervisor, None)
                if back is not None:
                    self._rack(back[0].az, back[0].rack).unreachable -= 1
                self._facts[new.hypervisor] = new
                self._rollups(new, 1)
            after = self._where(hv)
            if before != after:
                if before is not None:
                    self._unname(before, hv)
                if after is not None:
                    self._name(after, hv)

    def _where(self, hv: str) -> tuple[str, str] | None:
        facts = self._facts.get(hv)
        if facts is None:
            gone = self._gone.get(hv)
            facts = gone[0] if gone else None
        return None if facts is None else (facts.az, facts.rack)

    def _rack(self, az: str, rack: str) -> RackRollup:
        found = self._racks.get((az, rack))
        if found is None:
            found = self._racks[(az, rack)] = RackRollup(az, rack)
        return found

    def _rollups(self, facts: HostFacts, sign: int) -> None:
        self._rack(facts.az, facts.rack).capacity.add(facts, sign)
        az = self._azs.get(facts.az)
        if az is None:
            az = self._azs[facts.az] = Capacity()
        az.add(facts, sign)

    def _name(self, where: tuple[str, str], hv: str) -> None:
        for names in (self._names.setdefault(where[0], []), self._rack_names.setdefault(where, [])):
            at = bisect.bisect_left(names, hv)
            if at == len(names) or names[at] != hv:
                names.insert(at, hv)

    def _unname(self, where: tuple[str, str], hv: str) -> None:
        for names in (self._names.get(where[0], []), self._rack_names.get(where, [])):
            at = bisect.bisect_left(names, hv)
            if at < len(names) and names[at] == hv:
                del names[at]

    def _forget_if_empty(self, hv: str) -> bool:
        """A gone host with no pooled VMs recorded on it leaves the view."""
        gone = self._gone.get(hv)
        if gone is None or self._pooled_states(hv):
            return False
        del self._gone[hv]
        self._rack(gone[0].az, gone[0].rack).unreachable -= 1
        self._unname((gone[0].az, gone[0].rack), hv)
        return True

    # --- reading ------------------------------------------------------------------------

    def host(self, hypervisor: str) -> HostState | None:
        self._catch_up()
        with self._lock:
            if self._forget_if_empty(hypervisor):
                return None
            return self._state(hypervisor)

    def _state(self, hv: str) -> HostState | None:
        facts = self._facts.get(hv)
        now = self._now()
        gone_for: float | None = None
        if facts is None:
            gone = self._gone.get(hv)
            if gone is None:
                return None
            facts, since = gone
            gone_for = max(0.0, now - since)
        drain = self._drains.of(hv, facts.az, facts.rack)
        drained_by: Literal["host", "rack"] | None = None
        if drain is not None:
            drained_by = "host" if hv in self._drains.now.hosts else "rack"
        vms = dict(self._pooled_states(hv))
        handed_out = len(set(facts.vms)) - sum(vms.values())
        if gone_for is None and handed_out > 0:
            vms["handed_out"] = handed_out
        status: HostStatus
        if gone_for is not None:
            status = "unreachable"
        elif drain is not None:
            status = "drained"
        elif not facts.healthy:
            status = "unhealthy"
        else:
            status = "up"
        seen = None if facts.published_at is None else max(0.0, now - facts.published_at)
        return HostState(
            facts=facts,
            status=status,
            alive=gone_for is None,
            seen_for_s=seen if gone_for is None else None,
            gone_for_s=gone_for,
            drain=drain,
            drained_by=drained_by,
            vms=vms,
        )

    def page(
        self,
        *,
        az: str | None = None,
        rack: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> tuple[list[HostState], str | None]:
        """A page of hosts in (AZ, name) order; the second value is the
        ``after`` of the next page (None: this was the last). Costs the
        page, whatever the fleet's size: each AZ and each rack keeps its
        names in order, and a page starts by bisection."""
        self._catch_up()
        limit = max(1, min(limit, MAX_PAGE))
        after_az, after_hv = _split_after(after)
        shown: list[HostState] = []
        empty: list[str] = []  # unreachable hosts with nothing left on them
        with self._lock:
            for name_az in sorted(self._names) if az is None else [az]:
                if after_az is not None and name_az < after_az:
                    continue
                if rack is None:
                    names = self._names.get(name_az, [])
                else:
                    names = self._rack_names.get((name_az, rack), [])
                start = 0
                if after_az == name_az and after_hv is not None:
                    start = bisect.bisect_right(names, after_hv)
                for at in range(start, len(names)):
                    if len(shown) == limit:
                        break
                    hv = names[at]
                    state = self._state(hv)
                    if state is None:
                        continue
                    if state.status == "unreachable" and not state.vms:
                        empty.append(hv)
                        continue
                    shown.append(state)
                if len(shown) == limit:
                    break
            for hv in empty:
                self._forget_if_empty(hv)
        more = len(shown) == limit and self._has_after(shown[-1].facts, az, rack)
        return shown, f"{shown[-1].facts.az}/{shown[-1].facts.hypervisor}" if more else None

    def _has_after(self, last: HostFacts, az: str | None, rack: str | None) -> bool:
        with self._lock:
            for name_az in sorted(self._names) if az is None else [az]:
                if name_az < last.az:
                    continue
                names = (
                    self._names.get(name_az, [])
                    if rack is None
                    else self._rack_names.get((name_az, rack), [])
                )
                start = bisect.bisect_right(names, last.hypervisor) if name_az == last.az else 0
                if start < len(names):
                    return True
        return False

    def racks(self, az: str | None = None) -> list[RackRollup]:
        """Every rack's rollup (of one AZ), in (AZ, rack) order: O(racks),
        plus the unreachable hosts, each asked whether VMs are still
        recorded on it (the count would otherwise keep hosts nothing is
        left on)."""
        self._catch_up()
        with self._lock:
            for hv in list(self._gone):
                self._forget_if_empty(hv)
            found = [
                r
                for key, r in sorted(self._racks.items())
                if (az is None or key[0] == az) and (r.capacity.hosts or r.unreachable)
            ]
            return [RackRollup(r.az, r.rack, _copy(r.capacity), r.unreachable) for r in found]

    def azs(self) -> dict[str, Capacity]:
        with self._lock:
            return {az: _copy(c) for az, c in sorted(self._azs.items()) if c.hosts}

    def known_azs(self) -> set[str]:
        with self._lock:
            return {az for az, names in self._names.items() if names}

    def drained_per_rack(self, racks: Iterable[RackRollup]) -> dict[tuple[str, str], int]:
        """Hosts drained per rack (a rack's own drain: all of its hosts;
        else its hosts drained one by one): O(racks + drained hosts)."""
        now = self._drains.now
        counted: dict[tuple[str, str], int] = {}
        wanted = {(r.az, r.rack): r for r in racks}
        for hv in list(now.hosts):
            facts = self._facts.get(hv)
            if facts is not None and (facts.az, facts.rack) in wanted:
                key = (facts.az, facts.rack)
                counted[key] = counted.get(key, 0) + 1
        for key, rollup in wanted.items():
            if key in now.racks:
                counted[key] = rollup.capacity.hosts
        return counted


def _copy(capacity: Capacity) -> Capacity:
    return Capacity(**vars(capacity))


def _split_after(after: str | None) -> tuple[str | None, str | None]:
    if not after:
        return None, None
    az, _, hv = after.partition("/")
    return az, hv or None
