"""The VMs' feature package of the service: lookups, releases, leases, day-2 disks and
the release worker, assembled from the service context and the views it is
handed (the rules, the holder index, the pool counts, the demand targets and
ledger): the acquirer owns those, this package does not import it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from warmcache.claims.held import HeldIndex
from warmcache.claims.leases import check_lease
from warmcache.context import ServiceContext
from warmcache.demand.ledger import DemandLedger
from warmcache.demand.targets import TargetView
from warmcache.layout import Stored
from warmcache.model import InstanceState, PoolInstance, Preallocation
from warmcache.rules import RuleView
from warmcache.vms.book import Found, VmBook
from warmcache.vms.disks import DataDisks
from warmcache.vms.release import Releaser
from warmcache.vms.worker import ReleaseWorker


class PoolCounts(Protocol):
    """How many VMs a pool holds now (the acquirer's pool index)."""

    def catch_up(self, timeout_s: float = 0.0) -> None: ...

    def pooled(self, pool: tuple[str, str]) -> int: ...


class Lifecycle:
    def __init__(
        self,
        ctx: ServiceContext,
        *,
        rules: RuleView,
        held: HeldIndex,
        pools: PoolCounts,
        targets: TargetView,
        ledger: DemandLedger,
        wake_worker: Callable[[], None],
    ) -> None:
        config = ctx.config
        self._config = config
        self._rules = rules
        self._pools = pools
        self._targets = targets

        def azs() -> set[str]:
            rules.catch_up()
            return set(rules.azs()) | {h.az for h in ctx.hosts.hosts()}

        self.book = VmBook(ctx.store, ctx.keys, azs, held)
        self.releaser = Releaser(
            ctx.store,
            ctx.keys,
            ctx.clock,
            self.book,
            held,
            rules.get,
            ctx.emit,
            config.node,
            self._hand,
        )
        self.disks = DataDisks(
            ctx.store,
            self.book,
            ctx.hosts,
            ctx.agent_for,
            lambda: {f.name: f for f in ctx.catalog.list()},
            ctx.emit,
        )
        self._wake_worker = wake_worker
        self.worker = ReleaseWorker(
            store=ctx.store,
            keys=ctx.keys,
            clock=ctx.clock,
            node=config.node,
            hosts=ctx.hosts,
            agent_for=ctx.agent_for,
            flavors=lambda: {f.name: f for f in ctx.catalog.list()},
            images=lambda: {i.id: i for i in ctx.catalog.images()},
            rule=rules.get,
            below_target=self._below_target,
            addresses=ctx.addresses,
            emit=ctx.emit,
            alerts=ctx.alerts,
            retry_s=config.release_retry_s,
            stuck_after_s=config.release_stuck_after_s,
            take_s=config.agent_timeout_s + 5.0,
            concurrency=config.build_concurrency,
            on_released=lambda vm, held_s: ledger.released(vm.az, vm.flavor, held_s),
        )

    def _hand(self, item: Stored[PoolInstance]) -> None:
        self.worker.hand(item)
        self._wake_worker()

    def _below_target(self, az: str, flavor: str) -> bool:
        rule = self._rules.get(az, flavor)
        if rule is None:
            return False
        self._pools.catch_up()
        target = self._targets.sized(az, flavor, rule).total_instances
        return self._pools.pooled((az, flavor)) < target

    # --- what the service and the API call --------------------------------------------

    def vm(self, name: str, viewer: str | None = None) -> Found:
        return self.book.get(name, viewer)

    def vms(
        self,
        *,
        state: str | None = None,
        requester: str | None = None,
        az: str | None = None,
        flavor: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> tuple[list[PoolInstance], str | None]:
        from warmcache.errors import InvalidRequest

        try:
            wanted = InstanceState(state) if state is not None else None
        except ValueError as exc:
            valid = ", ".join(s.value for s in InstanceState)
            raise InvalidRequest(f"unknown state {state!r}; one of: {valid}") from exc
        return self.book.list(
            state=wanted, requester=requester, az=az, flavor=flavor, limit=limit, after=after
        )

    def release(self, name: str, by: str, *, admin: bool, reason: str = "released") -> PoolInstance:
        return self.releaser.release(name, by, admin=admin, reason=reason)

    def release_claim(self, claim_id: str, by: str, *, admin: bool) -> list[PoolInstance]:
        return self.releaser.release_claim(claim_id, by, admin=admin)

    def renew(self, name: str, lease_s: float, by: str, *, admin: bool) -> PoolInstance:
        check_lease(lease_s)
        return self.releaser.renew(name, lease_s, by, admin=admin)

    def attach_disk(
        self,
        name: str,
        size_gib: int,
        preallocation: Preallocation,
        by: str,
        *,
        admin: bool,
    ) -> PoolInstance:
        return self.disks.attach(name, size_gib, preallocation, by, admin=admin)

    def detach_disk(self, name: str, target: str, by: str, *, admin: bool) -> PoolInstance:
        return self.disks.detach(name, target, by, admin=admin)

    def reclaim_expired(self) -> list[str]:
        """The leader's, after each cycle: leases run out are released."""
        self._rules.catch_up()
        return self.releaser.reclaim_expired(sorted(self._rules.azs()), self._config.lease_grace_s)

    def worker_job(self) -> float:
        self.worker.tick(self._config.release_interval_s)
        return self._config.release_interval_s
