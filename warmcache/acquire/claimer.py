"""Atomic, all-or-nothing claims of pooled VMs (DESIGN.md §8, §12.1, §12.3),
group-committed.

A claim moves its chosen records from ``<prefix>/pool/<az>/`` to
``<prefix>/acquired/<az>/`` in one store transaction that compares every
record's modify revision with the one it was selected at. If any changed
(another instance's claim, a purge), nothing of that claim is written: its
VMs go back to the index with the state the store reported, and it selects
again, up to ``attempts`` times, then gives up with ``ClaimContention``. A
request the pool cannot satisfy fails at once with ``NoCapacity`` and
claims nothing.

**Group commit.** Concurrent claims on one instance are combined: while one
batch is in the store, the next requests queue; the thread that finds no
batch in flight takes the queue, selects disjoint VMs for every request in
order (the index marks each selection in flight, so the next request cannot
take it) and sends all the claims in one ``txns()`` call, in which each
claim keeps its own compares and succeeds or fails on its own. A request
the pool cannot satisfy once the earlier requests of its batch have taken
their VMs is decided after that batch lands (their VMs may come back): so
each request's outcome is what it would have been with the requests run one
after the other, in queue order. ``batch=False`` sends one transaction per
claim (the baseline ``bench/acquire.py --no-batch`` measures).

**An unanswered batch.** A transaction that gets no answer (a timeout, a
connection cut after the request left) may have been applied, or may be
applied later by the store. Every claim carries a ``claim_id``, written into
its acquired records, and such a failure is settled before anything else,
claim by claim: the first chosen record is rewritten unchanged, conditioned
on the revision the claim compared, which makes a late apply impossible; if
that rewrite fails, the acquired records say whether the claim landed (then
it is returned as a success: no VM is stranded in ``acquired``). If the
store cannot be asked, ``ClaimOutcomeUnknown`` names the claim and its VMs.

**A named claim** (the caller gave its ``claim_id``) also writes its record
(``warmcache.claims.claim_log``) in its transaction, if absent: a repeat of a
claim that landed fails that compare and returns the recorded VMs instead;
two requests with one id in one batch are never sent together (the second
waits for the first to land, then finds its record).

**Quotas** (``warmcache.claims.quotas``): a request over its share of the
pool, or over what its requester has left in the window, gets
``QuotaExceeded`` before any VM is chosen. A windowed quota's counter is
compared and rewritten in the claim's transaction, so it moves with the
VMs or not at all; two requests writing one counter are never in one batch
(the second goes in the next), and a claim that lost the counter's compare
learns its new value from the reply and decides again.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

from warmcache import deadline
from warmcache.acquire.index import PoolIndex
from warmcache.claims.claim_log import ClaimLog, ClaimRecord
from warmcache.claims.quotas import NO_RESERVATION, Quotas, Reservation
from warmcache.config import QuotaLimit
from warmcache.errors import (
    ClaimContention,
    ClaimMismatch,
    ClaimOutcomeUnknown,
    ClaimReleased,
    NoCapacity,
    QuotaExceeded,
    StoreError,
    StoreUnavailable,
)
from warmcache.layout import Keys, PoolRecords
from warmcache.model import InstanceState, Mode, PoolInstance, Receipt
from warmcache.ports import Clock, Compare, CoordinationStore, Delete, KeyValue, Put, Txn, TxnResult

# How long a request the pool cannot satisfy waits, unbatched, for other
# claims in flight on its pool before it is decided.
SETTLE_WAIT_S = 5.0
# How long the settle of an unanswered claim may take past the deadline.
SETTLE_MARGIN_S = 0.5


@dataclass(frozen=True)
class Claimed:
    vms: list[PoolInstance]
    attempts: int
    remaining: int  # acquirable VMs of the pool left after this claim
    replayed: bool = False  # a repeat of a named claim that had landed: nothing new claimed
    revision: int = 0  # the claim transaction's (every acquired record's mod revision)
    commit_s: float = 0.0  # the claim transaction's time (its batch's)


@dataclass(eq=False)
class ClaimRequest:
    flavor: str
    az: str
    count: int
    mode: Mode
    use_reserve: bool = False
    allow_stale: bool = True  # the rule's stale_handout: stale VMs when current ones cannot
    requester: str = "anonymous"
    claim_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    named: bool = False  # the caller chose claim_id: record the claim (idempotent repeats)
    quotas: tuple[QuotaLimit, ...] = ()  # the requester's limits that apply (acquire.quotas)
    lease_s: float | None = None  # its VMs' lease: expires_at is set from the claim's time
    reservation: Reservation = NO_RESERVATION  # its quota counters' writes, this round
    attempts: int = 0
    outcome: Claimed | BaseException | None = None
    chosen: list[tuple[PoolInstance, int]] = field(default_factory=list)
    waiting: bool = False  # decided only once the claims in flight on its pool land
    waits: int = 0  # bounded: a pool that never settles must not hold a request forever
    deadline: float | None = None  # monotonic; the caller's (warmcache.deadline)
    wake: threading.Event = field(default_factory=threading.Event, repr=False)
    select_s: float = 0.0  # spent choosing its VMs (every round)

    @property
    def pool(self) -> tuple[str, str]:
        return self.az, self.flavor

    def again(self, deadline: float | None = None) -> ClaimRequest:
        """The same request, to be claimed once more: its per-try state
        (outcome, attempts, choice, waits, wake-up) fresh; ``deadline``
        replaces its deadline when given."""
        return dataclasses.replace(
            self,
            outcome=None,
            attempts=0,
            chosen=[],
            waiting=False,
            waits=0,
            reservation=NO_RESERVATION,
            wake=threading.Event(),
            deadline=self.deadline if deadline is None else deadline,
        )

    def result(self) -> Claimed:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        assert self.outcome is not None
        return self.outcome


class Claimer:
    def __init__(
        self,
        store: CoordinationStore,
        keys: Keys,
        index: PoolIndex,
        clock: Clock,
        *,
        attempts: int,
        batch: bool = True,
        max_batch_vms: int = 512,
        rng: random.Random | None = None,
        retention_s: float = 86_400.0,
        quotas: Quotas | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if max_batch_vms < 1:
            raise ValueError("max_batch_vms must be at least 1")
        self._store = store
        self._keys = keys
        self._index = index
        self._clock = clock
        self._attempts = attempts
        self._batch = batch
        self._max_batch_vms = max_batch_vms
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self.log = ClaimLog(store, keys)
        self._retention_s = retention_s
        self._quotas = quotas or Quotas((), keys)
        self._cond = threading.Condition()
        self._queue: list[ClaimRequest] = []
        self._committing = False
        self.batches = 0  # transactions sent for claims (/metrics)
        self.conflicts = 0  # claims that lost a compare to a concurrent change

    def claim(self, request: ClaimRequest) -> Claimed:
        """Claim for ``request``: its VMs, or its error raised."""
        if self._batch:
            self._submit(request)
        else:
            while request.outcome is None:
                for again in self._round([request]):
                    if again.waiting:
                        self._index.wait_settled(again.pool, SETTLE_WAIT_S)
        return request.result()

    def claim_batch(self, requests: list[ClaimRequest]) -> None:
        """Run ``requests`` as one group (in order), to the end: every
        request gets its outcome (``request.result()``)."""
        pending = list(requests)
        while pending:
            pending = self._round(pending)

    # --- group commit ----------------------------------------------------------------------

    def _submit(self, request: ClaimRequest) -> None:
        """Queue ``request``; the thread whose request finds no batch in
        flight commits, and hands that role to the next queued request when
        it is done. Each waiter has its own wake-up, so a batch of 30 wakes
        30 threads, not 30 threads 30 times."""
        with self._cond:
            self._queue.append(request)
            lead = not self._committing
            self._committing = True
        while True:
            if not lead:
                request.wake.wait()
                request.wake.clear()
                if request.outcome is not None:
                    return
            with self._cond:
                batch = self._take()
            again: list[ClaimRequest] = []
            try:
                again = self._round(batch)
            except BaseException as exc:  # a bug must not leave the batch waiting forever
                for r in batch:
                    if r.outcome is None:
                        r.outcome = exc
                raise
            finally:
                with self._cond:
                    self._queue[:0] = again
                    for r in batch:
                        if r.outcome is not None and r is not request:
                            r.wake.set()
                    following = self._queue[0] if self._queue else None
                    if following is None:
                        self._committing = False
                    elif following is not request:
                        following.wake.set()  # it commits next
            if request.outcome is not None:
                return
            lead = following is request

    def _take(self) -> list[ClaimRequest]:
        batch: list[ClaimRequest] = []
        vms = 0
        while self._queue and (not batch or vms + self._queue[0].count <= self._max_batch_vms):
            request = self._queue.pop(0)
            batch.append(request)
            vms += request.count
        return batch

    # --- one round: select, commit, settle --------------------------------------------------

    def _round(self, batch: list[ClaimRequest]) -> list[ClaimRequest]:
        """Decide what it can of ``batch``; returns the requests to run again
        (lost a conflict, or waiting for the claims ahead of them): select
        each request's VMs, commit the selected ones in one transaction
        batch, apply each result."""
        now = self._clock.now()  # one instant: quota windows, acquired_at, receipts
        selected, later = self._select(batch, now)
        if not selected:
            return later
        return later + self._apply(self._commit(selected, now))

    def _select(
        self, batch: list[ClaimRequest], now: float
    ) -> tuple[list[ClaimRequest], list[ClaimRequest]]:
        """Each request's VMs chosen from the index (marked in flight), or its
        outcome decided (quota exceeded, no capacity); (selected, to run
        again)."""
        selected: list[ClaimRequest] = []
        later: list[ClaimRequest] = []
        named: set[str] = set()
        counters: set[str] = set()  # quota counters a request of this batch writes
        for request in batch:
            if request.named and request.claim_id in named:
                later.append(request)  # after the one ahead of it: then it finds its record
                continue
            request.reservation = NO_RESERVATION
            if request.quotas:
                writes = self._quotas.keys(request.quotas, request.requester)
                if writes & counters:
                    later.append(request)  # one write per counter per transaction batch
                    continue
                try:
                    self._check_quotas(request, now)
                except QuotaExceeded as exc:
                    if not self._replay_recorded(request):
                        request.outcome = exc
                    continue
            with self._rng_lock:
                rng = random.Random(self._rng.random())
            picked_at = time.perf_counter()
            chosen = self._index.select(
                request.pool,
                request.count,
                request.mode,
                request.use_reserve,
                rng,
                request.allow_stale,
            )
            request.select_s += time.perf_counter() - picked_at
            request.waiting = False
            if chosen is not None:
                request.chosen = chosen
                selected.append(request)
                counters |= request.reservation.keys
                if request.named:
                    named.add(request.claim_id)
            elif self._index.in_flight(request.pool) and request.waits < self._attempts:
                request.waiting = True  # claims ahead of it may still give VMs back
                request.waits += 1
                later.append(request)
            elif not self._replay_recorded(request):
                ready, racks, hypervisors = self._index.stock(
                    request.pool, request.use_reserve, request.allow_stale
                )
                request.outcome = NoCapacity(
                    flavor=request.flavor,
                    az=request.az,
                    mode=request.mode.value,
                    wanted=request.count,
                    ready=ready,
                    racks=racks,
                    hypervisors=hypervisors,
                )
        return selected, later

    def _commit(
        self, selected: list[ClaimRequest], now: float
    ) -> list[tuple[ClaimRequest, TxnResult, list[PoolInstance], float]]:
        """The selected claims in one transaction batch, each all or nothing:
        every request with its result, the records it would write, and
        the batch's time in the store."""
        self.batches += 1
        acquired = {
            r.claim_id: [
                vm.with_state(
                    InstanceState.ACQUIRED,
                    acquired_by=r.requester,
                    acquired_at=now,
                    claim_id=r.claim_id,
                    expires_at=now + r.lease_s if r.lease_s else None,
                    data_disks=(),
                    release=None,
                    receipt=Receipt(
                        tier=vm.standby,
                        waited_s=None if vm.ready_at is None else round(now - vm.ready_at, 3),
                        select_ms=round(r.select_s * 1000, 3),
                    ),
                )
                for vm, _ in r.chosen
            ]
            for r in selected
        }
        committing = time.perf_counter()
        # The batch answers by its most impatient caller's deadline.
        due = min((r.deadline for r in selected if r.deadline is not None), default=None)
        try:
            with deadline.until(due):
                results = self._store.txns(
                    [self._txn(r, acquired[r.claim_id], now) for r in selected]
                )
        except StoreUnavailable as exc:
            settled = self._unavailable(selected, exc)
        except StoreError as exc:
            # No answer: settle, with a short margin of its own past the
            # deadline (the only way to tell the caller what happened).
            with deadline.until(time.monotonic() + SETTLE_MARGIN_S):
                settled = self._settle(selected, acquired, exc)
        else:
            settled = list(zip(selected, results, strict=True))
        commit_s = time.perf_counter() - committing
        return [(r, result, acquired[r.claim_id], commit_s) for r, result in settled]

    def _apply(
        self, settled: list[tuple[ClaimRequest, TxnResult, list[PoolInstance], float]]
    ) -> list[ClaimRequest]:
        """Each result applied: a claim that landed leaves the index (its
        outcome is its VMs), one that lost gives its VMs back and is run
        again while it has attempts left; the requests to run again."""
        later: list[ClaimRequest] = []
        for request, result, records, commit_s in settled:
            keys = [self._keys.pool(request.az, vm.name) for vm, _ in request.chosen]
            request.attempts += 1
            quota_keys = request.reservation.keys
            if result.succeeded:
                self._quotas.landed(request.reservation, result.revision)
                self._index.claimed(keys, result.revision)
                ready, _, _ = self._index.stock(request.pool, False)
                request.outcome = Claimed(
                    records,
                    request.attempts,
                    ready,
                    revision=result.revision,
                    commit_s=commit_s,
                )
            else:
                claim_key = self.log.key(request.claim_id)
                self._quotas.learn(result.current, quota_keys)
                self._index.release(
                    keys,
                    {
                        k: v
                        for k, v in result.current.items()
                        if k != claim_key and k not in quota_keys
                    },
                    result.revision,
                )
                if request.outcome is not None:
                    self._quotas.forget(quota_keys)
                    continue  # decided by the settle: outcome unknown
                landed = result.current.get(claim_key) if request.named else None
                if landed is not None:
                    # This claim landed before (a repeat): its record decides.
                    self._replay(request, ClaimLog.parse(landed))
                    continue
                self.conflicts += 1
                if request.attempts < self._attempts:
                    later.append(request)
                elif not self._replay_recorded(request):
                    request.outcome = ClaimContention(self._attempts)
        return later

    def _check_quotas(self, request: ClaimRequest, now: float) -> None:
        """``QuotaExceeded``, or the request's counter writes for this round."""
        acquirable, _, _ = self._index.stock(request.pool, request.use_reserve, request.allow_stale)
        self._quotas.check_share(request.quotas, request.requester, request.count, acquirable)
        request.reservation = self._quotas.reserve(
            request.quotas, request.requester, request.count, now
        )

    @staticmethod
    def _unavailable(
        selected: list[ClaimRequest], exc: StoreUnavailable
    ) -> list[tuple[ClaimRequest, TxnResult]]:
        """The batch surely did not land: each request whose own deadline
        has passed gets the error; the others select again."""
        now = time.monotonic()
        for request in selected:
            if request.deadline is None or request.deadline <= now:
                request.outcome = exc
        return [(request, TxnResult(False, 0)) for request in selected]

    def _txn(self, request: ClaimRequest, acquired: list[PoolInstance], now: float) -> Txn:
        az = request.az
        compares = [
            Compare.mod_revision(self._keys.pool(az, vm.name), rev) for vm, rev in request.chosen
        ]
        # Handed-out VMs leave the pool directory (so the pool holds only
        # what may still be acquired) for the handed-out records, and the
        # holder index names them under their requester (warmcache.claims.held).
        ops: list[Put | Delete] = [
            op
            for vm in acquired
            for op in (
                Delete(self._keys.pool(az, vm.name)),
                Put(self._keys.acquired(az, vm.name), vm.model_dump_json()),
                Put(self._keys.held(request.requester, az, vm.name), "1"),
            )
        ]
        if request.named:
            record = ClaimRecord(
                claim_id=request.claim_id,
                requester=request.requester,
                flavor=request.flavor,
                az=az,
                count=request.count,
                mode=request.mode,
                acquired_at=now,
                expires_at=now + self._retention_s,
                vms=acquired,
            )
            key = self.log.key(request.claim_id)
            compares.append(Compare.absent(key))
            ops.append(Put(key, record.model_dump_json()))
            # the sweep's index: the record's bucket of expiry time
            ops.append(Put(self.log.expiry_key(request.claim_id, record.expires_at), "1"))
        compares += request.reservation.compares
        ops += request.reservation.puts
        return Txn(compares, ops)

    def _replay(self, request: ClaimRequest, record: ClaimRecord) -> None:
        """A named claim that had landed: its VMs again, or ``ClaimMismatch``."""
        differs = record.differs(
            request.flavor, request.az, request.count, request.mode, request.requester
        )
        if differs:
            request.outcome = ClaimMismatch(request.claim_id, differs)
            return
        # Its VMs may have been given back since: a repeat must not hand
        # them out again (one read per VM, on this rare path only).
        try:
            gone = [vm.name for vm in record.vms if not self._holds_claim(request, vm)]
        except StoreError as exc:
            request.outcome = exc
            return
        if gone:
            request.outcome = ClaimReleased(request.claim_id, gone)
            return
        ready, _, _ = self._index.stock(request.pool, False)
        request.outcome = Claimed(record.vms, request.attempts, ready, replayed=True)

    def _replay_recorded(self, request: ClaimRequest) -> bool:
        """Before a named request is refused (no capacity, contention): did
        this claim land earlier? Then that is the answer."""
        if not request.named:
            return False
        try:
            kv = self._store.get(self.log.key(request.claim_id))
        except StoreError as exc:
            request.outcome = exc
            return True
        if kv is None:
            return False
        self._replay(request, ClaimLog.parse(kv))
        return True

    def _settle(
        self,
        selected: list[ClaimRequest],
        acquired: dict[str, list[PoolInstance]],
        cause: StoreError,
    ) -> list[tuple[ClaimRequest, TxnResult]]:
        """Did each unanswered claim land? Decided for good (see the module
        doc); a claim whose fate the store cannot tell gets
        ``ClaimOutcomeUnknown`` (and the failed result, so its VMs are
        released: a late apply is impossible only once fenced, but the VMs'
        revisions are compared by every later claim, so none is handed out
        twice)."""
        fences = []
        for request in selected:
            first, revision = request.chosen[0]
            key = self._keys.pool(request.az, first.name)
            fences.append(
                Txn([Compare.mod_revision(key, revision)], [Put(key, first.model_dump_json())])
            )
        out: list[tuple[ClaimRequest, TxnResult]] = []
        try:
            fenced = self._store.txns(fences)
        except StoreError as exc:
            for request in selected:
                out.append((request, TxnResult(False, 0)))
                request.outcome = ClaimOutcomeUnknown(
                    request.claim_id, [vm.name for vm, _ in request.chosen], f"{cause}; then {exc}"
                )
            return out
        for request, fence in zip(selected, fenced, strict=True):
            first, _ = request.chosen[0]
            if fence.succeeded:  # it had not landed, and now it never can
                key = self._keys.pool(request.az, first.name)
                out.append(
                    (
                        request,
                        TxnResult(
                            False,
                            fence.revision,
                            {key: KeyValue(key, first.model_dump_json(), 0, fence.revision)},
                        ),
                    )
                )
                continue
            try:
                landed = all(self._holds_claim(request, vm) for vm in acquired[request.claim_id])
            except StoreError as exc:
                out.append((request, TxnResult(False, 0)))
                request.outcome = ClaimOutcomeUnknown(
                    request.claim_id, [vm.name for vm, _ in request.chosen], f"{cause}; then {exc}"
                )
                continue
            # Not landed: someone else's change won the first VM.
            out.append(
                (request, TxnResult(landed, fence.revision, {} if landed else fence.current))
            )
        return out

    def _holds_claim(self, request: ClaimRequest, vm: PoolInstance) -> bool:
        held = PoolRecords(self._store, self._keys).get_acquired(request.az, vm.name)
        return held is not None and held.record.claim_id == request.claim_id
