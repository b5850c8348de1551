"""``Acquirer``: the acquisition path behind ``WarmCache.acquire`` and
``POST /v1/acquire`` (DESIGN.md §8): validation, the views it reads, the
claimer, the events and the low-water trigger.

Its views (rules, pool index; the host and drain views it is given) are
kept current by ``follow`` threads once the service is started, so an
acquisition reads nothing from the store before its claim transaction and
does only dict lookups and O(count) selection. An instance that was never
started brings the views up to date on each call instead (one change-feed
query each): correct, and slower.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from warmcache import deadline
from warmcache.acquire.claimer import Claimed, Claimer, ClaimRequest
from warmcache.acquire.index import PoolIndex
from warmcache.acquire.wake import Waker
from warmcache.claims.claim_log import ClaimRecord
from warmcache.claims.held import HeldIndex
from warmcache.claims.leases import check_lease
from warmcache.claims.quota_limits import QuotaLimitsView
from warmcache.claims.quotas import Quotas
from warmcache.config import QuotaLimit
from warmcache.context import ServiceContext
from warmcache.demand.ledger import DemandLedger
from warmcache.demand.targets import TargetView
from warmcache.errors import (
    InvalidRequest,
    NoCapacity,
    ResumeFailed,
    UnknownAZ,
    UnknownFlavor,
    UnknownPool,
    WarmCacheError,
)
from warmcache.logs import log_context
from warmcache.model import (
    CLAIM_ID_PATTERN,
    SERVICE_NAME,
    STANDBY_TIERS,
    BuildRule,
    Mode,
    PoolInstance,
    PoolSummary,
    below_low_water,
    is_valid_name,
)
from warmcache.rules import RuleView
from warmcache.stalls import StallWatch
from warmcache.views import PrefixView

log = logging.getLogger(__name__)
CLAIM_ID = re.compile(CLAIM_ID_PATTERN.strip("^$"))


class Acquirer:
    def __init__(
        self,
        ctx: ServiceContext,
        *,
        trigger_cycle: Callable[[], None],
        rng: random.Random | None = None,
        ledger: DemandLedger | None = None,
        targets: TargetView | None = None,
    ) -> None:
        """``ledger`` and ``targets``: the demand feature's (``warmcache.demand``),
        built by the service and shared with the leader's duty (made here
        when the acquirer is used on its own)."""
        config, store, keys, hosts, drains = ctx.config, ctx.store, ctx.keys, ctx.hosts, ctx.drains
        clock = ctx.clock
        self._config = config
        self._catalog = ctx.catalog
        self._emit = ctx.emit
        self._trigger = trigger_cycle
        self.hosts = hosts
        self.drains = drains
        self.rules = RuleView(store, keys)
        self.targets = targets or TargetView(store, keys)
        self.index = PoolIndex(store, keys, hosts=hosts, drains=drains, node=config.node)
        # The config's limits apply until the store's are read (quota_limits).
        self.quotas = Quotas(ctx.quotas, keys, store.get)
        self.quota_limits = QuotaLimitsView(store, keys, self.quotas.set_limits)
        self.flush_s = ctx.demand.flush_s  # the demand ledger's job (warmcache.jobs)
        self.ledger = ledger or DemandLedger(
            store, keys, clock, config.node, bin_s=ctx.demand.bin_s, keep_h=ctx.demand.keep_h
        )
        self.claimer = Claimer(
            store,
            keys,
            self.index,
            clock,
            attempts=config.acquire_attempts,
            batch=config.batch_claims,
            max_batch_vms=config.max_batch_vms,
            rng=rng,
            retention_s=config.claim_retention_s,
            quotas=self.quotas,
        )
        self._store = store
        # A definitive refusal after a stall of the process waits for the
        # views to be checked against the store (``_behind``).
        self.stalls = StallWatch()
        self._checked_at = self.stalls.now()  # when the last check began
        self._checked_done = self._checked_at  # and when it ended
        self._barrier = threading.Lock()
        self.held = HeldIndex(store, keys, self.quotas)
        self.waker = Waker(store, keys, hosts, ctx.agent_for, ctx.addresses, self.held)
        self.waker.observe = self.index.observe
        # One acquisition is one transaction: no more VMs than the store can
        # compare in one, less the claim record a named claim also compares
        # (etcd: 125 with its default --max-txn-ops).
        limit = store.txn_limit
        self.max_count = min(
            config.max_acquire_count, limit - 1 if limit else config.max_acquire_count
        )

    @property
    def views(self) -> list[PrefixView[Any]]:
        """What ``WarmCache.start`` follows (the host view first: the index
        needs to know which hosts are live before it sees their VMs)."""
        return [self.hosts, self.drains, self.rules, self.targets, self.index, self.quota_limits]

    def ledger_job(self) -> float:
        """Write what this instance was asked for (``demand.flush_s``)."""
        self.ledger.flush()
        return self.flush_s

    def refresh_shares(self) -> None:
        """Re-deal the pools' shares over the instances in the registry."""
        self.index.set_instances(s.node for s in self._store.services(SERVICE_NAME))

    def follow_shares(self, stop: threading.Event) -> None:
        """Keep the shares current until ``stop`` (a background thread)."""
        while not stop.is_set():
            try:
                with deadline.within(self._config.shares_refresh_s):
                    self.refresh_shares()
            except WarmCacheError as exc:  # keep the shares we have
                log.warning("service registry: %s", exc)
            stop.wait(self._config.shares_refresh_s)

    def acquire(
        self,
        flavor: str,
        az: str,
        count: int,
        mode: Mode | str,
        *,
        use_reserve: bool = False,
        requester: str = "anonymous",
        claim_id: str | None = None,
        lease_s: float | None = None,
    ) -> list[PoolInstance]:
        """Claim ``count`` ready VMs satisfying ``mode``, all or nothing.

        ``claim_id`` names the claim (idempotent: a repeat after it landed
        returns the same VMs and claims nothing more, on any instance;
        ``ClaimMismatch`` if the repeat asks for something else,
        ``ClaimReleased`` once its VMs were given back; see
        ``warmcache.claims.claim_log``). ``lease_s``: the VMs are reclaimed
        that long after (default: the rule's ``lease_s``, else
        ``service.default_lease_s``, else never); give them back sooner
        with ``release``.

        Raises ``InvalidRequest`` (bad count or mode), ``UnknownFlavor``,
        ``UnknownAZ``, ``UnknownPool``, ``NoCapacity`` (the pool cannot satisfy
        the mode now; nothing claimed), ``ClaimContention`` (retry later),
        ``StoreUnavailable`` (no answer within ``service.request_deadline_s``;
        nothing claimed) or ``ClaimOutcomeUnknown`` (the store stopped
        answering mid-claim). Bounded: it returns within the deadline plus
        half a second.
        """
        started = time.perf_counter()
        mode = self._check(count, mode)
        if claim_id is not None and not CLAIM_ID.fullmatch(claim_id):
            raise InvalidRequest(f"claim_id must be 1-64 of A-Z a-z 0-9 _ -, got {claim_id!r}")
        check_lease(lease_s)
        # Every log line of this claim carries its id (the caller's, or a fresh one).
        request_id = claim_id or uuid.uuid4().hex
        with log_context(claim=request_id):
            return self._acquire(
                flavor,
                az,
                count,
                mode,
                use_reserve,
                requester,
                claim_id,
                request_id,
                started,
                lease_s,
            )

    def _acquire(
        self,
        flavor: str,
        az: str,
        count: int,
        mode: Mode,
        use_reserve: bool,
        requester: str,
        claim_id: str | None,
        request_id: str,
        started: float,
        lease_s: float | None = None,
    ) -> list[PoolInstance]:
        try:
            with deadline.within(self._config.request_deadline_s):
                self.catch_up()
                rule = self._rule(flavor, az)
                quotas = self.quotas.applicable(requester, az, flavor) if self.quotas else ()
                if quotas:
                    self._check_txn_size(count, claim_id is not None, quotas, requester)
                request = ClaimRequest(
                    flavor=flavor,
                    az=az,
                    count=count,
                    mode=mode,
                    use_reserve=use_reserve,
                    allow_stale=rule.stale_handout != "never",
                    requester=requester,
                    deadline=deadline.current(),
                    claim_id=request_id,
                    named=claim_id is not None,
                    quotas=quotas,
                    lease_s=lease_s or rule.lease_s or self._config.default_lease_s,
                )
                try:
                    claim_began = self.stalls.now()
                    try:
                        claimed = self.claimer.claim(request)
                    except NoCapacity:
                        if not self._behind(claim_began):
                            raise  # definitive: the views held what the store holds
                        request = request.again()
                        claimed = self.claimer.claim(request)
                except NoCapacity:
                    # What a pool too small was asked for is demand too.
                    self.ledger.record(
                        az, flavor, count, refused_claim=request_id if claim_id else None
                    )
                    raise
            woken_at = time.perf_counter()
            if any(vm.standby != "running" for vm in claimed.vms):
                claimed = self._wake(request, claimed)
            claimed = _with_receipts(claimed, time.perf_counter() - woken_at, started)
        except WarmCacheError as exc:
            log.info(
                "acquisition of %d %s in %s (%s) failed: %s: %s",
                count,
                flavor,
                az,
                mode.value,
                exc.code,
                exc,
            )
            self._emit(
                "acquisition.failed",
                requester=requester,
                flavor=flavor,
                az=az,
                count=count,
                mode=mode.value,
                error=exc.code,
            )
            raise
        if claimed.replayed:
            self._emit(
                "acquisition.replayed",
                requester=requester,
                flavor=flavor,
                az=az,
                count=count,
                claim_id=request.claim_id,
            )
        else:
            self.ledger.record(az, flavor, count)
            self._record(request, claimed, rule, started)
        return claimed.vms

    def _wake(self, request: ClaimRequest, claimed: Claimed) -> Claimed:
        """Resume the claimed VMs kept paused or saved (``acquire.wake``):
        all of them come back, or the claim is undone and made once more
        from what is left; twice failed: ``ResumeFailed``, nothing claimed."""
        failures: list[str] = []
        for attempt in range(2):
            vms, failed = self.waker.wake(claimed.vms)
            if not failed:
                return dataclasses.replace(claimed, vms=vms)
            for name, why in failed.items():
                self._emit(
                    "vm.resume_failed", name=name, az=request.az, flavor=request.flavor, error=why
                )
            failures += failed
            if claimed.replayed or not self.waker.give_back(
                request.az,
                claimed.vms,
                claimed.revision,
                request.claim_id if request.named else None,
                failed,
            ):
                break  # handed out before (a repeat), or changed: nothing to undo
            if attempt == 0:
                with deadline.within(self._config.request_deadline_s):
                    claimed = self.claimer.claim(request.again(deadline=deadline.current()))
                if all(vm.standby == "running" for vm in claimed.vms):
                    return claimed
        raise ResumeFailed(request.flavor, request.az, failures)

    def claim(self, claim_id: str) -> ClaimRecord:
        """The record of a named claim that landed (``UnknownClaim`` if none)."""
        if not CLAIM_ID.fullmatch(claim_id):
            raise InvalidRequest(f"claim_id must be 1-64 of A-Z a-z 0-9 _ -, got {claim_id!r}")
        with deadline.within(self._config.request_deadline_s):
            return self.claimer.log.get(claim_id)

    def _record(
        self, request: ClaimRequest, claimed: Claimed, rule: BuildRule, started: float
    ) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        self._emit(
            "acquisition",
            requester=request.requester,
            flavor=request.flavor,
            az=request.az,
            count=request.count,
            mode=request.mode.value,
            latency_ms=round(latency_ms, 3),
            attempts=claimed.attempts,
            vms=[vm.name for vm in claimed.vms],
            **receipt_fields(claimed.vms),
        )
        sized = self.targets.sized(request.az, request.flavor, rule)
        ratio = rule.low_water_ratio
        if below_low_water(
            sized, claimed.remaining, self._config.low_water_ratio if ratio is None else ratio
        ):
            self._trigger()

    def pools(self) -> list[PoolSummary]:
        """Every pool's counts; a demand-sized pool's target is its current one."""
        self.catch_up()
        rules = {(az, f): self.targets.sized(az, f, r) for (az, f), r in self.rules.all().items()}
        return self.index.summary(rules)

    def _check_txn_size(
        self, count: int, named: bool, quotas: tuple[QuotaLimit, ...], requester: str
    ) -> None:
        """One acquisition is one transaction: its VMs, its claim record and
        its quota counters must fit in what the store compares at once
        (``max_count`` covers the first two; counters add to them)."""
        limit = self._store.txn_limit
        extra = int(named) + len(self.quotas.keys(quotas, requester))
        if limit and count + extra > limit:
            raise InvalidRequest(
                f"count must be at most {limit - extra} here (the most one store transaction "
                f"can claim with this request's claim record and quota counters), got {count}"
            )

    def _behind(self, claim_began: float) -> bool:
        """Before a refusal is final: could the views be behind the store?
        Only after the process stalled (SIGSTOP, a long pause: its change
        feeds stopped with it and may still be catching up, or stuck) since
        the views were last checked. They are then brought up to what the
        store holds now (a barrier, within the request's deadline, else
        ``store_unavailable``), and the claim is tried again: True (the
        feeds may have caught up on their own between the claim and this
        check, so that the barrier finds nothing missing while the claim
        saw stale views). A claim that began before a check ended is tried
        again too: it may have read the views while that check was still
        bringing them up to date."""
        started = self.stalls.now()
        if self._checked_done > claim_began:
            return True  # a check ended after this claim began: try again
        if not self.stalls.stalled_since(self._checked_at):
            return False  # no stall since: the feeds kept the views current
        with self._barrier:
            if self._checked_done > claim_began:
                return True  # another request just checked: try again
            behind = False
            for view in (self.hosts, self.drains, self.index):
                behind = view.sync() or behind
            self._checked_at = started
            self._checked_done = self.stalls.now()
            log.warning("views checked against the store after a stall (behind: %s)", behind)
            return True

    def catch_up(self) -> None:
        """Bring the views up to date (a no-op for followed views)."""
        for view in self.views:
            view.catch_up()  # a no-op for a followed view

    def _check(self, count: int, mode: Mode | str) -> Mode:
        if isinstance(count, bool) or not isinstance(count, int):
            raise InvalidRequest("count must be an integer")
        if not 1 <= count <= self.max_count:
            why = (
                ""
                if self.max_count == self._config.max_acquire_count
                else " (the most one store transaction can claim at once)"
            )
            raise InvalidRequest(f"count must be between 1 and {self.max_count}{why}, got {count}")
        try:
            return Mode(mode)
        except ValueError as exc:
            raise InvalidRequest(
                f"unknown mode {mode!r}; valid modes: {', '.join(m.value for m in Mode)}"
            ) from exc

    def _rule(self, flavor: str, az: str) -> BuildRule:
        """The pool's rule: one dict lookup. Only when there is none is the
        flavor catalog asked, to say which of flavor, AZ or pool is unknown
        (a rule is validated against the catalog when it is written)."""
        rule = self.rules.get(az, flavor)
        if rule is not None:
            return rule
        if not is_valid_name(flavor) or self._catalog.get(flavor) is None:
            raise UnknownFlavor(flavor, (f.name for f in self._catalog.list()))
        if not self.rules.has_az(az) and az not in self.hosts.count_by_az():
            # an AZ is known by its rules or by its hosts (its last rule deleted)
            raise UnknownAZ(az, set(self.rules.azs()) | set(self.hosts.count_by_az()))
        raise UnknownPool(flavor, az)


