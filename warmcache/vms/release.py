"""Giving VMs back (DESIGN.md §8): release by the holder or an admin, a
claim's VMs at once, lease renewal, and the reclaim of expired leases.

A release moves the VM's record from ``acquired/`` to ``releasing/`` in one
transaction conditional on the record's revision, which also removes it
from its holder's index and lowers its holder's held counter: from that
moment the VM is nobody's, and two releases of one VM (on one instance or
two) cannot both move it. What becomes of it (deleted, or recycled back
into its pool: the rule's ``on_release`` at that moment) is decided there
and done by the release worker (``warmcache.vms.worker``). Repeating a
release is harmless: a VM already releasing is returned as it is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from warmcache.claims.claim_log import ClaimLog
from warmcache.claims.held import HeldIndex
from warmcache.errors import (
    ClaimContention,
    Forbidden,
    InternalError,
    UnknownClaim,
    UnknownVm,
    VmNotHeld,
    WarmCacheError,
)
from warmcache.layout import Keys, PoolRecords, Stored
from warmcache.model import BuildRule, InstanceState, PoolInstance, Release
from warmcache.ports import Clock, Compare, CoordinationStore, Delete, Op, Put, Txn
from warmcache.vms.book import VmBook

ATTEMPTS = 5  # a release lost to a concurrent change of the record is tried again
HOLDER_OR_ADMIN = "admin (or the VM's holder)"


@dataclass(eq=False)
class _Ask:
    name: str
    by: str
    admin: bool
    reason: str
    outcome: PoolInstance | WarmCacheError | None = None
    wake: threading.Event = field(default_factory=threading.Event, repr=False)

    def result(self) -> PoolInstance:
        if isinstance(self.outcome, WarmCacheError):
            raise self.outcome
        assert self.outcome is not None
        return self.outcome


_REASONS: dict[str, Literal["released", "expired", "purged"]] = {
    "expired": "expired",
    "purged": "purged",
}


class Releaser:
    def __init__(
        self,
        store: CoordinationStore,
        keys: Keys,
        clock: Clock,
        book: VmBook,
        held: HeldIndex,
        rule: Callable[[str, str], BuildRule | None],
        emit: Callable[..., None],
        node: str = "",
        hand: Callable[[Stored[PoolInstance]], None] = lambda _vm: None,
    ) -> None:
        self._store = store
        self._keys = keys
        self._clock = clock
        self._book = book
        self._held = held
        self._rule = rule
        self._emit = emit
        # The releasing instance's worker takes the VM in the release's own
        # transaction and is handed it at once (no second write to take it);
        # if that instance dies, another takes it over after the take timeout.
        self._node = node
        self.hand = hand
        self._cond = threading.Condition()
        self._queue: list[_Ask] = []
        self._committing = False

    def release(self, name: str, by: str, *, admin: bool, reason: str = "released") -> PoolInstance:
        """Give the VM back: its record, now releasing. ``UnknownVm``,
        ``VmNotHeld`` (it is pooled), ``Forbidden`` (not its holder, not an
        admin); nothing changes then.

        Group-committed like claims: concurrent releases on this instance
        go to the store together (one ``txns`` call, each its own
        transaction), the caller that finds none in flight sending them."""
        ask = _Ask(name, by, admin, reason)
        with self._cond:
            self._queue.append(ask)
            lead = not self._committing
            self._committing = True
        while True:
            if not lead:
                ask.wake.wait()
                ask.wake.clear()
                if ask.outcome is not None:
                    return ask.result()
            with self._cond:
                batch, self._queue = self._queue, []
            try:
                self._release_batch(batch)
            except BaseException as exc:  # a bug must not leave the batch waiting forever
                for other in batch:
                    if other.outcome is None:
                        other.outcome = InternalError(f"{type(exc).__name__}: {exc}")
                raise
            finally:
                with self._cond:
                    for other in batch:
                        if other is not ask:
                            other.wake.set()
                    following = self._queue[0] if self._queue else None
                    if following is None:
                        self._committing = False
                    else:
                        following.wake.set()  # it commits next
            return ask.result()

    def _release_batch(self, batch: list[_Ask]) -> None:
        pending = list(batch)
        for _ in range(ATTEMPTS):
            if not pending:
                return
            plans: list[tuple[_Ask, PoolInstance, str, Txn]] = []
            touched: set[str] = set()
            later: list[_Ask] = []
            for ask in pending:
                try:
                    plan = self._plan(ask)
                except WarmCacheError as exc:
                    ask.outcome = exc
                    continue
                if plan is None:
                    continue  # decided (released already)
                releasing, key, txn = plan
                keys = {c.key for c in txn.compares} | {o.key for o in txn.success}
                if keys & touched:
                    later.append(ask)  # one write per key per batch: the next round
                    continue
                touched |= keys
                plans.append((ask, releasing, key, txn))
            if plans:
                try:
                    results = self._store.txns([txn for _, _, _, txn in plans])
                except WarmCacheError as exc:
                    for ask, _, _, _ in plans:
                        ask.outcome = exc
                    results = []
                for (ask, releasing, key, _txn), result in zip(plans, results, strict=True):
                    if result.succeeded:
                        self._released(ask, releasing, key, result.revision)
                    else:
                        later.append(ask)  # changed meanwhile: looked at again
            pending = later
        for ask in pending:
            ask.outcome = ClaimContention(ATTEMPTS)

    def _plan(self, ask: _Ask) -> tuple[PoolInstance, str, Txn] | None:
        """The transaction that gives ``ask``'s VM back; None when there is
        nothing to do (its outcome is set)."""
        name, by = ask.name, ask.by
        found = self._book.find(name)
        if found is None:
            raise UnknownVm(name)
        rec = found.record
        if not ask.admin and rec.acquired_by != by:
            if found.folder != "acquired" and rec.acquired_by is None:
                raise VmNotHeld(name, rec.state.value)
            raise Forbidden(by, HOLDER_OR_ADMIN)
        if found.folder == "releasing":
            ask.outcome = rec  # released already: a repeat changes nothing
            return None
        if found.folder == "pool":
            raise VmNotHeld(name, rec.state.value)
        rule = self._rule(rec.az, rec.flavor)
        now = self._clock.now()
        releasing = rec.with_state(
            InstanceState.RELEASING,
            release=Release(
                since=now,
                by=by,
                reason=_REASONS.get(ask.reason, "released"),
                # an operator's purge deletes it, whatever the rule says
                action=rule.on_release if rule is not None and ask.reason != "purged" else "delete",
                worker=self._node or None,
                tried_at=now if self._node else None,
                tries=1 if self._node else 0,
            ),
        )
        key = self._keys.releasing(rec.az, name)
        compares = [Compare.mod_revision(found.key, found.revision)]
        ops: list[Op] = [Delete(found.key), Put(key, releasing.model_dump_json())]
        if rec.acquired_by:
            more, taken = self._held.take_back(rec.acquired_by, rec.az, [name])
            compares += more
            ops += taken
        return releasing, key, Txn(compares, ops)

    def _released(self, ask: _Ask, releasing: PoolInstance, key: str, revision: int) -> None:
        ask.outcome = releasing
        r = releasing.release
        now = self._clock.now()
        self._emit(
            "vm.expired" if ask.reason == "expired" else "vm.releasing",
            name=releasing.name,
            az=releasing.az,
            flavor=releasing.flavor,
            hypervisor=releasing.hypervisor,
            holder=releasing.acquired_by,
            by=ask.by,
            action=r.action if r else "delete",
            held_s=round(now - (releasing.acquired_at or now), 3),
        )
        self.hand(Stored(key, revision, releasing))

    def release_claim(self, claim_id: str, by: str, *, admin: bool) -> list[PoolInstance]:
        """Every VM of a named claim still held or releasing; ``UnknownClaim``
        when none is (or the claim never landed, or was swept)."""
        record = ClaimLog(self._store, self._keys).get(claim_id)
        if not admin and record.requester != by:
            raise Forbidden(by, HOLDER_OR_ADMIN)
        out = []
        for vm in record.vms:
            try:
                out.append(self.release(vm.name, by, admin=True))
            except (UnknownVm, VmNotHeld):
                continue  # gone already (or recycled since): nothing of this claim left there
        if not out:
            raise UnknownClaim(claim_id)
        return out

    def renew(self, name: str, lease_s: float, by: str, *, admin: bool) -> PoolInstance:
        """Its lease from now on: ``lease_s`` more seconds."""
        for _ in range(ATTEMPTS):
            found = self._book.find(name)
            if found is None:
                raise UnknownVm(name)
            rec = found.record
            if not admin and rec.acquired_by != by:
                raise Forbidden(by, HOLDER_OR_ADMIN)
            if found.folder != "acquired":
                raise VmNotHeld(name, rec.state.value)
            renewed = rec.model_copy(update={"expires_at": self._clock.now() + lease_s})
            if self._store.txn(
                [Compare.mod_revision(found.key, found.revision)],
                [Put(found.key, renewed.model_dump_json())],
            ).succeeded:
                self._emit("vm.renewed", name=name, az=rec.az, expires_at=renewed.expires_at, by=by)
                return renewed
        raise ClaimContention(ATTEMPTS)

    def reclaim_expired(self, azs: list[str], grace_s: float) -> list[str]:
        """Release every handed-out VM of ``azs`` whose lease ran out more
        than ``grace_s`` ago (the leader's, after each cycle)."""
        now = self._clock.now()
        records = PoolRecords(self._store, self._keys)
        reclaimed = []
        for az in azs:
            for item in records.acquired(az):
                rec = item.record
                if rec.expires_at is None or rec.expires_at + grace_s > now:
                    continue
                try:
                    self.release(rec.name, "lease", admin=True, reason="expired")
                    reclaimed.append(rec.name)
                except (UnknownVm, VmNotHeld, ClaimContention):
                    continue  # released meanwhile, or busy: the next pass sees it
        return reclaimed
