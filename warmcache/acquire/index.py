"""``PoolIndex``: every pool's acquirable VMs, indexed, kept current from
the change feed, so that an acquisition costs the same on a pool of 30 VMs
and on a fleet of 100,000 hypervisors.

The index is a view of ``<prefix>/pool/`` (``PrefixView``: each record with
its revision) plus, per pool (AZ, flavor), four ``Stock``s of VM keys:
ready VMs, ready or reserved VMs (``use_reserve``), and the same two
restricted to this instance's share (``shares.py``). A VM is in a stock
while its record is acquirable: the right state, no failed health check,
its hypervisor heartbeating (the host view) and not evacuating (its own
or its rack's drain, the drain view), and no claim of this instance in
flight on it. The pool's counts (``summary``, ``pooled``) leave out the
ready and reserved VMs of unreachable and evacuating hosts, and say how
many there are. Every change (one
record from the feed, a host arriving or leaving, a drain, a claim) moves
only the VMs it concerns, in O(1) each; nothing is ever copied or rescanned
per acquisition.

Claims mark their VMs in flight before their transaction, so concurrent
requests on one instance never select the same VM; a successful claim
removes its VMs at the transaction's revision (``observe``), a failed one
puts them back and applies the current state the store reported.

Thread-safe: one lock (the view's) guards everything, and listeners of the
host and drain views take it after theirs, never the other way round.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping

from warmcache.acquire.modes import SELECTORS
from warmcache.acquire.shares import Shares
from warmcache.acquire.stock import Stock
from warmcache.inventory import DrainView, HostView
from warmcache.layout import Keys
from warmcache.model import (
    HELD_STATES,
    POOLED_STATES,
    BuildRule,
    InstanceState,
    Mode,
    PoolInstance,
    PoolSummary,
)
from warmcache.ports import CoordinationStore, KeyValue
from warmcache.views import PrefixView

Pool = tuple[str, str]  # (az, flavor)

# Stock slots per pool: tier (ready only, or ready + reserved) x share x
# generation (current only, or any: stale VMs too, for rules that allow them)
# x reach (standby tiers: every VM; running ones only; running or paused).
READY, WITH_RESERVE, READY_MINE, WITH_RESERVE_MINE = range(4)
ANY = 4  # added to a slot: the same stock with stale VMs in it
RUNNING = 8  # added to a slot: the same stock, running VMs only (tiered pools)
WARM = 16  # added to a slot: running or paused VMs only (tiered pools)
SLOTS = 24
# VMs re-dealt under one hold of the lock after a membership change (a few
# ms of work; acquisitions get the lock between chunks).
REDEAL_CHUNK = 1000


def _let_others_in() -> None:
    time.sleep(0)  # the GIL and the lock, to a waiting acquisition


class PoolIndex(PrefixView[PoolInstance]):
    def __init__(
        self, store: CoordinationStore, keys: Keys, *, hosts: HostView, drains: DrainView, node: str
    ) -> None:
        super().__init__(
            store, keys.pool_dir(), lambda _k, value: PoolInstance.model_validate_json(value)
        )
        self._live: set[str] = set()
        self._drained: set[str] = set()  # hosts evacuating now (their own drain)
        self._drained_racks: set[tuple[str, str]] = set()  # (az, rack) evacuating now
        self._on_hv: dict[str, set[str]] = {}
        self._on_rack: dict[tuple[str, str], set[str]] = {}
        self._placed: dict[str, tuple[Pool, str, str, int]] = {}  # key -> pool, rack, hv, slots
        self._stocks: dict[Pool, list[Stock]] = {}
        self._inflight: dict[str, Pool] = {}
        self._inflight_by_pool: Counter[Pool] = Counter()
        self._settled = threading.Condition(self._lock)
        self._shares = Shares(node)
        self._dealt = len(self._shares.nodes)  # instances of the last finished re-deal
        self._mine: dict[str, bool] = {}
        self._states: dict[Pool, Counter[InstanceState]] = {}
        # Ready VMs per rack that count (on a live host not evacuating).
        self._ready_by_rack: dict[Pool, Counter[str]] = {}
        self._stale: Counter[Pool] = Counter()  # ready or reserved VMs marked stale
        # Ready or reserved VMs that do not count: on a host whose heartbeat
        # is gone ("unreachable") or that is evacuating ("drained"), per
        # pool and state; and where each such VM is counted.
        self._away: dict[Pool, Counter[tuple[InstanceState, str]]] = {}
        self._counted: dict[str, tuple[Pool, InstanceState, str, str, str]] = {}
        self._standby: dict[Pool, Counter[str]] = {}  # counted VMs by how they wait
        # Pools that have held a VM not running (issue 29's tiers): their VMs
        # are in the RUNNING and WARM stocks too, so that acquisitions take
        # running VMs first, then paused, then saved. Once tiered, a pool
        # stays so (no re-placing back and forth as its last paused VM goes).
        self._tiered: set[Pool] = set()
        hosts.subscribe(self._host_presence)
        drains.subscribe(self._drain_presence, self._rack_drain)

    # --- keeping the stocks current -----------------------------------------------------

    def _changed(self, key: str, old: PoolInstance | None, new: PoolInstance | None) -> None:
        if old is not None:
            pool = (old.az, old.flavor)
            self._states[pool][old.state] -= 1
            if old.stale and old.state in HELD_STATES:
                self._stale[pool] -= 1
            on_hv = self._on_hv.get(old.hypervisor)
            if on_hv is not None:
                on_hv.discard(key)
                if not on_hv:
                    del self._on_hv[old.hypervisor]
            on_rack = self._on_rack.get((old.az, old.rack))
            if on_rack is not None:
                on_rack.discard(key)
                if not on_rack:
                    del self._on_rack[(old.az, old.rack)]
        if new is not None:
            pool = (new.az, new.flavor)
            states = self._states.get(pool)
            if states is None:
                states = self._states[pool] = Counter()
            states[new.state] += 1
            if new.stale and new.state in HELD_STATES:
                self._stale[pool] += 1
            on_hv = self._on_hv.get(new.hypervisor)
            if on_hv is None:
                on_hv = self._on_hv[new.hypervisor] = set()
            on_hv.add(key)
            on_rack = self._on_rack.get((new.az, new.rack))
            if on_rack is None:
                on_rack = self._on_rack[(new.az, new.rack)] = set()
            on_rack.add(key)
            if new.standby != "running" and pool not in self._tiered:
                self._tier(pool, key)
        else:
            self._mine.pop(key, None)
        self._place(key, new)
        self._count(key, new)

    def _tier(self, pool: Pool, skip: str) -> None:
        """``pool`` holds tiers from now on: its acquirable VMs join the
        RUNNING and WARM stocks (O(pool), once; VMs in flight join when
        their claim ends)."""
        self._tiered.add(pool)
        stocks = self._stocks.get(pool)
        if stocks is None:
            return
        for key in stocks[WITH_RESERVE + ANY].members():
            if key != skip:
                self._place(key, self._items[key][0])

    def _where(self, rec: PoolInstance) -> str:
        """Whether a VM can be handed out as its host stands: "ok", or why
        not ("unreachable", "drained")."""
        if rec.hypervisor not in self._live:
            return "unreachable"
        if rec.hypervisor in self._drained or (rec.az, rec.rack) in self._drained_racks:
            return "drained"
        return "ok"

    def _count(self, key: str, rec: PoolInstance | None) -> None:
        """Keep the pool's counts of what its ready and reserved VMs can do."""
        now = (
            ((rec.az, rec.flavor), rec.state, rec.rack, self._where(rec), rec.standby)
            if rec is not None and rec.state in HELD_STATES
            else None
        )
        before = self._counted.get(key)
        if before == now:
            return
        if before is not None:
            pool, state, rack, where, standby = before
            if where != "ok":
                self._away[pool][(state, where)] -= 1
            else:
                self._standby[pool][standby] -= 1
                if state is InstanceState.READY:
                    self._ready_by_rack[pool][rack] -= 1
            del self._counted[key]
        if now is not None:
            pool, state, rack, where, standby = now
            if where != "ok":
                away = self._away.get(pool)
                if away is None:
                    away = self._away[pool] = Counter()
                away[(state, where)] += 1
            else:
                mix = self._standby.get(pool)
                if mix is None:
                    mix = self._standby[pool] = Counter()
                mix[standby] += 1
                if state is InstanceState.READY:
                    racks = self._ready_by_rack.get(pool)
                    if racks is None:
                        racks = self._ready_by_rack[pool] = Counter()
                    racks[rack] += 1
            self._counted[key] = now

    def _slots(self, key: str, rec: PoolInstance | None) -> int:
        if rec is None or key in self._inflight or rec.health_failures or self._where(rec) != "ok":
            return 0
        if rec.state is InstanceState.READY:
            slots = 1 << READY | 1 << WITH_RESERVE
        elif rec.state is InstanceState.RESERVED:
            slots = 1 << WITH_RESERVE
        else:
            return 0
        if self._shares.active and self._is_mine(key, rec):
            slots |= slots << 2
        slots = slots << ANY if rec.stale else slots | slots << ANY
        if (rec.az, rec.flavor) in self._tiered:
            if rec.standby == "running":
                slots |= slots << RUNNING | slots << WARM
            elif rec.standby == "paused":
                slots |= slots << WARM
        return slots

    def _is_mine(self, key: str, rec: PoolInstance) -> bool:
        mine = self._mine.get(key)
        if mine is None:
            mine = self._mine[key] = self._shares.mine(rec.name)
        return mine

    def _place(self, key: str, rec: PoolInstance | None) -> None:
        """Put ``key`` in exactly the stocks its record belongs to now."""
        slots = self._slots(key, rec)
        where = ((rec.az, rec.flavor), rec.rack, rec.hypervisor, slots) if rec else None
        before = self._placed.get(key)
        if before == where or (before is None and not slots):
            return
        if before is not None:
            pool, rack, hv, old_slots = before
            stocks = self._stocks[pool]
            bits = old_slots
            while bits:
                low = bits & -bits
                stocks[low.bit_length() - 1].remove(key, rack, hv)
                bits ^= low
            del self._placed[key]
        if where is not None and slots:
            pool, rack, hv, _ = where
            found = self._stocks.get(pool)
            if found is None:  # not setdefault: its default would be built every time
                found = self._stocks[pool] = [Stock() for _ in range(SLOTS)]
            bits = slots
            while bits:
                low = bits & -bits
                found[low.bit_length() - 1].add(key, rack, hv)
                bits ^= low
            self._placed[key] = where

    def _host_presence(self, hv: str, present: bool) -> None:
        self._mark(self._live, hv, present)

    def _drain_presence(self, hv: str, drained: bool) -> None:
        self._mark(self._drained, hv, drained)

    def _rack_drain(self, rack: tuple[str, str], drained: bool) -> None:
        with self._lock:
            if drained:
                self._drained_racks.add(rack)
            else:
                self._drained_racks.discard(rack)
            for key in list(self._on_rack.get(rack, ())):
                self._place(key, self._items[key][0])
                self._count(key, self._items[key][0])

    def _mark(self, hosts: set[str], hv: str, member: bool) -> None:
        """``hv`` joins or leaves ``hosts``: re-place only the VMs it holds."""
        with self._lock:
            if member:
                hosts.add(hv)
            else:
                hosts.discard(hv)
            for key in list(self._on_hv.get(hv, ())):
                self._place(key, self._items[key][0])
                self._count(key, self._items[key][0])

    def states_on(self, hypervisor: str) -> dict[str, int]:
        """The pool's records on ``hypervisor`` by state (O(its VMs))."""
        with self._lock:
            found: Counter[str] = Counter()
            for key in self._on_hv.get(hypervisor, ()):
                found[self._items[key][0].state.value] += 1
            return dict(found)

    def set_instances(self, nodes: Iterable[str]) -> None:
        """The serving instances from the registry (this one included):
        re-deal the shares. O(pool size) once per membership change, in
        chunks of ``REDEAL_CHUNK`` VMs with the lock let go between them,
        so that no acquisition waits for the whole pool (30,000 VMs took
        3.5 s here: an instance joining or leaving stalled every other
        instance's acquisitions that long). Until the re-deal ends, a VM not
        reached yet keeps its old share: a claim of a VM another instance now
        owns can only lose its compare, nothing is handed out twice. A newer
        membership met between chunks takes over (it re-deals every VM)."""
        shares = Shares(self._shares.me, nodes)
        with self._lock:
            if shares.nodes == self._shares.nodes:
                return
            self._shares = shares
            self._mine.clear()
            keys = list(self._items)
        for start in range(0, len(keys), REDEAL_CHUNK):
            if start:
                _let_others_in()
            with self._lock:
                if self._shares is not shares:
                    return
                for key in keys[start : start + REDEAL_CHUNK]:
                    item = self._items.get(key)
                    if item is not None:  # gone since: its removal unplaced it
                        self._place(key, item[0])
        with self._lock:
            if self._shares is shares:
                self._dealt = len(shares.nodes)

    @property
    def instances(self) -> tuple[str, ...]:
        return self._shares.nodes

    @property
    def dealt_instances(self) -> int:
        """How many instances the shares were last dealt over, once every
        VM was re-dealt (``instances`` changes when a re-deal begins)."""
        return self._dealt

    # --- what acquisitions ask ----------------------------------------------------------

    def select(
        self,
        pool: Pool,
        count: int,
        mode: Mode,
        use_reserve: bool,
        rng: random.Random,
        allow_stale: bool = True,
    ) -> list[tuple[PoolInstance, int]] | None:
        """``count`` acquirable VMs of ``pool`` satisfying ``mode``: running
        ones if they can, else running and paused, else any (a tiered pool;
        all or nothing across tiers); from this instance's share if it can,
        else from the whole pool; of the pool's current generation if they
        can, else (``allow_stale``) stale ones too. Marked in flight
        (``claimed`` or ``release`` them). ``None``: the pool cannot."""
        with self._lock:
            stocks = self._stocks.get(pool)
            if stocks is None:
                return None
            tier = WITH_RESERVE if use_reserve else READY
            selector = SELECTORS[mode]
            shared = self._shares.active
            chosen = None
            for reach in (RUNNING, WARM, 0) if pool in self._tiered else (0,):
                for generation in (0, ANY) if allow_stale and self._stale[pool] else (0,):
                    base = tier + generation + reach
                    if shared:
                        chosen = selector.select(stocks[base + 2], count, rng)
                    if chosen is None:
                        chosen = selector.select(stocks[base], count, rng)
                    if chosen is not None:
                        break
                if chosen is not None:
                    break
            if chosen is None:
                return None
            out = [self._items[key] for key in chosen]
            self._inflight.update(dict.fromkeys(chosen, pool))
            self._inflight_by_pool[pool] += len(chosen)
            for key, (rec, _) in zip(chosen, out, strict=True):
                self._place(key, rec)
            return out

    def stock(
        self, pool: Pool, use_reserve: bool, allow_stale: bool = True
    ) -> tuple[int, int, int]:
        """(acquirable VMs, racks, hypervisors) of ``pool`` now."""
        with self._lock:
            stocks = self._stocks.get(pool)
            if stocks is None:
                return 0, 0, 0
            s = stocks[(WITH_RESERVE if use_reserve else READY) + (ANY if allow_stale else 0)]
            return len(s), len(s.racks), len(s.hypervisors)

    def acquirable(
        self, pool: Pool, use_reserve: bool, *, mine: bool = False, stale: bool = False
    ) -> set[str]:
        """The keys of ``pool``'s acquirable VMs, stale ones too with ``stale``
        (O(pool): tests, debugging)."""
        with self._lock:
            stocks = self._stocks.get(pool)
            slot = (
                (WITH_RESERVE if use_reserve else READY)
                + (2 if mine else 0)
                + (ANY if stale else 0)
            )
            return stocks[slot].members() if stocks else set()

    def in_flight(self, pool: Pool) -> int:
        with self._lock:
            return self._inflight_by_pool[pool]

    def wait_settled(self, pool: Pool, timeout_s: float) -> None:
        """Wait until no claim of this instance is in flight on ``pool``."""
        with self._settled:
            self._settled.wait_for(lambda: not self._inflight_by_pool[pool], timeout_s)

    def claimed(self, keys: Iterable[str], revision: int) -> None:
        """A claim landed: its VMs left the pool at ``revision``."""
        with self._lock:
            for key in keys:
                self.observe(key, None, revision)
                self._end_flight(key)
            self._settled.notify_all()

    def release(
        self,
        keys: Iterable[str],
        current: Mapping[str, KeyValue | None] | None = None,
        revision: int = 0,
    ) -> None:
        """A claim did not land: its VMs are acquirable again, as ``current``
        (the state the store reported at ``revision``) says."""
        with self._lock:
            for key in keys:
                self._end_flight(key)
            for key, kv in (current or {}).items():
                self.observe(key, kv, revision)
            self._settled.notify_all()

    def _end_flight(self, key: str) -> None:
        pool = self._inflight.pop(key, None)
        if pool is None:
            return
        self._inflight_by_pool[pool] -= 1
        item = self._items.get(key)
        if item is not None:  # gone if the claim landed
            self._place(key, item[0])

    # --- what operators ask ---------------------------------------------------------------

    def pooled(self, pool: Pool) -> int:
        """The pool's VMs that count towards its target (building, ready,
        reserved, parking; not those on a host that is unreachable or
        evacuating)."""
        with self._lock:
            states = self._states.get(pool, Counter())
            away = self._away.get(pool, Counter())
            return sum(states[s] for s in POOLED_STATES) - sum(away.values())

    def summary(self, rules: Mapping[Pool, BuildRule]) -> list[PoolSummary]:
        """``GET /v1/pools`` from the index: O(pools x racks)."""
        with self._lock:
            out = []
            for pool in sorted(set(rules) | {p for p, c in self._states.items() if +c}):
                states = self._states.get(pool, Counter())
                rule = rules.get(pool)
                racks = self._ready_by_rack.get(pool, Counter())
                away = self._away.get(pool, Counter())
                out.append(
                    PoolSummary(
                        az=pool[0],
                        flavor=pool[1],
                        target=rule.total_instances if rule else 0,
                        ready=states[InstanceState.READY]
                        - away[(InstanceState.READY, "unreachable")]
                        - away[(InstanceState.READY, "drained")],
                        reserved=states[InstanceState.RESERVED]
                        - away[(InstanceState.RESERVED, "unreachable")]
                        - away[(InstanceState.RESERVED, "drained")],
                        building=states[InstanceState.BUILDING],
                        enabled=rule.enabled if rule else False,
                        ready_by_rack={r: n for r, n in sorted(racks.items()) if n > 0},
                        stale=self._stale[pool],
                        unreachable=sum(n for (_, w), n in away.items() if w == "unreachable"),
                        drained=sum(n for (_, w), n in away.items() if w == "drained"),
                        standby={
                            s: n for s, n in sorted(self._standby.get(pool, Counter()).items()) if n
                        },
                        tier_targets=rule.tier_targets().as_dict() if rule else {},
                    )
                )
            return out
