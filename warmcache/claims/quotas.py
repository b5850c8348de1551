"""Fair shares between requesters (``[[quotas.limits]]``), enforced inside
the claim: a request over a quota that applies to it gets
``QuotaExceeded`` and claims nothing.

* ``max_share``: one acquisition takes at most this share of the pool's
  acquirable VMs at that moment (at least one), checked when its VMs are
  selected.
* ``vms_per_window``: the VMs a requester was handed out in the current
  fixed window (``window_s`` from the epoch), across every instance. Each
  limit has one counter key per requester (``<prefix>/quotas/<requester>/
  <az>/<flavor>``, ``{"window", "used"}``), compared at its revision and
  rewritten in the claim's own transaction: the counter moves if and only
  if the VMs do, and two instances cannot both spend the last VMs of a
  window (one loses the compare, learns the new count from the failed
  transaction's reply, and decides again). A counter this instance has
  never seen is assumed absent: the first claim learns it the same way.

* ``max_held``: the VMs a requester holds at once, across every AZ,
  flavor and instance: one counter per requester (``<prefix>/quotas/
  <requester>/held``, ``{"held": n}``), raised in the claim's transaction
  like a window counter and lowered in the transaction that takes a VM
  back (a release, a claim undone), so it is exact.

Requesters are token names (``[[auth.tokens]]``) over HTTP, or what an
embedder passes as ``requester``.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from warmcache.config import QuotaLimit
from warmcache.errors import QuotaExceeded
from warmcache.layout import Keys
from warmcache.ports import Compare, CoordinationStore, Delete, KeyValue, Put, Txn


@dataclass(frozen=True)
class Used:
    window: int
    used: int
    revision: int  # the key's mod revision (0: absent)


@dataclass(frozen=True)
class Reservation:
    """A request's windowed counters, as its claim transaction writes them."""

    compares: tuple[Compare, ...] = ()
    puts: tuple[Put, ...] = ()

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(c.key for c in self.compares)


NO_RESERVATION = Reservation()
HELD = -2  # the "window" of a held-VMs counter: it has none


def held_put(key: str, held: int) -> Put:
    return Put(key, json.dumps({"window": HELD, "used": max(0, held)}))


def held_given_back(kv: KeyValue | None, key: str, count: int) -> tuple[Compare, Put]:
    """The compare and put that lower a held counter (as read: ``kv``) by
    ``count`` in the transaction that takes VMs back."""
    used = 0
    if kv is not None:
        try:
            used = int(json.loads(kv.value)["used"])
        except (ValueError, KeyError, TypeError):
            used = 0
    return Compare.mod_revision(key, kv.mod_revision if kv else 0), held_put(key, used - count)


def quota_name(limit: QuotaLimit) -> str:
    return f"{limit.requester}/{limit.az}/{limit.flavor}"


