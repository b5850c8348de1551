"""What the dashboard draws over time, kept in memory on each instance:
every pool's level (ready, reserved, building, and handed out) sampled
once a minute for the last hours, the VMs each requester holds, and how
this instance's acquisitions went (served at once, refused, latency).

``PoolHistory.sample`` is a background job (``warmcache.jobs``): it reads
the pool index's counts (O(pools)) and the holder index (one range of
``<prefix>/held/``: a short key per handed-out VM, once a minute), never
anything per page view. A restarted instance starts a new history.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from warmcache.layout import Keys
from warmcache.model import PoolSummary
from warmcache.ports import CoordinationStore, Event

Pool = tuple[str, str]  # (az, flavor)
OTHER = "?"  # a handed-out VM whose name does not say its flavor (adopted)


@dataclass(frozen=True)
class Level:
    at: float
    ready: int
    reserved: int
    building: int
    held: int  # handed out to requesters


@dataclass(frozen=True)
class Held:
    """Handed-out VMs now: per requester, and per pool."""

    by_requester: dict[str, int]
    by_pool: dict[Pool, int]


def read_held(store: CoordinationStore, keys: Keys) -> Held:
    """One range of the holder index (``<prefix>/held/<requester>/<az>/<name>``);
    a VM's flavor is in its name (``<az>-<flavor>-<10 hex>``, as cycles name them)."""
    kvs, _ = store.range(keys.held_root())
    by_requester: Counter[str] = Counter()
    by_pool: Counter[Pool] = Counter()
    for kv in kvs:
        quoted, az, name = Keys.tail(kv.key, 3)
        by_requester[unquote(quoted)] += 1
        flavor = OTHER
        if name.startswith(f"{az}-") and len(name) > len(az) + 12 and name[-11] == "-":
            flavor = name[len(az) + 1 : -11]
        by_pool[(az, flavor)] += 1
    return Held(dict(by_requester), dict(by_pool))


class PoolHistory:
    def __init__(
        self,
        pools: Callable[[], list[PoolSummary]],
        held: Callable[[], Held],
        now: Callable[[], float],
        every_s: float = 60.0,
        keep_s: float = 6 * 3600.0,
    ) -> None:
        self._pools = pools
        self._held = held
        self._now = now
        self.every_s = every_s
        self._points = max(2, int(keep_s / every_s))
        self._lock = threading.Lock()
        self._levels: dict[Pool, deque[Level]] = {}
        self.held = Held({}, {})

    def sample(self) -> float:
        """Take one sample of every pool; returns when to take the next."""
        at = self._now()
        pools = self._pools()
        held = self._held()
        with self._lock:
            self.held = held
            for p in pools:
                key = (p.az, p.flavor)
                levels = self._levels.get(key)
                if levels is None:
                    levels = self._levels[key] = deque(maxlen=self._points)
                levels.append(Level(at, p.ready, p.reserved, p.building, held.by_pool.get(key, 0)))
        return self.every_s

    def levels(self, az: str, flavor: str) -> list[Level]:
        with self._lock:
            return list(self._levels.get((az, flavor), ()))


class AcquisitionStats:
    """This instance's acquisitions per pool: how many were served at once
    (all their VMs, in one call), how many refused and why, and the latency
    of the last ``keep`` served (for percentiles). Fed by the event sink."""

    def __init__(self, keep: int = 2000) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._served: Counter[Pool] = Counter()
        self._refused: dict[Pool, Counter[str]] = {}
        self._latency: dict[Pool, deque[float]] = {}

    def observe(self, event: Event) -> None:
        f = event.fields
        pool = (str(f.get("az", "")), str(f.get("flavor", "")))
        with self._lock:
            if event.type == "acquisition":
                self._served[pool] += 1
                latencies = self._latency.get(pool)
                if latencies is None:
                    latencies = self._latency[pool] = deque(maxlen=self._keep)
                latencies.append(float(f.get("latency_ms", 0.0)))
            elif event.type == "acquisition.failed":
                self._refused.setdefault(pool, Counter())[str(f.get("error", "error"))] += 1

    def of(self, az: str, flavor: str) -> dict[str, object]:
        """served, refused (by code), share served, latency percentiles (ms)."""
        pool = (az, flavor)
        with self._lock:
            served = self._served.get(pool, 0)
            refused = dict(self._refused.get(pool, {}))
            latencies = sorted(self._latency.get(pool, ()))
        total = served + sum(refused.values())
        return {
            "served": served,
            "refused": refused,
            "share": served / total if total else None,
            "p50": _percentile(latencies, 0.50),
            "p90": _percentile(latencies, 0.90),
            "p99": _percentile(latencies, 0.99),
        }


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
