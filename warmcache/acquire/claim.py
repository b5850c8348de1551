"""Atomic, all-or-nothing claims of pooled VMs (DESIGN.md §8, §12.1, §12.3).

The chosen records move to ``acquired`` (from ``<prefix>/pool/<az>/`` to
``<prefix>/acquired/<az>/``) in one store transaction that
compares every record's modify revision with the one it was selected at. If
any changed (a concurrent acquirer, a purge), nothing is written; we re-read
the pool and select again, up to ``attempts`` times, then give up with
``ClaimContention``. A request the pool cannot satisfy fails at once with
``NoCapacity`` and claims nothing.

A transaction that gets no answer (a timeout, a connection cut after the
request left) may still have been applied, or may be applied later by the
store. Every claim carries a ``claim_id``, written into the acquired
records, and such an ambiguous failure is settled before anything else:
one chosen record is rewritten unchanged, conditioned on the revision the
claim compared, which makes a late apply impossible; if that rewrite fails,
the acquired records say whether the claim landed (then it is returned as a
success: no VM is stranded in ``acquired``). If the store cannot be asked,
``ClaimOutcomeUnknown`` names the claim and its VMs.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from warmcache.acquire.modes import SELECTORS
from warmcache.errors import ClaimContention, ClaimOutcomeUnknown, NoCapacity, StoreError
from warmcache.model import InstanceState, Keys, Mode, PoolInstance
from warmcache.ports import Clock, Compare, CoordinationStore, Delete, Put


@dataclass(frozen=True)
class Claimed:
    vms: list[PoolInstance]
    attempts: int
    remaining: int  # acquirable VMs of the pool left after this claim


class Claimer:
    def __init__(
        self,
        store: CoordinationStore,
        keys: Keys,
        clock: Clock,
        *,
        attempts: int,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._store = store
        self._keys = keys
        self._clock = clock
        self._attempts = attempts
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()

    def claim(
        self,
        *,
        flavor: str,
        az: str,
        count: int,
        mode: Mode,
        use_reserve: bool,
        requester: str,
        live_hosts: Collection[str] | None = None,
        view: Callable[[], Iterable[tuple[PoolInstance, int]]] | None = None,
    ) -> Claimed:
        """``live_hosts``: hypervisors whose agent is heartbeating (``None``:
        no filter). VMs elsewhere, and VMs that failed their last health
        poll, are never handed out. ``view``: the pool records and their
        revisions as a local view last saw them, used for the first attempt
        instead of reading the store; a conflict means the view was stale,
        and later attempts read the store."""
        states = {InstanceState.READY} | ({InstanceState.RESERVED} if use_reserve else set())
        selector = SELECTORS[mode]
        claim_id = uuid.uuid4().hex
        for attempt in range(1, self._attempts + 1):
            if attempt == 1 and view is not None:
                seen = list(view())
            else:
                kvs, _ = self._store.range(self._keys.pool_dir(az))
                seen = [(PoolInstance.model_validate_json(kv.value), kv.mod_revision)
                        for kv in kvs]
            revision: dict[str, int] = {}
            candidates: list[PoolInstance] = []
            for vm, mod_revision in seen:
                if (vm.az == az and vm.flavor == flavor and vm.state in states
                        and vm.health_failures == 0
                        and (live_hosts is None or vm.hypervisor in live_hosts)):
                    candidates.append(vm)
                    revision[vm.name] = mod_revision
            with self._rng_lock:
                seed = self._rng.random()
            chosen = selector.select(candidates, count, random.Random(seed))
            if chosen is None and attempt == 1 and view is not None:
                continue  # the view may lag: look at the store before saying no
            if chosen is None:
                raise NoCapacity(
                    flavor=flavor, az=az, mode=mode.value, wanted=count,
                    ready=len(candidates), racks=len({vm.rack for vm in candidates}),
                    hypervisors=len({vm.hypervisor for vm in candidates}),
                )
            now = self._clock.now()
            acquired = [
                vm.with_state(InstanceState.ACQUIRED, acquired_by=requester, acquired_at=now,
                              claim_id=claim_id)
                for vm in chosen
            ]
            try:
                succeeded = self._store.txn(
                    [Compare.mod_revision(self._keys.pool(az, vm.name), revision[vm.name])
                     for vm in chosen],
                    # Handed-out VMs leave the pool directory (so acquisitions keep
                    # scanning only what is acquirable) for the acquired log.
                    [op for vm in acquired for op in (
                        Delete(self._keys.pool(az, vm.name)),
                        Put(self._keys.acquired(az, vm.name), vm.model_dump_json()),
                    )],
                ).succeeded
            except StoreError as exc:
                succeeded = self._settle(az, chosen[0], revision[chosen[0].name], acquired,
                                         claim_id, exc)
            if succeeded:
                return Claimed(acquired, attempt, len(candidates) - count)
        raise ClaimContention(self._attempts)

    def _settle(self, az: str, first: PoolInstance, first_revision: int,
                acquired: list[PoolInstance], claim_id: str, cause: StoreError) -> bool:
        """Did the unanswered claim land? Decided for good (see the module doc)."""
        key = self._keys.pool(az, first.name)
        try:
            fenced = self._store.txn([Compare.mod_revision(key, first_revision)],
                                     [Put(key, first.model_dump_json())])
            if fenced.succeeded:
                return False  # it had not landed, and now it never can
            for vm in acquired:
                kv = self._store.get(self._keys.acquired(az, vm.name))
                if kv is None or PoolInstance.model_validate_json(kv.value).claim_id != claim_id:
                    return False  # someone else's change won
            return True
        except StoreError as exc:
            raise ClaimOutcomeUnknown(claim_id, [vm.name for vm in acquired],
                                      f"{cause}; then {exc}") from exc
