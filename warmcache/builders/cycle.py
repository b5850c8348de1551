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
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from warmcache.builders.adopt import adopt_orphans
from warmcache.builders.build import Builder
from warmcache.builders.dry_run import dry_run
from warmcache.builders.gather import live_hosts
from warmcache.builders.plan import plan_builds
from warmcache.builders.report import CycleReport
from warmcache.builders.rollover import mark_generations, retirable, retire
from warmcache.builders.run import AzRun
from warmcache.builders.standby import park, wanted
from warmcache.builders.upkeep import PoolUpkeep, away
from warmcache.demand.sizing import Sizer
from warmcache.drains import Drains
from warmcache.errors import LeadershipLost, StoreError
from warmcache.images import Image, image_digest
from warmcache.inventory import HostView
from warmcache.layout import Keys, PoolRecords, RuleRecords
from warmcache.leader.election import FencedWriter
from warmcache.logs import in_context
from warmcache.model import BuildRule, Flavor, HostFacts, pool_generation
from warmcache.networks import AddressRelease
from warmcache.placement.pipeline import PlacementPipeline
from warmcache.ports import Clock, CoordinationStore, Event, EventSink, HostAgent

log = logging.getLogger(__name__)


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
        self._builder = Builder(
            retries=retries,
            retry_wait_s=retry_wait_s,
            release=release,
            prefetch_parallel=prefetch_parallel,
        )
        self._upkeeper = PoolUpkeep(
            store, keys, self._emit, clock.now, shrink_after_s, release=release
        )

    def dry_run(self, az: str, flavor: str, rule: BuildRule) -> dict[str, object]:
        """What the next cycle would build for one pool, and why
        (``builders/dry_run.py``): nothing is created or written."""
        return dry_run(
            az,
            flavor,
            rule,
            store=self._store,
            keys=self._keys,
            hosts=self._hosts,
            agent_for=self._agent_for,
            flavors=self._flavors(),
            pipeline=self._pipeline,
            sizer=self._sizer,
            now=self._clock.now(),
        )

    # --- the cycle -------------------------------------------------------------------

    def run(self, writer: FencedWriter) -> CycleReport:
        """One cycle over every AZ, in parallel: per AZ the stages adopt ->
        generations -> sizing -> plan -> prefetch and build -> retire ->
        upkeep -> park (``builders/*``), each given the AZ's ``AzRun``."""
        lost = writer.leadership.lost
        report = CycleReport(writer.leadership.token, self._clock.now())
        drains = Drains.read(self._store, self._keys)
        facts, self._by_hypervisor = live_hosts(self._hosts, drains, self._agent_for)
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
            plan = plan_builds(
                run,
                sized,
                flavors,
                images,
                hosts_by_az.get(az, []),
                current,
                self._pipeline,
                self._new_name,
                retiring,
            )
            builds = self._builder.prefetched(run, plan.builds, images)
            self._builder.build_all(run, builds, current, generations, images)
            if any(retiring.values()):
                retire(run, sized, retiring, self._release)
            self._upkeeper.settle(run, sized, facts, drains)
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
