"""A leader cycle over a large simulated fleet: how does placement scale?

    .venv/bin/python bench/fleet.py [--hypervisors 10000] [--racks 500] [--azs 3] [--vms 3000]
        [--networks]

Simulated hypervisors (``warmcache.testing.sim``, behind the host-agent port, no
create latency: this measures warmcache, not boot times) publish their facts
into a SQLite store; rules ask for ``--vms`` VMs spread over the AZs; one
leader cycle builds them. Reported: the cycle's wall time, placement time
per VM (pick the best host plus re-score what that placement changed,
p50/p99), the one-off evaluation of every host per AZ and flavor
(``place_setup_s``), and the store operations the cycle made (every call
through the port, by kind).

With ``--networks`` every AZ has an address pool (a /16) and each VM built
also gets its address in the fenced build transaction (a line before the
last says how many are held, and that they are distinct).

With ``--demand`` every AZ has three demand-sized pools (small, medium,
large; ceiling ``--vms`` / AZs each) sharing an AZ budget of ``--vms`` /
AZs VMs, and two days of demand history written by three instances (one
chunk per pool, hour and instance: 432 chunks an AZ); the cycle sizes the
pools first. A line before the last gives the sizing's own cost per AZ
(history read, forecasts, budget split), p50 of 10, beside the store's
range read of the same chunks.

Last line: ``fleet hypervisors=<H> vms=<V> cycle_s=<x> place_p50_ms=<y>
place_p99_ms=<z> store_ops=<n> place_setup_s=<s>``.
"""

from __future__ import annotations

import argparse
import atexit
import random
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from warmcache.adapters.file_catalog import FileFlavorCatalog
from warmcache.adapters.sqlite_events import LogEvents
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.builders.cycle import BuildCycle
from warmcache.clock import SystemClock
from warmcache.config import DemandConfig
from warmcache.demand.budgets import BudgetBook
from warmcache.demand.forecast import HOUR_S, Chunk, hour_of
from warmcache.demand.sizing import Sizer
from warmcache.demand.targets import TargetView
from warmcache.inventory import HostView
from warmcache.layout import Keys, PoolRecords, RuleRecords
from warmcache.leader.election import LeaderElection
from warmcache.model import HostFacts
from warmcache.networks import NetworkBook
from warmcache.placement.pipeline import (
    Decision,
    PlacementPipeline,
    PlacementSession,
    default_pipeline,
)
from warmcache.placement.request import PlacementRequest
from warmcache.rules import RuleBook
from warmcache.testing.sim import sim_fleet

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


