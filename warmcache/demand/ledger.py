"""``DemandLedger``: what this instance was asked for, per pool, written to
the store for the leader's demand forecast (``warmcache.demand``).

Every acquisition that reaches a pool is demand: the ones served and the
ones refused with ``no_capacity`` (what a pool too small was asked for is
exactly what sizing must see). A refused *named* claim is counted once per
``claim_id`` however often its caller retries it; an unnamed request that
a caller retries in a loop counts each time (name your claims).

Each instance writes only its own keys, one per pool and hour
(``<prefix>/demand/<az>/<flavor>/<hour>/<node>``), so no write conflicts
with another's and the hot path does no I/O: ``record`` adds to memory,
``flush`` (every ``demand.flush_s``, and when the service stops) writes
what changed. The first write of a key this process did not write before
adds to what the store holds (a restarted instance of the same name
continues its chunk). A flush that fails keeps the counts for the next
one; a crash loses at most one ``flush_s`` of demand history.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from warmcache.demand.forecast import HOUR_S, Chunk, hour_of
from warmcache.errors import StoreError
from warmcache.layout import Keys
from warmcache.ports import Clock, CoordinationStore

log = logging.getLogger(__name__)
REFUSED_IDS_KEPT = 4096  # named claims whose refusal was already counted

Slot = tuple[str, str, float]  # az, flavor, hour start


class DemandLedger:
    def __init__(
        self,
        store: CoordinationStore,
        keys: Keys,
        clock: Clock,
        node: str,
        *,
        bin_s: float,
        keep_h: int,
    ) -> None:
        self._store = store
        self._keys = keys
        self._clock = clock
        self._node = node
        self._bin_s = bin_s
        self._keep_s = keep_h * HOUR_S
        self._pending: dict[Slot, Chunk] = {}  # counted, not written yet
        self._written: dict[Slot, Chunk] = {}  # what our key holds (this and the last hour)
        self._refused: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._flushing = threading.Lock()

    def record(self, az: str, flavor: str, count: int, refused_claim: str | None = None) -> None:
        """A request for ``count`` VMs of one pool. ``refused_claim``: the
        id of a named claim refused for capacity (counted once)."""
        at = self._clock.now()
        with self._lock:
            if refused_claim is not None:
                if refused_claim in self._refused:
                    return
                self._refused[refused_claim] = None
                if len(self._refused) > REFUSED_IDS_KEPT:
                    self._refused.popitem(last=False)
            slot = (az, flavor, hour_of(at))
            chunk = self._pending.get(slot)
            if chunk is None:
                chunk = self._pending[slot] = Chunk.empty(slot[2], self._bin_s)
            chunk.record(at, count)

    def released(self, az: str, flavor: str, held_s: float) -> None:
        """A VM of the pool given back after ``held_s`` seconds held (the
        pool's VM lifetimes, kept with its demand)."""
        at = self._clock.now()
        with self._lock:
            slot = (az, flavor, hour_of(at))
            chunk = self._pending.get(slot)
            if chunk is None:
                chunk = self._pending[slot] = Chunk.empty(slot[2], self._bin_s)
            chunk.release(held_s)

    @property
    def pending(self) -> int:
        """Requests counted and not written yet."""
        with self._lock:
            return sum(sum(c.sizes.values()) for c in self._pending.values())

    def flush(self) -> int:
        """Write what changed; returns the keys written. ``StoreError`` is
        logged and the counts kept for the next flush."""
        with self._flushing:
            with self._lock:
                pending, self._pending = self._pending, {}
            now = self._clock.now()
            written = 0
            failed: dict[Slot, Chunk] = {}
            for slot, chunk in sorted(pending.items()):
                if slot[2] < now - self._keep_s:
                    continue  # older than any forecast reads
                try:
                    self._write(slot, chunk)
                    written += 1
                except StoreError as exc:
                    log.warning("demand ledger: %s/%s not written: %s", slot[0], slot[1], exc)
                    failed[slot] = chunk
            with self._lock:
                for slot, chunk in failed.items():
                    again = self._pending.get(slot)
                    if again is not None:
                        chunk.add(again)
                    self._pending[slot] = chunk
                # Only the running and the last hour are written again.
                for slot in [s for s in self._written if s[2] < hour_of(now) - HOUR_S]:
                    del self._written[slot]
            return written

    def _write(self, slot: Slot, chunk: Chunk) -> None:
        az, flavor, hour = slot
        key = self._keys.demand(az, flavor, int(hour), self._node)
        base = self._written.get(slot)
        if base is None:
            kv = self._store.get(key)
            base = Chunk.empty(hour, self._bin_s)
            if kv is not None:
                try:
                    stored = Chunk.from_json(kv.value)
                    if stored.bin_s == self._bin_s and stored.start == hour:
                        base = stored
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("demand ledger: %s unreadable, rewritten: %s", key, exc)
        total = Chunk(
            base.start,
            base.bin_s,
            list(base.counts),
            base.sizes.copy(),
            base.released,
            base.held_s,
        )
        total.add(chunk)
        self._store.put(key, total.to_json())
        self._written[slot] = total
