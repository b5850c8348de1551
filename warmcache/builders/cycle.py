"""One leader build cycle (DESIGN.md §5): rules -> deficits -> placement ->
agent calls -> records, AZs in parallel, bounded concurrency per AZ.

Every store write is fenced (``FencedWriter``). Per VM:

1. record ``building`` (created only if absent),
2. ``create`` on the agent (transient ``AgentUnavailable`` retried with
   backoff; an agent's refusal is final),
3. the first health probe (``status``) must pass,
4. record ``ready`` (or ``reserved`` while the pool's reserve is short),
   conditional on the record's revision from step 1.

A build that fails at 2 or 3 is cleaned up like a purge: the record marked
``purging`` through the fence, the VM destroyed through its agent, the
record removed, and reported. If leadership is lost, no new VM is started
and no retry is made; a VM whose agent call was already in flight keeps its
``building`` record, so it is tracked for the next leader (or reported by
reconciliation), never lost and never destroyed under the next leader's
feet (DESIGN §12.2).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential,
)

from warmcache.builders.adopt import adopt_orphans
from warmcache.builders.plan import PlannedVm, plan_az
from warmcache.builders.prefetch import images_to_prefetch, prefetch_images
from warmcache.builders.report import CycleReport
from warmcache.builders.rollover import (
    mark_generations,
    retirable,
    retire,
    surge,
)
from warmcache.builders.run import AzRun
from warmcache.builders.standby import park, wanted
from warmcache.builders.upkeep import PoolUpkeep, away
from warmcache.demand.sizing import Sizer
from warmcache.drains import Drains
from warmcache.errors import (
    AgentError,
    AgentUnavailable,
    AgentVmExists,
    LeadershipLost,
    StoreError,
    VmUnhealthy,
)
from warmcache.images import Image, image_digest
from warmcache.inventory import HostView
from warmcache.layout import Keys, PoolRecords, RuleRecords
from warmcache.leader.election import FencedWriter
from warmcache.logs import in_context
from warmcache.model import (
    BuildRule,
    Flavor,
    HostFacts,
    InstanceState,
    PoolInstance,
    StaticNetwork,
    pool_generation,
)
from warmcache.networks import AddressRelease, Allocator, Held, NetworkBook
from warmcache.placement.pipeline import PlacementPipeline
from warmcache.ports import (
    Clock,
    Compare,
    CoordinationStore,
    Event,
    EventSink,
    HostAgent,
    Put,
    VmSpec,
    VmStatus,
)
from warmcache.purge import purge_vm

log = logging.getLogger(__name__)
ADDRESS_TRIES = 8  # addresses tried for one VM when others hold them meanwhile


def default_vm_name(az: str, flavor: str) -> str:
    return f"{az}-{flavor}-{uuid.uuid4().hex[:10]}"


class BuildCycle:
    def __init__(
        self,
        *,
        store: CoordinationStore,
        keys: Keys,
        flavors: Callable[[], Mapping[str, Flavor]],
        hosts: HostView,
        agent_for: Callable[[str], HostAgent],
        events: EventSink,
        clock: Clock,
        pipeline: PlacementPipeline,
        concurrency: int,
        retries: int,
        retry_wait_s: float = 0.2,
        new_name: Callable[[str, str], str] = default_vm_name,
        release: AddressRelease | None = None,
        sizer: Sizer | None = None,
        images: Callable[[], Mapping[str, Image]] = dict,
        prefetch_parallel: int = 8,
        shrink_after_s: float = 1800.0,
    ) -> None:
        if concurrency < 1 or retries < 1:
            raise ValueError("concurrency and retries must be at least 1")
        self._store = store
        self._keys = keys
        self._records = PoolRecords(store, keys)
        self._flavors = flavors
        self._hosts = hosts
        self._agent_for = agent_for
        self._events = events
        self._clock = clock
        self._pipeline = pipeline
        self._concurrency = concurrency
        self._retries = retries
        self._retry_wait_s = retry_wait_s
        self._new_name = new_name
        self._release = release
        self._sizer = sizer
        self._images = images
        self._prefetch_parallel = prefetch_parallel
        self._by_hypervisor: dict[str, HostAgent] = {}
        self._lock = threading.Lock()
        self._upkeeper = PoolUpkeep(
            store, keys, self._emit, clock.now, shrink_after_s, release=release
        )

    # --- gathering -------------------------------------------------------------------

    def host_facts(
        self, drains: Drains | None = None
    ) -> tuple[dict[str, HostFacts], dict[str, HostAgent]]:
        """The live hosts by hypervisor id (from the host view, brought up to
        date from the change feed), drained ones (their own drain or their
        rack's) marked ``draining``, and the agent serving each."""
        self._hosts.catch_up()
        drains = drains if drains is not None else Drains.read(self._store, self._keys)
        facts = {
            h.hypervisor: (
                h.model_copy(update={"draining": True})
                if drains.of(h.hypervisor, h.az, h.rack)
                else h
            )
            for h in self._hosts.hosts()
        }
        agents = {hv: self._agent_for(h.endpoint) for hv, h in facts.items() if h.endpoint}
        return {hv: h for hv, h in facts.items() if hv in agents}, agents

    def dry_run(self, az: str, flavor: str, rule: BuildRule) -> dict[str, object]:
        """What the next cycle would build for one pool, and why: nothing is
        created or written."""
        drains = Drains.read(self._store, self._keys)
        facts, _ = self.host_facts(drains)
        hosts = [h for h in facts.values() if h.az == az]
        records = self._records.by_az().get(az, [])
        gone = away(records, facts, drains)
        records = [r for r in records if r.name not in gone]
        counter = iter(range(1, 1_000_000))
        sizing: dict[str, object] | None = None
        if self._sizer is not None:
            rules = {**RuleRecords(self._store, self._keys).by_az().get(az, {}), flavor: rule}
            flavors = self._flavors()
            sizing = self._sizer.explain(az, flavor, rules, flavors, records)
            target = sizing.get("target")
            if rule.sizing == "demand" and isinstance(target, int):
                rule = rule.sized(target)
        now = self._clock.now()
        retiring = len(retirable(records, flavor, rule, now))
        plan = plan_az(
            az,
            {flavor: rule},
            self._flavors(),
            hosts,
            records,
            self._pipeline,
            lambda _az, _f: f"next-{next(counter)}",
            {flavor: surge(rule, retiring)},
        )
        return {
            "az": az,
            "flavor": flavor,
            "hosts": len(hosts),
            "to_build": plan.deficits.get(flavor, 0),
            "to_replace": retiring,
            "problem": plan.problems.get(flavor),
            "sizing": sizing,
            "placements": [
                {
                    "vm": vm.name,
                    "hypervisor": vm.host.hypervisor,
                    "rack": vm.host.rack,
                    "removed": vm.decision.removed,
                    "tied": vm.decision.tied,
                    "explanation": vm.decision.explain(),
                }
                for vm in plan.builds
            ],
        }

    # --- the cycle -------------------------------------------------------------------

    def run(self, writer: FencedWriter) -> CycleReport:
        lost = writer.leadership.lost
        report = CycleReport(writer.leadership.token, self._clock.now())
        drains = Drains.read(self._store, self._keys)
        facts, self._by_hypervisor = self.host_facts(drains)
        rules = RuleRecords(self._store, self._keys).by_az()
        records = self._records.by_az()
        flavors = self._flavors()
        images = self._images()
        hosts_by_az: dict[str, list[HostFacts]] = defaultdict(list)
        for host in facts.values():
            hosts_by_az[host.az].append(host)

        def run_az(az: str) -> None:
            try:
                build_az(az)
            except LeadershipLost:
                report.leadership_lost = True
            except StoreError as exc:
                with self._lock:
                    report.problems.append(f"{az}: store failed, AZ skipped: {exc}")

        def build_az(az: str) -> None:
            run = AzRun(
                az,
                self._store,
                self._keys,
                writer,
                self._by_hypervisor,
                self._emit,
                self._clock,
                report,
                self._concurrency,
                self._lock,
            )
            current = adopt_orphans(run, records.get(az, []), rules[az])
            generations = {
                f: pool_generation(flavors[f], rule, image_digest(flavors[f], images))
                for f, rule in rules[az].items()
                if f in flavors
            }
            current = mark_generations(run, current, generations)
            # What a pool counts: not its VMs on unreachable or evacuating
            # hosts (builders/upkeep): the cycle replaces them.
            gone = away(current, facts, drains)
            current = [r for r in current if r.name not in gone]
            # Demand-sized pools: this cycle builds to their current target.
            sized = (
                self._sizer.apply(az, rules[az], flavors, current, writer)
                if self._sizer is not None
                else rules[az]
            )
            now = self._clock.now()
            retiring = {
                f: retirable(current, f, rule, now) for f, rule in sized.items() if f in flavors
            }
            # A flavor whose image is not in the catalog (a hand-edited
            # MongoDB): nothing is built from it, and the cycle says why.
            missing = {
                f: flavors[f].image_id
                for f in sized
                if f in flavors and flavors[f].image_id and flavors[f].image_id not in images
            }
            plan = plan_az(
                az,
                {f: r for f, r in sized.items() if f not in missing},
                flavors,
                hosts_by_az.get(az, []),
                current,
                self._pipeline,
                self._new_name,
                {f: surge(sized[f], len(vms)) for f, vms in retiring.items()},
            )
            with self._lock:
                report.problems += [f"{az}/{f}: {why}" for f, why in plan.problems.items()]
                report.problems += [
                    f"{az}/{f}: image {i!r} is not in the catalog: nothing built"
                    for f, i in sorted(missing.items())
                ]
            builds = self._prefetched(plan.builds, images, writer, report)
            reserved = Counter(r.flavor for r in current if r.state == InstanceState.RESERVED)
            book = NetworkBook(self._store, self._keys)
            pools = book.in_az(az) if builds else {}
            addresses = Allocator(pools, book.held(az)) if pools else None
            with ThreadPoolExecutor(max_workers=self._concurrency) as pool:
                build = in_context(
                    lambda vm: self._build(
                        vm, writer, reserved, report, addresses, generations, images
                    )
                )
                for _ in pool.map(build, builds):
                    pass
            if any(retiring.values()):
                retire(run, sized, retiring, self._release)
            self._upkeep(az, sized, facts, drains, writer, report)
            if wanted(rules[az], current):
                park(run, sized)

        # AZs whose rules are all gone still get their upkeep: their VMs retire.
        every_az = sorted(set(rules) | set(records))
        with ThreadPoolExecutor(max_workers=max(1, len(every_az))) as azs:
            list(azs.map(in_context(run_az), every_az))
        report.leadership_lost = lost.is_set()
        report.finished_at = self._clock.now()
        self._emit("cycle.summary", **report.summary())
        return report

    def _build(
        self,
        vm: PlannedVm,
        writer: FencedWriter,
        reserved: Counter[str],
        report: CycleReport,
        addresses: Allocator | None = None,
        generations: Mapping[str, str] | None = None,
        images: Mapping[str, Image] | None = None,
    ) -> None:
        if writer.leadership.lost.is_set():
            return
        az, flavor = vm.host.az, vm.flavor.name
        key = self._keys.pool(az, vm.name)
        started = self._clock.now()
        try:
            generation = (generations or {}).get(flavor, "")
            recorded = self._record_building(vm, key, writer, addresses, generation)
            if isinstance(recorded, str):  # not ours, or no address: nothing was touched
                with self._lock:
                    self._failed(report, f"{vm.name}: {recorded}")
                    if recorded.startswith("no_address"):
                        report.problems.append(f"{az}/{flavor}: {recorded}")
                return
            record, network, revision = recorded
            self._emit(
                "vm.build_started",
                name=vm.name,
                az=az,
                flavor=flavor,
                hypervisor=vm.host.hypervisor,
                rack=vm.host.rack,
                placement=vm.decision.explain(),
            )
            agent = self._by_hypervisor[vm.host.hypervisor]
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
            self._emit(
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
            with self._lock:
                self._failed(report, f"{vm.name}: not started, store failed: {exc}")
            return
        except AgentError as exc:
            self._fail(vm, key, revision, record, writer, report, str(exc))
            return
        with self._lock:
            hold = reserved[flavor] < vm.rule.reserve_cap
            if hold:
                reserved[flavor] += 1
        state = InstanceState.RESERVED if hold else InstanceState.READY
        done = record.with_state(
            state,
            ready_at=self._clock.now(),
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
            with self._lock:
                self._failed(report, f"{vm.name}: built, record not updated: {exc}")
            return
        if not ok:
            with self._lock:
                self._failed(report, f"{vm.name}: record changed while building")
            return
        with self._lock:
            report.built[(az, flavor)] += 1
        self._emit(
            "vm.build_finished",
            name=vm.name,
            az=az,
            flavor=flavor,
            state=state.value,
            hypervisor=vm.host.hypervisor,
            rack=vm.host.rack,
            duration_s=round(self._clock.now() - started, 3),
        )

    def _record_building(
        self,
        vm: PlannedVm,
        key: str,
        writer: FencedWriter,
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
                created_at=self._clock.now(),
                fencing_token=writer.leadership.token,
                addresses=(network.address,) if network else (),
                network=taken[0] if taken else None,
                generation=generation,
                image=vm.flavor.image_id,
            )
            compares, ops = [Compare.absent(key)], [Put(key, record.model_dump_json())]
            if taken and network:
                held = Held(vm=vm.name, network=taken[0], since=self._clock.now())
                address_key = self._keys.address(vm.host.az, network.address)
                compares.append(Compare.absent(address_key))
                ops.append(Put(address_key, held.model_dump_json()))
            result = writer.txn(compares, ops)
            if result.succeeded:
                return record, network, result.revision
            if addresses is None or network is None or self._store.get(key) is not None:
                return "a record of that name exists"
            addresses.taken(network.address)  # held by another writer: try the next
        return f"no_address: {ADDRESS_TRIES} addresses in a row were taken meanwhile"

    def _prefetched(
        self,
        builds: list[PlannedVm],
        images: Mapping[str, Image],
        writer: FencedWriter,
        report: CycleReport,
    ) -> list[PlannedVm]:
        """The builds whose hosts hold their image (``builders/prefetch``);
        the others are reported and left for a later cycle."""
        failed = prefetch_images(
            images_to_prefetch(builds, images),
            self._by_hypervisor,
            parallel=self._prefetch_parallel,
            lost=writer.leadership.lost,
            emit=self._emit,
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
            with self._lock:
                self._failed(report, f"{vm.name}: not built, image not on its host: {why}")
        with self._lock:
            report.problems += [
                f"{hv}: image {sha[:12]} not fetched: {why}" for (hv, sha), why in failed.items()
            ]
        return kept

    # --- rolling replacement (builders/rollover.py) ------------------------------------

    # --- upkeep (builders/upkeep.py) ---------------------------------------------------

    def _upkeep(
        self,
        az: str,
        rules: Mapping[str, BuildRule],
        facts: Mapping[str, HostFacts],
        drains: Drains,
        writer: FencedWriter,
        report: CycleReport,
    ) -> None:
        """Retire what evacuating hosts, gone rules and surplus leave over;
        keep the reserve at its cap (the records read again now: this
        cycle's builds and acquisitions count)."""
        items = self._records.read(az)[0]
        gone = away((item.record for item in items), facts, drains)
        done = self._upkeeper.run(az, rules, items, gone, self._by_hypervisor, writer)
        with self._lock:
            report.retired += done.retired
            report.problems += done.problems

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
        self,
        vm: PlannedVm,
        key: str,
        revision: int,
        record: PoolInstance,
        writer: FencedWriter,
        report: CycleReport,
        why: str,
    ) -> None:
        """Destroy a failed build and forget it, the way a purge does: the
        record is first marked ``purging`` through the fence, so a leader
        that lost its lock leaves the VM alone for its successor to settle
        (it may be adopting it right now); a VM the agent could not destroy
        stays tracked as ``purging`` and the health poller finishes it."""
        agent = self._by_hypervisor.get(vm.host.hypervisor)
        try:
            cleaned = purge_vm(writer.txn, key, revision, record, agent, self._release)
        except LeadershipLost:
            report.leadership_lost = True
            self._emit(
                "vm.build_abandoned",
                name=vm.name,
                az=vm.host.az,
                flavor=vm.flavor.name,
                reason=f"leadership lost after: {why}; the next leader settles it",
            )
            return
        except StoreError:
            cleaned = False  # the record still says building: adoption settles it
        with self._lock:
            self._failed(report, f"{vm.name}: {why}")
        self._emit(
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

    def _emit(self, type_: str, **fields: object) -> None:
        """An event, and the same as a log line (tagged with the cycle token)."""
        self._events.emit(Event(type_, self._clock.now(), fields))
        level = (
            logging.WARNING
            if type_ in ("vm.build_failed", "vm.build_abandoned")
            else (logging.INFO)
        )
        if log.isEnabledFor(level):
            log.log(
                level,
                "%s %s",
                type_,
                " ".join(f"{k}={v}" for k, v in fields.items() if k != "placement"),
            )