def _with_receipts(claimed: Claimed, wake_s: float, started: float) -> Claimed:
    """The claimed VMs with their receipts whole: the claim's commit, the
    wake (0 when every VM was running) and the acquisition's total."""
    total_ms = round((time.perf_counter() - started) * 1000, 3)
    vms = [
        vm
        if vm.receipt is None
        else vm.model_copy(
            update={
                "receipt": vm.receipt.model_copy(
                    update={
                        "commit_ms": round(claimed.commit_s * 1000, 3),
                        "wake_ms": round(wake_s * 1000, 3),
                        "total_ms": total_ms,
                    }
                )
            }
        )
        for vm in claimed.vms
    ]
    return dataclasses.replace(claimed, vms=vms)


def receipt_fields(vms: list[PoolInstance]) -> dict[str, object]:
    """An acquisition event's receipt: VMs per tier served from, the
    slowest tier touched, the longest any had waited, the latency split."""
    receipts = [vm.receipt for vm in vms if vm.receipt is not None]
    if not receipts:
        return {}
    tiers = Counter(r.tier for r in receipts)
    first = receipts[0]
    waited = [r.waited_s for r in receipts if r.waited_s is not None]
    return {
        "tiers": dict(sorted(tiers.items())),
        "tier": max(tiers, key=STANDBY_TIERS.index),
        "waited_s": max(waited) if waited else None,
        "select_ms": first.select_ms,
        "commit_ms": first.commit_ms,
        "wake_ms": first.wake_ms,
    }
