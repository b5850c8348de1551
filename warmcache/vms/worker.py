"""The release worker: what becomes of a VM given back (DESIGN.md §8,
invariant 7).

Every instance runs one (``service.release_interval_s``, and at once after
a release on its own instance). It reads ``<prefix>/releasing/`` (only the
VMs given back and not yet gone: bounded by what is in flight, not by the
fleet), and for each VM due:

1. **takes** it: rewrites its record with its own node and the time,
   conditional on the revision it read. Two instances never act on one VM
   at once; a taker that died (or a VM whose agent did not answer) is taken
   again only after ``release_retry_s``, doubling per try (at most 10
   minutes), and never sooner than the agent timeout.
2. **recycles** it (the rule says ``recycle``, the VM is of its pool's
   current generation, recycled fewer than ``recycle_max_uses`` times, and
   the pool is below its target): state ``recycling``, the agent remakes
   it from the image (``HostAgent.recycle``), then it goes back into the
   pool as ``ready`` in one transaction conditional on the take. A recycle
   the agent refuses deletes the VM (the agent does so itself).
3. else **deletes** it through its agent (a VM the agent no longer has is
   gone: that is what was wanted), then one transaction conditional on the
   take removes the record and puts its addresses in quarantine, and
   ``vm.released`` is emitted. Only that transaction's winner reports the
   VM released: never twice.

An agent that cannot be reached leaves the VM ``releasing``, its capacity
booked, retried with backoff; past ``release_stuck_after_s`` it is reported
once (``vm.release_stuck`` and an alert).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from warmcache.errors import AgentError, AgentUnavailable, AgentVmNotFound, StoreError
from warmcache.images import Image, image_digest
from warmcache.inventory import HostView
from warmcache.layout import Keys, PoolRecords, Stored
from warmcache.logs import in_context
from warmcache.model import BuildRule, Flavor, InstanceState, PoolInstance, pool_generation
from warmcache.networks import AddressRelease, NetworkBook, network_of
from warmcache.ports import (
    AlertSink,
    Clock,
    Compare,
    CoordinationStore,
    Delete,
    HostAgent,
    Put,
    Txn,
    VmSpec,
)

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 600.0


@dataclass
class _Outcome:
    """What one VM's pass writes (nothing: None), what to do once that
    landed, and whether it finished the VM."""

    txn: Txn | None
    done: Callable[[], None] = lambda: None
    finishes: int = 0


class ReleaseWorker:
    def __init__(
        self,
        *,
        store: CoordinationStore,
        keys: Keys,
        clock: Clock,
        node: str,
        hosts: HostView,
        agent_for: Callable[[str], HostAgent],
        flavors: Callable[[], Mapping[str, Flavor]],
        images: Callable[[], Mapping[str, Image]],
        rule: Callable[[str, str], BuildRule | None],
        below_target: Callable[[str, str], bool],
        addresses: AddressRelease | None,
        emit: Callable[..., None],
        alerts: AlertSink,
        retry_s: float,
        stuck_after_s: float,
        take_s: float,
        concurrency: int = 8,
        on_released: Callable[[PoolInstance, float], None] = lambda _vm, _held_s: None,
    ) -> None:
        self._store = store
        self._keys = keys
        self._clock = clock
        self._node = node
        self._hosts = hosts
        self._agent_for = agent_for
        self._flavors = flavors
        self._images = images
        self._rule = rule
        self._below_target = below_target
        self._addresses = addresses
        self._emit = emit
        self._alerts = alerts
        self._retry_s = retry_s
        self._stuck_after_s = stuck_after_s
        self._take_s = take_s
        self._concurrency = concurrency
        self._on_released = on_released
        self._lock = threading.Lock()  # one pass at a time on this instance
        self._executor: ThreadPoolExecutor | None = None
        self._handed: list[Stored[PoolInstance]] = []
        self._handed_lock = threading.Lock()
        self._scanned_at = float("-inf")

    def backoff(self, tries: int) -> float:
        return float(min(MAX_BACKOFF_S, self._retry_s * 2 ** max(0, tries - 1)))

    def due(self, rec: PoolInstance, now: float) -> bool:
        r = rec.release
        if r is None or r.tried_at is None:
            return True
        return now - r.tried_at >= max(self.backoff(r.tries), self._take_s if r.worker else 0.0)

    def hand(self, item: Stored[PoolInstance]) -> None:
        """A VM this instance released, taken for this worker in the release's
        own transaction: acted on by the next pass without another take."""
        with self._handed_lock:
            self._handed.append(item)

    def tick(self, every_s: float) -> int:
        """The scheduled pass: what was handed, and everything due at most
        every ``every_s`` (the range of ``releasing/`` is not read per release)."""
        now = self._clock.now()
        full = now - self._scanned_at >= every_s
        return self.run_once(full=full)

    def run_once(self, full: bool = True) -> int:
        """One pass over the VMs given back (``full``: all that are due, else
        only those handed by this instance's releases); how many it finished
        (gone, or back in their pool). Its store writes are batched: the
        takes of the pass in one ``txns`` call, what the agents did in another."""
        with self._lock:
            with self._handed_lock:
                handed, self._handed = self._handed, []
            self._hosts.catch_up()
            now = self._clock.now()
            items = []
            if full:
                self._scanned_at = now
                mine = {item.key for item in handed}
                items = [
                    item
                    for item in PoolRecords(self._store, self._keys).releasing()
                    if item.key not in mine and self.due(item.record, now)
                ]
            taken = [*handed, *(self._take(items) if items else [])]
            if not taken:
                return 0
            if len(taken) == 1:
                outcomes = [self._act(taken[0])]
            else:
                outcomes = list(self._pool().map(in_context(self._act), taken))
            return self._settle(outcomes)

    def _pool(self) -> ThreadPoolExecutor:
        """Agent calls of a pass run in parallel, on threads kept for the
        next pass (a pool a pass would make new threads and store
        connections every time)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=max(1, self._concurrency), thread_name_prefix="release"
            )
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # --- one pass: take, act, settle ------------------------------------------------

    def _take(self, items: list[Stored[PoolInstance]]) -> list[Stored[PoolInstance]]:
        now = self._clock.now()
        wanted = []
        for item in items:
            r = item.record.release
            assert r is not None
            update = {"worker": self._node, "tried_at": now, "tries": r.tries + 1}
            wanted.append(
                Stored(
                    item.key,
                    item.mod_revision,
                    item.record.model_copy(update={"release": r.model_copy(update=update)}),
                )
            )
        try:
            results = self._store.txns(
                [
                    Txn(
                        [Compare.mod_revision(w.key, w.mod_revision)],
                        [Put(w.key, w.record.model_dump_json())],
                    )
                    for w in wanted
                ]
            )
        except StoreError as exc:
            log.warning("release worker: %s", exc)
            return []
        return [
            Stored(w.key, r.revision, w.record)
            for w, r in zip(wanted, results, strict=True)
            if r.succeeded  # else another instance took it, or it changed
        ]

    def _act(self, taken: Stored[PoolInstance]) -> _Outcome:
        """Ask the agent; what to write for it."""
        rec = taken.record
        agent = self._agent(rec)
        try:
            if agent is None:
                raise AgentUnavailable(rec.hypervisor, "its agent is not heartbeating")
            spec = self._recycle_spec(rec)
            if spec is not None:
                return self._recycle(taken, agent, spec)
            with contextlib.suppress(AgentVmNotFound):  # gone already: what was wanted
                agent.delete(rec.name)
            return self._gone(taken, "released")
        except AgentError as exc:
            return self._not_yet(taken, str(exc))
        except StoreError as exc:
            log.warning("release of %s: %s (tried again)", rec.name, exc)
            return _Outcome(None)

    def _settle(self, outcomes: list[_Outcome]) -> int:
        writing = [o for o in outcomes if o.txn is not None]
        if not writing:
            return 0
        try:
            results = self._store.txns([o.txn for o in writing if o.txn is not None])
        except StoreError as exc:
            log.warning("release worker: %s (the next pass sees it)", exc)
            return 0
        finished = 0
        for outcome, result in zip(writing, results, strict=True):
            if result.succeeded:  # else taken over meanwhile: never reported twice
                outcome.done()
                finished += outcome.finishes
        return finished

    def _agent(self, rec: PoolInstance) -> HostAgent | None:
        host = self._hosts.get(rec.hypervisor)
        return self._agent_for(host.endpoint) if host and host.endpoint else None

    def _recycle_spec(self, rec: PoolInstance) -> VmSpec | None:
        """What to remake the VM from, when it should be recycled; else None."""
        r = rec.release
        rule = self._rule(rec.az, rec.flavor)
        flavor = self._flavors().get(rec.flavor)
        if r is None or r.action != "recycle" or rule is None or flavor is None:
            return None
        if not rule.enabled or rec.stale or rec.health_failures:
            return None
        if rule.recycle_max_uses is not None and rec.uses >= rule.recycle_max_uses:
            return None
        images = self._images()
        if flavor.image_id and flavor.image_id not in images:
            return None
        if rec.generation and rec.generation != pool_generation(
            flavor, rule, image_digest(flavor, images)
        ):
            return None  # an older generation: replaced by a new VM, not recycled
        if not self._below_target(rec.az, rec.flavor):
            return None
        network = None
        if rec.addresses and rec.network:
            network = network_of(
                NetworkBook(self._store, self._keys).get(rec.az, rec.network), rec.addresses[0]
            )
        image = images.get(flavor.image_id) if flavor.image_id else None
        return VmSpec(rec.name, flavor, rule.user_data, rule.group_hint, network, image)

    def _recycle(self, taken: Stored[PoolInstance], agent: HostAgent, spec: VmSpec) -> _Outcome:
        rec = taken.record
        recycling = rec.with_state(InstanceState.RECYCLING)
        result = self._store.txn(
            [Compare.mod_revision(taken.key, taken.mod_revision)],
            [Put(taken.key, recycling.model_dump_json())],
        )
        if not result.succeeded:
            return _Outcome(None)
        taken = Stored(taken.key, result.revision, recycling)
        started = self._clock.now()
        try:
            status = agent.recycle(spec)
        except AgentUnavailable as exc:
            return self._not_yet(taken, str(exc))  # not known to have happened
        except AgentError as exc:
            # the agent deleted the VM when it could not remake it
            self._emit("vm.recycle_failed", name=rec.name, az=rec.az, error=str(exc))
            return self._gone(taken, "recycle failed")
        if not status.healthy:
            with contextlib.suppress(AgentVmNotFound):
                agent.delete(rec.name)
            return self._gone(taken, "unhealthy after its recycle")
        now = self._clock.now()
        back = rec.with_state(
            InstanceState.READY,
            acquired_by=None,
            acquired_at=None,
            claim_id=None,
            expires_at=None,
            data_disks=(),
            release=None,
            uses=rec.uses + 1,
            ready_at=now,
            server_id=status.server_id or rec.server_id,
            standby="running",
        )
        pool_key = self._keys.pool(rec.az, rec.name)

        def done() -> None:
            self._emit(
                "vm.recycled",
                name=rec.name,
                az=rec.az,
                flavor=rec.flavor,
                hypervisor=rec.hypervisor,
                uses=back.uses,
                duration_s=round(now - started, 3),
            )
            self._on_released(rec, self._held_s(rec))

        return _Outcome(
            Txn(
                [Compare.mod_revision(taken.key, taken.mod_revision), Compare.absent(pool_key)],
                [Delete(taken.key), Put(pool_key, back.model_dump_json())],
            ),
            done,
            1,
        )

    def _gone(self, taken: Stored[PoolInstance], why: str) -> _Outcome:
        rec = taken.record
        ops: list[Delete | Put] = [Delete(taken.key)]
        if self._addresses is not None:
            ops += self._addresses.ops(rec)
        r = rec.release
        now = self._clock.now()

        def done() -> None:
            self._emit(
                "vm.released",
                name=rec.name,
                az=rec.az,
                flavor=rec.flavor,
                hypervisor=rec.hypervisor,
                holder=rec.acquired_by,
                by=r.by if r else None,
                reason=r.reason if r else "released",
                how=why,
                held_s=self._held_s(rec),
                releasing_s=round(now - (r.since if r else now), 3),
            )
            self._on_released(rec, self._held_s(rec))

        return _Outcome(Txn([Compare.mod_revision(taken.key, taken.mod_revision)], ops), done, 1)

    def _held_s(self, rec: PoolInstance) -> float:
        end = rec.release.since if rec.release else self._clock.now()
        return round(end - (rec.acquired_at or end), 3)

    def _not_yet(self, taken: Stored[PoolInstance], why: str) -> _Outcome:
        """The agent did not do it: left for a later try (backoff), reported
        once when it has been releasing too long."""
        rec = taken.record
        r = rec.release
        assert r is not None
        stuck = not r.stuck_reported and self._clock.now() - r.since >= self._stuck_after_s
        update = {
            "worker": None,
            "last_error": why[:500],
            "stuck_reported": r.stuck_reported or stuck,
        }
        later = rec.model_copy(update={"release": r.model_copy(update=update)})
        log.warning("release of %s not done yet (try %d): %s", rec.name, r.tries, why)

        def done() -> None:
            if not stuck:
                return
            self._emit(
                "vm.release_stuck",
                name=rec.name,
                az=rec.az,
                hypervisor=rec.hypervisor,
                since=r.since,
                tries=r.tries,
                error=why[:500],
            )
            self._alerts.alert(
                f"warmcache: {rec.name} stuck releasing on {rec.hypervisor}",
                f"{rec.name} ({rec.az}/{rec.flavor}) was given back "
                f"{self._clock.now() - r.since:.0f} s ago and its agent has not deleted it "
                f"after {r.tries} tries: {why}\nIts capacity stays booked until its agent "
                "confirms; the release is tried again.\n",
            )

        return _Outcome(
            Txn(
                [Compare.mod_revision(taken.key, taken.mod_revision)],
                [Put(taken.key, later.model_dump_json())],
            ),
            done,
            0,
        )
