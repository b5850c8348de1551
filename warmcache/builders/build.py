"""The build stage of a cycle: the AZ's planned VMs built through their
agents. Each is first recorded ``building`` through the leader's fence
(with its address held in the same transaction), then created (retried
while its agent is unreachable, never after the lock is lost), then
recorded ready; a build that fails is destroyed and forgotten the way a
purge is. ``prefetched`` keeps only the builds whose hosts hold their
image."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential,
)

from warmcache.builders.plan import PlannedVm
from warmcache.builders.prefetch import images_to_prefetch, prefetch_images
from warmcache.builders.report import CycleReport
from warmcache.builders.run import AzRun
from warmcache.errors import (
    AgentError,
    AgentUnavailable,
    AgentVmExists,
    LeadershipLost,
    StoreError,
    VmUnhealthy,
)
from warmcache.images import Image
from warmcache.logs import in_context
from warmcache.model import InstanceState, PoolInstance, StaticNetwork
from warmcache.networks import AddressRelease, Allocator, Held, NetworkBook
from warmcache.ports import Compare, HostAgent, Put, VmSpec, VmStatus
from warmcache.purge import purge_vm

log = logging.getLogger(__name__)
ADDRESS_TRIES = 8  # addresses tried for one VM when others hold them meanwhile


class Builder:
    def __init__(
        self,
        *,
        retries: int,
        retry_wait_s: float,
        release: AddressRelease | None,
        prefetch_parallel: int,
    ) -> None:
        self._retries = retries
        self._retry_wait_s = retry_wait_s
        self._release = release
        self._prefetch_parallel = prefetch_parallel

    def build_all(
        self,
        run: AzRun,
        builds: Sequence[PlannedVm],
        current: Sequence[PoolInstance],
        generations: Mapping[str, str],
        images: Mapping[str, Image],
    ) -> None:
        """Build an AZ's planned VMs, ``run.concurrency`` at a time, each
        with an address from the AZ's pools (when it has any) and reserved
        while its pool's reserve is short."""
        reserved = Counter(r.flavor for r in current if r.state == InstanceState.RESERVED)
        book = NetworkBook(run.store, run.keys)
        pools = book.in_az(run.az) if builds else {}
        addresses = Allocator(pools, book.held(run.az)) if pools else None
        build = in_context(lambda vm: self.build(run, vm, reserved, addresses, generations, images))
        with ThreadPoolExecutor(max_workers=run.concurrency) as pool:
            for _ in pool.map(build, builds):
                pass

    def build(
        self,
        run: AzRun,
        vm: PlannedVm,
        reserved: Counter[str],
        addresses: Allocator | None = None,
        generations: Mapping[str, str] | None = None,
        images: Mapping[str, Image] | None = None,
    ) -> None:
        """Record one planned VM building (fenced), have its agent create
        it, and record it ready (or reserved, while the pool's reserve is
        short); a failure is cleaned up the way a purge is (``_fail``)."""
        writer, report = run.writer, run.report
        if writer.leadership.lost.is_set():
            return
        az, flavor = vm.host.az, vm.flavor.name
        key = run.keys.pool(az, vm.name)
        started = run.clock.now()
        try:
            generation = (generations or {}).get(flavor, "")
            recorded = self._record_building(run, vm, key, addresses, generation)
            if isinstance(recorded, str):  # not ours, or no address: nothing was touched
                with run.lock:
                    self._failed(run.report, f"{vm.name}: {recorded}")
                    if recorded.startswith("no_address"):
                        report.problems.append(f"{az}/{flavor}: {recorded}")
                return
            record, network, revision = recorded
            run.emit(
                "vm.build_started",
                name=vm.name,
                az=az,
                flavor=flavor,
                hypervisor=vm.host.hypervisor,
                rack=vm.host.rack,
                placement=vm.decision.explain(),
            )
            agent = run.agents[vm.host.hypervisor]
            image = (images or {}).get(vm.flavor.image_id) if vm.flavor.image_id else None
            status = self._create(
                agent,
                VmSpec(vm.name, vm.flavor, vm.rule.user_data, vm.rule.group_hint, network, image),
                writer.leadership.lost,
            )
            if not status.healthy:
                status = agent.status(vm.name)
            if not status.healthy:
                raise VmUnhealthy(agent.endpoint, vm.name, status.state)
        except LeadershipLost:
            report.leadership_lost = True
            run.emit(
                "vm.build_abandoned",
                name=vm.name,
                az=az,
                flavor=flavor,
                reason="leadership lost before the VM was started",
            )
            return
        except StoreError as exc:
            # Only the record write talks to the store here: no VM was started.
            # If the record landed anyway, the next cycle's adoption finds no
            # VM on the agent and forgets it.
            with run.lock:
                self._failed(run.report, f"{vm.name}: not started, store failed: {exc}")
            return
        except AgentError as exc:
            self._fail(run, vm, key, revision, record, str(exc))
            return
        with run.lock:
            hold = reserved[flavor] < vm.rule.reserve_cap
            if hold:
                reserved[flavor] += 1
        state = InstanceState.RESERVED if hold else InstanceState.READY
        done = record.with_state(
            state,
            ready_at=run.clock.now(),
            server_id=status.server_id,
            addresses=record.addresses or status.addresses,
        )
        try:
            ok = writer.txn(
                [Compare.mod_revision(key, revision)], [Put(key, done.model_dump_json())]
            ).succeeded
        except LeadershipLost:
            # The VM runs and its record says building: the next leader sees it.
            report.leadership_lost = True
            return
        except StoreError as exc:
            # Same: the record still says building; the next cycle adopts it.
            with run.lock:
                self._failed(run.report, f"{vm.name}: built, record not updated: {exc}")
            return
        if not ok:
            with run.lock:
                self._failed(run.report, f"{vm.name}: record changed while building")
            return
        with run.lock:
            report.built[(az, flavor)] += 1
        run.emit(
            "vm.build_finished",
            name=vm.name,
            az=az,
            flavor=flavor,
            state=state.value,
            hypervisor=vm.host.hypervisor,
            rack=vm.host.rack,
            duration_s=round(run.clock.now() - started, 3),
        )

    def _record_building(
        self,
        run: AzRun,
        vm: PlannedVm,
        key: str,
        addresses: Allocator | None,
        generation: str = "",
    ) -> tuple[PoolInstance, StaticNetwork | None, int] | str:
        """Record the VM as ``building`` and, with its AZ's address pools, hold
        its address in the same fenced transaction (the address key created
        only if absent). An address someone else holds costs another try;
        the reason as a string when nothing was written."""
        for _ in range(ADDRESS_TRIES):
            taken = addresses.next(vm.host.rack) if addresses else None
            if addresses and taken is None:
                return f"no_address: no free address for rack {vm.host.rack} in {vm.host.az}"
            network = taken[1] if taken else None
            record = PoolInstance(
                name=vm.name,
                az=vm.host.az,
                flavor=vm.flavor.name,
                hypervisor=vm.host.hypervisor,
                rack=vm.host.rack,
                state=InstanceState.BUILDING,
                group=vm.rule.group_hint,
                created_at=run.clock.now(),
                fencing_token=run.writer.leadership.token,
                addresses=(network.address,) if network else (),
                network=taken[0] if taken else None,
                generation=generation,
                image=vm.flavor.image_id,
            )
            compares, ops = [Compare.absent(key)], [Put(key, record.model_dump_json())]
            if taken and network:
                held = Held(vm=vm.name, network=taken[0], since=run.clock.now())
                address_key = run.keys.address(vm.host.az, network.address)
                compares.append(Compare.absent(address_key))
                ops.append(Put(address_key, held.model_dump_json()))
            result = run.writer.txn(compares, ops)
            if result.succeeded:
                return record, network, result.revision
            if addresses is None or network is None or run.store.get(key) is not None:
                return "a record of that name exists"
            addresses.taken(network.address)  # held by another writer: try the next
        return f"no_address: {ADDRESS_TRIES} addresses in a row were taken meanwhile"

    def prefetched(
        self, run: AzRun, builds: list[PlannedVm], images: Mapping[str, Image]
    ) -> list[PlannedVm]:
        """The builds whose hosts hold their image (``builders/prefetch``);
        the others are reported and left for a later cycle."""
        failed = prefetch_images(
            images_to_prefetch(builds, images),
            run.agents,
            parallel=self._prefetch_parallel,
            lost=run.writer.leadership.lost,
            emit=run.emit,
        )
        if not failed:
            return builds
        kept = []
        for vm in builds:
            image = images.get(vm.flavor.image_id)
            why = failed.get((vm.host.hypervisor, image.sha256)) if image else None
            if why is None:
                kept.append(vm)
                continue
            with run.lock:
                self._failed(run.report, f"{vm.name}: not built, image not on its host: {why}")
        with run.lock:
            run.report.problems += [
                f"{hv}: image {sha[:12]} not fetched: {why}" for (hv, sha), why in failed.items()
            ]
        return kept

    def _create(self, agent: HostAgent, spec: VmSpec, lost: threading.Event) -> VmStatus:
        for attempt in Retrying(
            retry=retry_if_exception_type(AgentUnavailable),
            # A leader that lost its lock starts nothing more, retries included.
            stop=stop_after_attempt(self._retries) | stop_when_event_set(lost),
            wait=wait_exponential(multiplier=self._retry_wait_s, max=5.0),
            reraise=True,
            before_sleep=before_sleep_log(log, logging.WARNING),
        ):
            with attempt:
                try:
                    return agent.create(spec)
                except AgentVmExists:
                    # A retried create whose first attempt did land.
                    if attempt.retry_state.attempt_number > 1:
                        return agent.status(spec.name)
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _fail(
        self, run: AzRun, vm: PlannedVm, key: str, revision: int, record: PoolInstance, why: str
    ) -> None:
        """Destroy a failed build and forget it, the way a purge does: the
        record is first marked ``purging`` through the fence, so a leader
        that lost its lock leaves the VM alone for its successor to settle
        (it may be adopting it right now); a VM the agent could not destroy
        stays tracked as ``purging`` and the health poller finishes it."""
        agent = run.agents.get(vm.host.hypervisor)
        try:
            cleaned = purge_vm(run.writer.txn, key, revision, record, agent, self._release)
        except LeadershipLost:
            run.report.leadership_lost = True
            run.emit(
                "vm.build_abandoned",
                name=vm.name,
                az=vm.host.az,
                flavor=vm.flavor.name,
                reason=f"leadership lost after: {why}; the next leader settles it",
            )
            return
        except StoreError:
            cleaned = False  # the record still says building: adoption settles it
        with run.lock:
            self._failed(run.report, f"{vm.name}: {why}")
        run.emit(
            "vm.build_failed",
            name=vm.name,
            az=vm.host.az,
            flavor=vm.flavor.name,
            hypervisor=vm.host.hypervisor,
            error=why,
            cleaned_up=cleaned,
        )

    @staticmethod
    def _failed(report: CycleReport, why: str) -> None:
        """A VM this cycle did not build (the caller holds the report's lock)."""
        report.failed.append(why)
        log.warning("build failed: %s", why)