class Quotas:
    def __init__(
        self,
        limits: Sequence[QuotaLimit],
        keys: Keys,
        read: Callable[[str], KeyValue | None] | None = None,
    ) -> None:
        self._limits = tuple(limits)
        self._keys = keys
        self._read = read  # a held counter goes down on other instances: read before refusing
        self._counters: dict[str, Used] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._limits)

    def set_limits(self, limits: Sequence[QuotaLimit]) -> None:
        """Every requester's limits from now on (``acquire.quota_limits``
        follows them in the store); counters already learnt stay."""
        self._limits = tuple(limits)

    @property
    def limits(self) -> tuple[QuotaLimit, ...]:
        return self._limits

    def applicable(self, requester: str, az: str, flavor: str) -> tuple[QuotaLimit, ...]:
        return tuple(
            q
            for q in self._limits
            if q.requester in ("*", requester) and q.az in ("*", az) and q.flavor in ("*", flavor)
        )

    def key(self, limit: QuotaLimit, requester: str) -> str:
        if limit.max_held is not None:
            return self._keys.held_count(requester)
        return self._keys.quota(requester, f"{limit.az}/{limit.flavor}")

    def keys(self, limits: Iterable[QuotaLimit], requester: str) -> frozenset[str]:
        return frozenset(
            self.key(q, requester)
            for q in limits
            if q.vms_per_window is not None or q.max_held is not None
        )

    def counts_held(self, requester: str) -> bool:
        """Whether ``requester``'s held VMs are counted (a max_held applies)."""
        return any(q.max_held is not None and q.requester in ("*", requester) for q in self._limits)

    @staticmethod
    def check_share(
        limits: Iterable[QuotaLimit], requester: str, count: int, acquirable: int
    ) -> None:
        for q in limits:
            if q.max_share is None:
                continue
            allowed = max(1, math.floor(q.max_share * acquirable))
            if count > allowed:
                raise QuotaExceeded(
                    requester=requester,
                    quota=quota_name(q),
                    limit=allowed,
                    used=0,
                    wanted=count,
                    retry_after_s=0.0,
                )

    def reserve(
        self, limits: Iterable[QuotaLimit], requester: str, count: int, now: float
    ) -> Reservation:
        """The counter writes for ``count`` more VMs, or ``QuotaExceeded``."""
        compares: list[Compare] = []
        puts: list[Put] = []
        for q in limits:
            if q.max_held is not None:
                compare, put = self._hold(q, requester, count)
                compares.append(compare)
                puts.append(put)
                continue
            if q.vms_per_window is None:
                continue
            key = self.key(q, requester)
            window = int(now // q.window_s)
            with self._lock:
                known = self._counters.get(key, Used(window, 0, 0))
            used = known.used if known.window == window else 0
            if used + count > q.vms_per_window:
                raise QuotaExceeded(
                    requester=requester,
                    quota=quota_name(q),
                    limit=q.vms_per_window,
                    used=used,
                    wanted=count,
                    retry_after_s=round((window + 1) * q.window_s - now, 3),
                )
            compares.append(Compare.mod_revision(key, known.revision))
            # "until": when the window ends, so the leader's sweep can remove
            # the counter then (one per requester and limit, never read again)
            until = (window + 1) * q.window_s
            puts.append(
                Put(key, json.dumps({"window": window, "used": used + count, "until": until}))
            )
        return Reservation(tuple(compares), tuple(puts)) if compares else NO_RESERVATION

    def _hold(self, q: QuotaLimit, requester: str, count: int) -> tuple[Compare, Put]:
        assert q.max_held is not None
        key = self._keys.held_count(requester)
        with self._lock:
            known = self._counters.get(key, Used(HELD, 0, 0))
        if known.used + count > q.max_held and self._read is not None:
            self.learn({key: self._read(key)}, [key])  # released elsewhere since?
            with self._lock:
                known = self._counters.get(key, Used(HELD, 0, 0))
        if known.used + count > q.max_held:
            raise QuotaExceeded(
                requester=requester,
                quota=f"{requester}/held",
                limit=q.max_held,
                used=known.used,
                wanted=count,
                retry_after_s=0.0,  # when one of its VMs is released
            )
        return Compare.mod_revision(key, known.revision), held_put(key, known.used + count)

    def landed(self, reservation: Reservation, revision: int) -> None:
        with self._lock:
            for put in reservation.puts:
                raw = json.loads(put.value)
                self._counters[put.key] = Used(raw.get("window", HELD), raw["used"], revision)

    def learn(self, current: Mapping[str, KeyValue | None], keys: Iterable[str]) -> None:
        """What a failed transaction said the counters hold now."""
        with self._lock:
            for key in keys:
                if key not in current:
                    continue
                kv = current[key]
                if kv is None:
                    self._counters.pop(key, None)
                    continue
                try:
                    raw = json.loads(kv.value)
                    self._counters[key] = Used(
                        int(raw["window"]), int(raw["used"]), kv.mod_revision
                    )
                except (ValueError, KeyError, TypeError):
                    # Unreadable: start its window over, at its revision.
                    self._counters[key] = Used(-1, 0, kv.mod_revision)

    def forget(self, keys: Iterable[str]) -> None:
        """After an outcome nobody knows: read the counters afresh."""
        with self._lock:
            for key in keys:
                self._counters.pop(key, None)


def sweep_windows(store: CoordinationStore, keys: Keys, now: float, batch: int = 500) -> int:
    """Delete the window counters whose window has ended (each only if
    unchanged since read: a claim writing it meanwhile keeps it). A
    missing counter is a window with nothing used, so nothing changes for
    any requester; without it every requester name a ``"*"`` quota ever
    saw kept a key for ever. Held counters stay (they are live counts)."""
    kvs, _ = store.range(keys.quotas_dir())
    ended = []
    for kv in kvs:
        try:
            until = json.loads(kv.value).get("until")
        except (ValueError, AttributeError):
            continue
        if isinstance(until, int | float) and until <= now:
            ended.append(kv)
    gone = 0
    for start in range(0, len(ended), batch):
        txns = [
            Txn([Compare.mod_revision(kv.key, kv.mod_revision)], [Delete(kv.key)])
            for kv in ended[start : start + batch]
        ]
        gone += sum(1 for r in store.txns(txns) if r.succeeded)
    return gone