class CountingStore:
    """Counts every call through the coordination-store port."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not callable(target):
            return target

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return target(*args, **kwargs)

        return counted


class TimedSession(PlacementSession):
    """Times each placement: the pick plus the re-scoring it causes."""

    def __init__(
        self,
        pipeline: PlacementPipeline,
        hosts: Sequence[HostFacts],
        request: PlacementRequest,
        times: list[float],
    ) -> None:
        super().__init__(pipeline, hosts, request)
        self._times = times
        self._pick_s = 0.0

    def pick(self) -> Decision:
        started = time.perf_counter()
        decision = super().pick()
        self._pick_s = time.perf_counter() - started
        return decision

    def placed(self, host: HostFacts) -> None:
        started = time.perf_counter()
        super().placed(host)
        self._times.append(self._pick_s + time.perf_counter() - started)


class TimedPipeline(PlacementPipeline):
    def __init__(self, inner: PlacementPipeline) -> None:
        super().__init__(inner.validators, inner.preferences)
        self.times: list[float] = []  # per VM placed
        self.setup_s = 0.0  # evaluating every host once per (AZ, flavor) session

    def session(self, hosts: Sequence[HostFacts], request: PlacementRequest) -> PlacementSession:
        started = time.perf_counter()
        session = TimedSession(self, hosts, request, self.times)
        self.setup_s += time.perf_counter() - started
        return session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hypervisors", type=int, default=10_000)
    parser.add_argument("--racks", type=int, default=500)
    parser.add_argument("--azs", type=int, default=3)
    parser.add_argument("--vms", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--networks",
        action="store_true",
        help="an address pool per AZ (a /16): every VM built also gets its address",
    )
    parser.add_argument(
        "--demand",
        action="store_true",
        help="three demand-sized pools per AZ sharing an AZ budget, two days of history",
    )
    parser.add_argument(
        "--rollover",
        action="store_true",
        help="then change every rule's user_data (a new generation) and time the cycles "
        "that roll the pools over, replace_per_cycle = a quarter of each pool",
    )
    args = parser.parse_args()
    racks_per_az = max(1, args.racks // args.azs)
    per_rack = max(1, args.hypervisors // (racks_per_az * args.azs))
    work = Path(tempfile.mkdtemp(prefix="warmcache-fleet-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    raw = SqliteStore(work / "store.db")
    keys = Keys("fleet")
    started = time.monotonic()
    agents = sim_fleet(raw, keys.prefix, args.azs, racks_per_az, per_rack)
    print(
        f"{len(agents)} simulated hypervisors in {args.azs} AZs x {racks_per_az} racks "
        f"published in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    catalog = FileFlavorCatalog(CONFIG_DIR / "flavors.toml")
    book = RuleBook(raw, keys, catalog)
    per_az = args.vms // args.azs
    for a in range(1, args.azs + 1):
        if args.demand:
            seed_demand(raw, keys, f"az{a}", per_az)
            continue
        book.put(
            f"az{a}",
            "small",
            {"max_instance_per_cycle": per_az, "total_instances": per_az, "min_fault_domain": 3},
        )
    if args.networks:
        pools = NetworkBook(raw, keys)
        for a in range(1, args.azs + 1):
            pools.create(
                f"az{a}", "default", {"cidrs": [f"10.{a}.0.0/16"], "gateway": f"10.{a}.0.1"}
            )
    store = CountingStore(raw)
    hosts = HostView(store, keys.hosts_dir())
    hosts.refresh()
    pipeline = TimedPipeline(default_pipeline())
    sizer = (
        Sizer(
            store,
            keys,
            SystemClock(),
            DemandConfig(refresh_s=0),
            cycle_interval_s=900,
            ledger=None,
            targets=TargetView(store, keys),
            emit=lambda *_a, **_k: None,
        )
        if args.demand
        else None
    )
    cycle = BuildCycle(
        store=store,
        keys=keys,
        flavors=lambda: {f.name: f for f in catalog.list()},
        images=lambda: {i.id: i for i in catalog.images()},
        hosts=hosts,
        agent_for=agents.__getitem__,
        events=LogEvents(),
        clock=SystemClock(),
        pipeline=pipeline,
        concurrency=args.concurrency,
        retries=1,
        sizer=sizer,
    )
    election = LeaderElection(store, keys.leader(), "bench", ttl_s=600, clock=SystemClock())
    store.calls.clear()
    started = time.monotonic()
    with election.lead() as leadership:
        assert leadership is not None
        report = cycle.run(election.writer(leadership))
    cycle_s = time.monotonic() - started
    built = sum(report.built.values())
    ms = sorted(t * 1000 for t in pipeline.times)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else 0.0
    ops = sum(store.calls.values())
    if args.networks:
        held = [NetworkBook(raw, keys).held(f"az{a}") for a in range(1, args.azs + 1)]
        addresses = [a for az in held for a in az]
        print(f"addresses: {len(addresses)} held for {built} VMs, {len(set(addresses))} distinct")
    print(
        f"cycle: built {built} of {args.vms} VMs in {cycle_s:.1f} s; problems: "
        f"{len(report.problems)}; store calls: {dict(store.calls)}"
    )
    if sizer is not None:
        sizing_cost(sizer, raw, keys, catalog, args.azs)
    if args.rollover:
        rollover(book, cycle, election, store, args.azs, per_az)
    print(
        f"fleet hypervisors={len(agents)} vms={built} cycle_s={cycle_s:.2f} "
        f"place_p50_ms={statistics.median(ms) if ms else 0:.2f} place_p99_ms={p99:.2f} "
        f"store_ops={ops} place_setup_s={pipeline.setup_s:.2f}"
    )
    raw.close()


def seed_demand(store: SqliteStore, keys: Keys, az: str, per_az: int) -> None:
    """Three demand pools sharing a budget, and two days of demand history
    as three instances would have written it (requests of 1 to 8 VMs)."""
    catalog = FileFlavorCatalog(CONFIG_DIR / "flavors.toml")
    book = RuleBook(store, keys, catalog)
    rng = random.Random(az)
    now = time.time()
    for flavor in ("small", "medium", "large"):
        book.put(
            az,
            flavor,
            {
                "max_instance_per_cycle": per_az,
                "total_instances": per_az,
                "min_fault_domain": 3,
                "sizing": "demand",
            },
        )
        for hour in range(48):
            start = hour_of(now) - (48 - hour) * HOUR_S
            for node in ("wc-1", "wc-2", "wc-3"):
                chunk = Chunk.empty(start, 60)
                for _ in range(rng.randint(20, 120)):
                    chunk.record(start + rng.random() * HOUR_S, rng.choice((1, 1, 1, 2, 3, 8)))
                store.put(keys.demand(az, flavor, int(start), node), chunk.to_json())
    BudgetBook(store, keys).put(az, {"vms": per_az})


def sizing_cost(
    sizer: Sizer, store: SqliteStore, keys: Keys, catalog: FileFlavorCatalog, azs: int
) -> None:
    """What sizing an AZ costs on its own (history read each time), beside
    the store's range read of the same chunks."""
    flavors = {f.name: f for f in catalog.list()}
    rules = RuleRecords(store, keys).by_az()
    records = PoolRecords(store, keys).by_az()
    sized, reads = [], []
    for _ in range(10):
        for a in range(1, azs + 1):
            az = f"az{a}"
            started = time.perf_counter()
            store.range(keys.demand_dir(az))
            reads.append(time.perf_counter() - started)
            started = time.perf_counter()
            sizer.size(az, rules[az], flavors, records.get(az, []))
            sized.append(time.perf_counter() - started)
    chunks = len(store.range(keys.demand_dir("az1"))[0])
    print(
        f"demand sizing per AZ (3 pools, {chunks} chunks): p50 "
        f"{statistics.median(sized) * 1000:.1f} ms; the store's range read of them alone p50 "
        f"{statistics.median(reads) * 1000:.1f} ms"
    )


def rollover(
    book: RuleBook,
    cycle: BuildCycle,
    election: LeaderElection,
    store: CountingStore,
    azs: int,
    per_az: int,
) -> None:
    """A new generation everywhere: cycles until no pool has a stale VM."""
    rate = max(1, per_az // 4)
    for a in range(1, azs + 1):
        book.put(
            f"az{a}",
            "small",
            {
                "max_instance_per_cycle": per_az,
                "total_instances": per_az,
                "min_fault_domain": 3,
                "replace_per_cycle": rate,
                "user_data": "ZWNobyBuZXc=",
            },
        )
    for n in range(1, 10):
        store.calls.clear()
        started = time.monotonic()
        with election.lead() as leadership:
            assert leadership is not None
            report = cycle.run(election.writer(leadership))
        took = time.monotonic() - started
        replaced, built = sum(report.replaced.values()), sum(report.built.values())
        print(
            f"rollover cycle {n}: built {built}, replaced {replaced} in {took:.2f} s; "
            f"store calls {sum(store.calls.values())}",
            flush=True,
        )
        if not replaced and not built:
            break


if __name__ == "__main__":
    main()
