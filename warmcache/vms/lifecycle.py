"""The VMs' feature package of the service: lookups, releases, leases, day-2 disks and
the release worker, assembled from the service context and the acquirer's
views (the rules it follows, the pool index, the holder index)."""

from __future__ import annotations

from collections.abc import Callable

from warmcache.acquire.acquirer import Acquirer
from warmcache.acquire.acquirer import check_lease as check_lease
from warmcache.context import ServiceContext
from warmcache.layout import Stored
from warmcache.model import InstanceState, PoolInstance, Preallocation
from warmcache.vms.book import Found, VmBook
from warmcache.vms.disks import DataDisks
from warmcache.vms.release import Releaser
from warmcache.vms.worker import ReleaseWorker


class Lifecycle:
    def __init__(
        self, ctx: ServiceContext, acquirer: Acquirer, wake_worker: Callable[[], None]
    ) -> None:
        config = ctx.config
        self._config = config
        self._acquirer = acquirer
        rules = acquirer.rules

        def azs() -> set[str]:
            rules.catch_up()
            return set(rules.azs()) | {h.az for h in ctx.hosts.hosts()}

        self.book = VmBook(ctx.store, ctx.keys, azs, acquirer.held)
        self.releaser = Releaser(
            ctx.store,
            ctx.keys,
            ctx.clock,
            self.book,
            acquirer.held,
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
            on_released=lambda vm, held_s: acquirer.ledger.released(vm.az, vm.flavor, held_s),
        )

    def _hand(self, item: Stored[PoolInstance]) -> None:
        self.worker.hand(item)
        self._wake_worker()

    def _below_target(self, az: str, flavor: str) -> bool:
        rule = self._acquirer.rules.get(az, flavor)
        if rule is None:
            return False
        self._acquirer.index.catch_up()
        target = self._acquirer.targets.sized(az, flavor, rule).total_instances
        return self._acquirer.index.pooled((az, flavor)) < target

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
        self._acquirer.rules.catch_up()
        return self.releaser.reclaim_expired(
            sorted(self._acquirer.rules.azs()), self._config.lease_grace_s
        )

    def worker_job(self) -> float:
        self.worker.tick(self._config.release_interval_s)
        return self._config.release_interval_s
