"""Replay real Azure VM demand against warmcache (static and demand-sized
pools), a fixed warm pool, cold starts, and an oracle.

    .venv/bin/python bench/replay.py \\
        --trace ../shared/data/azure-vm-arrivals/v1.dev.txt \\
        --lifetimes ../shared/data/azure-vm-arrivals/v1.dev.c2100000.txt \\
        [--first-bin 0] [--bins 48] [--create-mean-s 7] [--budget 60]

Each batch of the trace (``|`` ends one) is one request, split by flavor;
its VMs live as long as the lifetimes file says (a bin's midpoint; censored
VMs their bin's lower bound). Time is simulated (a discrete-event run, so a
4-hour window takes seconds): arrivals are spread evenly within their
300 s bin, and VM creates take a lognormal latency with mean
``--create-mean-s``. Build cycles run every 60 s.

* **warmcache**: pools on warmcache's real embedded stack (SQLite store,
  claims, modes, build-rule arithmetic, placement over simulated
  hypervisors) with static targets: each flavor's is its share of
  ``--budget`` by the window's demand (known in hindsight); an early cycle
  when an acquisition leaves a pool below half its target.
* **demand**: the same stack with every rule ``sizing = "demand"``
  (ceiling: the budget) and an AZ budget of ``--budget`` VMs. The service
  records what it is asked for (its demand ledger), and each cycle sizes
  the pools with warmcache's own sizer (``warmcache.demand.sizing``):
  forecasts from that history, the budget split by the requests one more
  VM saves. Its history starts with the ``--history-bins`` bins of the
  trace before the window (``--history``, default the ``v1.train`` split,
  which ends where ``v1.dev`` starts), as a service that had been running;
  rules have ``low_water_ratio = 1``: an acquisition that leaves a pool
  below its target starts a cycle.
* **static pool**: the budget split evenly over the flavors seen, refilled
  only by the 60 s cycles.
* **oracle**: knows every arrival and every create time ahead and holds
  the same budget: each request it serves has its VMs built to be ready
  exactly when it arrives (idle 0), and it serves the most requests it can
  (smallest first) without ever holding more than the budget in its pool.
  No policy can serve more.
* **cold**: no pool: every VM is created on request.

Reported per policy: requests fully served from the pool at once,
time-to-VMs p50/p99 per request, rack-aware success among multi-VM
requests, and idle pool VM-hours within the window as a share of the
VM-hours the requests used within it. Any trace of this format is
accepted. Last line:

    replay requests=<n> warmcache_served=<x> static_served=<y> cold_p50_s=<c>
        warmcache_p50_s=<w> warmcache_idle_share=<i> demand_served=<d>
        oracle_served=<o> demand_idle_share=<j>                (one line)
"""

from __future__ import annotations

import argparse
import atexit
import heapq
import itertools
import math
import random
import shutil
import statistics
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from warmcache.adapters.file_catalog import FileFlavorCatalog
from warmcache.adapters.log_alerts import LogAlerts
from warmcache.adapters.sqlite_events import LogEvents
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.builders.deficits import state_counts, to_build
from warmcache.builders.plan import plan_az
from warmcache.builders.tiers import tier_moves
from warmcache.clock import ManualClock
from warmcache.config import CostConfig, DemandConfig, ServiceConfig
from warmcache.demand.forecast import Chunk, hour_of
from warmcache.demand.sizing import Sizer
from warmcache.demand.targets import TargetView
from warmcache.errors import NoCapacity
from warmcache.layout import Keys, PoolRecords
from warmcache.model import (
    STANDBY_TIERS,
    BuildRule,
    InstanceState,
    Mode,
    PoolInstance,
    below_low_water,
)
from warmcache.placement.pipeline import default_pipeline
from warmcache.ports import VmSpec
from warmcache.service import WarmCache
from warmcache.testing.sim import sim_fleet

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "azure-vm-arrivals"
BIN_S = 300.0
CYCLE_S = 60.0
T0 = 7 * 86_400.0  # the window's start on the service's clock (history lies before it)

KEYS = Keys("rp")


@dataclass(frozen=True)
class Request:
    at: float
    flavor: str
    lifetimes: tuple[float, ...]


def read_flavors(path: Path) -> dict[str, tuple[int, float]]:
    out = {}
    for line in path.read_text().split("\n"):
        if line.strip():
            shape, letter = line.split()
            vcpus, gib = shape.split(",")
            out[letter] = (int(vcpus), float(gib))
    return out


def read_bins(path: Path) -> dict[int, tuple[float, float]]:
    """bin -> [lower, upper) seconds, from ``seconds bin`` lines read backwards."""
    lower: dict[int, float] = {}
    for line in path.read_text().split("\n"):
        if line.strip():
            seconds, b = line.split()
            lower.setdefault(int(b), float(seconds))
    bins = sorted(lower)
    return {
        b: (lower[b], lower[bins[i + 1]] if i + 1 < len(bins) else lower[b] * 1.5 + 1)
        for i, b in enumerate(bins)
    }


def lifetime(token: str, bins: dict[int, tuple[float, float]]) -> float:
    lo, hi = bins[int(token[1:])]
    return lo if token[0] == "C" else (lo + hi) / 2


def batches(tokens: str) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for tok in tokens.split(","):
        if tok == "|":
            out.append([])
        elif tok:
            out[-1].append(tok)
    return [b for b in out if b]


def read_requests(
    trace: Path, lifetimes: Path, bins: dict[int, tuple[float, float]], first_bin: int, n_bins: int
) -> list[Request]:
    out: list[Request] = []
    arrivals = trace.read_text().split("\n")[first_bin : first_bin + n_bins]
    lives = lifetimes.read_text().split("\n")[first_bin : first_bin + n_bins]
    start = None
    for a_line, l_line in zip(arrivals, lives, strict=False):
        if not a_line.strip():
            continue
        t, tokens = a_line.split(maxsplit=1)
        _, life_tokens = l_line.split(maxsplit=1)
        start = float(t) if start is None else start
        flat: list[tuple[str, str]] = [
            (tok, life)
            for tok, life in zip(tokens.split(","), life_tokens.split(","), strict=False)
        ]
        groups: list[list[tuple[str, str]]] = [[]]
        for tok, life in flat:
            if tok == "|":
                groups.append([])
            elif tok:
                groups[-1].append((tok, life))
        groups = [g for g in groups if g]
        for i, group in enumerate(groups):
            at = float(t) - start + (i + 1) * BIN_S / (len(groups) + 1)
            by_flavor: dict[str, list[float]] = defaultdict(list)
            for flavor, life in group:
                by_flavor[flavor].append(lifetime(life, bins))
            out += [Request(at, f, tuple(ls)) for f, ls in sorted(by_flavor.items())]
    return out


def read_history(lines: Sequence[str]) -> list[tuple[float, str, int]]:
    """``(at, flavor, count)`` of the arrival lines before the window, the
    last one ending at 0."""
    out = []
    n = len(lines)
    for i, line in enumerate(lines):
        _, tokens = line.split(maxsplit=1)
        groups = batches(tokens)
        for j, group in enumerate(groups):
            at = (i - n) * BIN_S + (j + 1) * BIN_S / (len(groups) + 1)
            out += [(at, f, c) for f, c in sorted(Counter(group).items())]
    return out


@dataclass
class Outcome:
    served: int = 0
    times: list[float] = field(default_factory=list)
    multi: int = 0
    rack_aware_ok: int = 0
    idle_vm_s: float = 0.0
    used_vm_s: float = 0.0
    weighted_idle_vm_s: float = 0.0  # idle VM-seconds weighted by tier (--standby-cost)
    by_tier: Counter[str] = field(default_factory=Counter)  # VMs served per tier


def used_in_window(r: Request, end: float) -> float:
    return sum(min(life, end - r.at) for life in r.lifetimes)


def cold(requests: list[Request], draw: random.Random, mean_s: float, end: float) -> Outcome:
    mu = math.log(mean_s) - 0.125
    out = Outcome()
    for r in requests:
        out.times.append(max(draw.lognormvariate(mu, 0.5) for _ in r.lifetimes))
        out.used_vm_s += used_in_window(r, end)
    return out


def oracle(
    requests: list[Request], draw: random.Random, mean_s: float, budget: int, end: float
) -> Outcome:
    """Clairvoyant: every VM it serves is built to be ready as its request
    arrives, and it holds at most ``budget`` VMs (building) at any moment;
    it serves requests smallest first while they fit (most requests served).
    Occupancy is kept per second of simulated time, rounded outwards."""
    mu = math.log(mean_s) - 0.125
    creates = [max(draw.lognormvariate(mu, 0.5) for _ in r.lifetimes) for r in requests]
    held: dict[int, int] = defaultdict(int)
    out = Outcome()
    served = set()
    for i in sorted(range(len(requests)), key=lambda i: (len(requests[i].lifetimes), i)):
        r, n = requests[i], len(requests[i].lifetimes)
        seconds = range(math.floor(r.at - creates[i]), math.ceil(r.at) + 1)
        if n <= budget and all(held[s] + n <= budget for s in seconds):
            for s in seconds:
                held[s] += n
            served.add(i)
    for i, r in enumerate(requests):
        out.used_vm_s += used_in_window(r, end)
        if i in served:
            out.served += 1
            out.times.append(0.0)
        else:
            out.times.append(creates[i])
    return out


class PoolRun:
    """Requests against pools on warmcache's embedded stack, in simulated time.

    ``policy``: ``static`` (the rules' fixed targets) or ``demand`` (rules
    sized by demand within an AZ budget, warmcache's sizer each cycle)."""

    def __init__(
        self,
        flavors: dict[str, tuple[int, float]],
        targets: dict[str, int],
        *,
        policy: str,
        early: float,
        mean_s: float,
        seed: int,
        budget: int,
        history: list[tuple[float, str, int]] = (),  # type: ignore[assignment]
        objective: dict[str, float] | None = None,
        cost: CostConfig | None = None,
    ) -> None:
        work = Path(tempfile.mkdtemp(prefix="warmcache-replay-"))
        atexit.register(shutil.rmtree, work, ignore_errors=True)
        catalog = work / "flavors.toml"
        catalog.write_text(
            "".join(
                f"[flavors.{f}]\nvcpus = {v}\nmemory_mib = {int(g * 1024)}\ndisk_gib = 10\n"
                for f, (v, g) in flavors.items()
            )
        )
        self.clock = ManualClock(T0)
        self.store = SqliteStore(work / "store.db", clock=self.clock)
        self.agents = sim_fleet(
            self.store, "rp", 1, 6, 20, vcpus=1024, memory_mib=8 << 20, disk_gib=100_000
        )
        demand = DemandConfig(bin_s=60.0, lookback_s=3600.0, refresh_s=CYCLE_S, build_s=mean_s)
        self.service = WarmCache(
            config=ServiceConfig(
                node="replay",
                prefix="rp",
                low_water_ratio=0.0,
                leader_ttl_s=86_400,
                max_acquire_count=100_000,
                cycle_interval_s=CYCLE_S,
            ),
            store=self.store,
            catalog=FileFlavorCatalog(catalog),
            events=LogEvents(),
            alerts=LogAlerts(),
            agent_for=self.agents.__getitem__,
            clock=self.clock,
            rng=random.Random(seed),  # --seed makes the whole run repeatable
            demand=demand,
        )
        self.policy = policy
        self.early = early
        self.cost = cost or CostConfig()
        self.tier_of: dict[str, str] = {}  # ready pool VMs by the tier they wait in
        self.ready_by_tier: Counter[str] = Counter()
        if policy == "objective":
            assert objective is not None
            self.service.budgets.put("az1", {"cost": budget})
            # the ceiling: what the budget buys in the cheapest tier
            ceiling = min(10_000, int(budget / min(self.cost.weight(t) for t in STANDBY_TIERS)))
            for f in targets:
                self.service.rules.put(
                    "az1",
                    f,
                    {
                        "max_instance_per_cycle": ceiling,
                        "total_instances": ceiling,
                        "min_fault_domain": 1,
                        "sizing": "demand",
                        "low_water_ratio": early,
                        "objective": {
                            "served_at_once": objective["served"],
                            "p99_acquire_ms": int(objective["p99_ms"]),
                        },
                    },
                )
            self._seed_history(history, demand.bin_s)
        elif policy == "demand":
            self.service.budgets.put("az1", {"vms": budget})
            for f in targets:
                self.service.rules.put(
                    "az1",
                    f,
                    {
                        "max_instance_per_cycle": budget,
                        "total_instances": budget,
                        "min_fault_domain": 1,
                        "sizing": "demand",
                        "low_water_ratio": early,
                    },
                )
            self._seed_history(history, demand.bin_s)
        else:
            for f, n in targets.items():
                self.service.rules.put(
                    "az1",
                    f,
                    {
                        "max_instance_per_cycle": max(n, 1),
                        "total_instances": n,
                        "min_fault_domain": 1,
                    },
                )
        self.rules = {f: r for (_, f), r in self.service.rules.all().items()}
        self.flavor_models = {f.name: f for f in self.service.catalog.list()}
        self.sizer = Sizer(
            self.store,
            KEYS,
            self.clock,
            demand,
            cycle_interval_s=CYCLE_S,
            ledger=self.service.acquirer.ledger,
            targets=TargetView(self.store, KEYS),
            emit=lambda *_a, **_k: None,
            costs=self.cost,
        )
        self.mu = math.log(mean_s) - 0.125
        self.draw = random.Random(seed)
        self.seq = itertools.count()
        self.events: list[tuple[float, int, str, object]] = []
        self.target_changes = 0
        self._last_targets: dict[str, int] = {}

    def _seed_history(self, history: Sequence[tuple[float, str, int]], bin_s: float) -> None:
        """What the service would have recorded before the window."""
        chunks: dict[tuple[str, float], Chunk] = {}
        for at, flavor, n in history:
            t = T0 + at
            chunk = chunks.setdefault((flavor, hour_of(t)), Chunk.empty(hour_of(t), bin_s))
            chunk.record(t, n)
        for (flavor, hour), chunk in chunks.items():
            self.store.put(KEYS.demand("az1", flavor, int(hour), "history"), chunk.to_json())

    def records(self) -> list[PoolInstance]:
        return [item.record for item in PoolRecords(self.store, KEYS).read("az1")[0]]

    def sized(self, recs: list[PoolInstance]) -> dict[str, BuildRule]:
        if self.policy not in ("demand", "objective"):
            return self.rules
        sizes = self.sizer.size("az1", self.rules, self.flavor_models, recs)
        now = {f: s.target for f, s in sizes.items()}
        if now != self._last_targets:
            self.target_changes += 1
            self._last_targets = now
        return {f: r.sized(sizes[f].target, sizes[f].tiers) for f, r in self.rules.items()}

    def park(self, recs: list[PoolInstance], rules: dict[str, BuildRule]) -> None:
        """What the leader's park pass does each cycle (``builders.tiers``):
        each tier held at its target, through the (simulated) agents."""
        items = PoolRecords(self.store, KEYS).read("az1")[0]
        by_flavor: dict[str, list] = defaultdict(list)  # type: ignore[type-arg]
        for item in items:
            if item.record.state is InstanceState.READY and item.record.flavor in rules:
                by_flavor[item.record.flavor].append(item)
        for f, its in by_flavor.items():
            rule = rules[f]
            for item, tier in tier_moves(
                its, rule.tier_targets(), park_surplus=rule.tiers is not None
            ):
                rec = item.record
                host = self.service.hosts.get(rec.hypervisor)
                assert host is not None and host.endpoint
                self.agents[host.endpoint].standby(rec.name, tier)
                self.store.put(
                    KEYS.pool("az1", rec.name),
                    rec.model_copy(update={"standby": tier}).model_dump_json(),
                )
                self.ready_by_tier[self.tier_of[rec.name]] -= 1
                self.ready_by_tier[tier] += 1
                self.tier_of[rec.name] = tier

    def cycle(self, now: float, only: str | None = None) -> None:
        recs = self.records()
        self.service.hosts.catch_up()
        rules = self.sized(recs)
        if self.policy == "objective":
            self.park(recs, rules)
        for f in [only] if only else sorted(rules):
            n = to_build(rules[f], state_counts(recs, f))
            if n == 0:
                continue
            plan = plan_az(
                "az1",
                {f: rules[f]},
                self.flavor_models,
                self.service.hosts.hosts(),
                recs,
                default_pipeline(self.draw),
                lambda _a, fl: f"{fl}-{next(self.seq)}",
            )
            for vm in plan.builds:
                self.agents[vm.host.endpoint].create(VmSpec(vm.name, vm.flavor))
                rec = PoolInstance(
                    name=vm.name,
                    az="az1",
                    flavor=f,
                    hypervisor=vm.host.hypervisor,
                    rack=vm.host.rack,
                    state=InstanceState.BUILDING,
                    created_at=self.clock.now(),
                )
                self.store.put(KEYS.pool("az1", vm.name), rec.model_dump_json())
                ready = now + self.draw.lognormvariate(self.mu, 0.5)
                heapq.heappush(self.events, (ready, next(self.seq), "ready", rec))
            self.service.hosts.catch_up()

    def run(self, requests: list[Request], end: float) -> Outcome:
        push = heapq.heappush
        for t in range(0, int(end), int(CYCLE_S)):
            push(self.events, (float(t), next(self.seq), "cycle", None))
        for r in requests:
            push(self.events, (r.at, next(self.seq), "request", r))
        out = Outcome()
        last_t = 0.0
        ready_now = 0  # ready pool VMs (kept by the events below, not re-read)
        while self.events:
            now, _, kind, item = heapq.heappop(self.events)
            if now > end:
                break  # only VM ends are left: the window is over
            out.idle_vm_s += ready_now * (now - last_t)  # idle pool VM-seconds
            out.weighted_idle_vm_s += (now - last_t) * sum(
                n * self.cost.weight(t) for t, n in self.ready_by_tier.items()
            )
            last_t = now
            self.clock.advance(T0 + now - self.clock.now())  # simulated time moves only here
            if kind == "cycle":
                self.cycle(now)
            elif kind == "ready":
                rec = item
                assert isinstance(rec, PoolInstance)
                self.store.put(
                    KEYS.pool("az1", rec.name),
                    rec.with_state(
                        InstanceState.READY, ready_at=self.clock.now()
                    ).model_dump_json(),
                )
                ready_now += 1
                self.tier_of[rec.name] = "running"
                self.ready_by_tier["running"] += 1
            elif kind == "end":
                vm = item
                assert isinstance(vm, PoolInstance)
                # given back through the product: its holder releases it and
                # the release worker deletes it through its (simulated) agent
                self.service.release(vm.name, requester=vm.acquired_by)
                self.service.lifecycle.worker.run_once()
            else:
                r = item
                assert isinstance(r, Request)
                got = self.request(r, out)
                ready_now -= len(got)
                for vm in got:
                    tier = self.tier_of.pop(vm.name, "running")
                    self.ready_by_tier[tier] -= 1
                out.used_vm_s += used_in_window(r, end)
                for vm, life in zip(got, r.lifetimes, strict=False):
                    push(self.events, (now + life, next(self.seq), "end", vm))
                if r.flavor in self.rules and self.early > 0:
                    recs = self.records()
                    rule = self.sized(recs)[r.flavor]
                    ready = state_counts(recs, r.flavor)[InstanceState.READY]
                    if below_low_water(rule, ready, self.early):
                        self.cycle(now, r.flavor)
        out.idle_vm_s += ready_now * max(0.0, end - last_t)
        out.weighted_idle_vm_s += max(0.0, end - last_t) * sum(
            n * self.cost.weight(t) for t, n in self.ready_by_tier.items()
        )
        self.service.close()
        self.store.close()
        return out

    def request(self, r: Request, out: Outcome) -> list[PoolInstance]:
        count = len(r.lifetimes)
        got: list[PoolInstance] = []
        if r.flavor in self.rules:
            if count > 1:
                out.multi += 1
            for mode in [Mode.RACK_AWARE, Mode.BEST_EFFORT] if count > 1 else [Mode.BEST_EFFORT]:
                try:
                    got = self.service.acquire(r.flavor, "az1", count, mode, requester="replay")
                except NoCapacity:
                    continue
                if count > 1 and mode is Mode.RACK_AWARE:
                    out.rack_aware_ok += 1
                break
        if got:
            out.served += 1
            tiers = [vm.receipt.tier if vm.receipt else "running" for vm in got]
            out.by_tier.update(tiers)
            # the VMs are woken together: the request pays its slowest tier
            out.times.append(max(self.cost.wake_ms(t) for t in tiers) / 1000)
        else:
            out.times.append(max(self.draw.lognormvariate(self.mu, 0.5) for _ in r.lifetimes))
        return got


def summary(name: str, o: Outcome, n: int) -> tuple[str, ...]:
    ms = sorted(o.times)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    rack = f"{o.rack_aware_ok / o.multi:.1%}" if o.multi else "-"
    idle = f"{o.idle_vm_s / o.used_vm_s:.1%}" if o.used_vm_s else "-"
    return (
        name,
        f"{o.served / n:.1%}",
        f"{statistics.median(ms):.2f}",
        f"{p99:.2f}",
        rack,
        idle,
        f"{o.idle_vm_s / 3600:.1f}",
    )


def _pairs(text: str) -> list[tuple[str, float]]:
    """``running=1,paused=0.5`` -> pairs (all three states required)."""
    pairs = [(k.strip(), float(v)) for k, v in (item.split("=", 1) for item in text.split(","))]
    if {k for k, _ in pairs} != {"running", "paused", "saved"}:
        raise SystemExit(f"want running=, paused= and saved=, got {text!r}")
    return pairs


def history_lines(args: argparse.Namespace) -> list[str]:
    """The ``--history-bins`` arrival lines before the window: the end of
    ``--history`` (when given or found), then the trace's own lines before
    ``--first-bin``."""
    lines: list[str] = []
    if args.history and Path(args.history).exists():
        lines += [x for x in Path(args.history).read_text().split("\n") if x.strip()]
    lines += [x for x in args.trace.read_text().split("\n")[: args.first_bin] if x.strip()]
    return lines[-args.history_bins :] if args.history_bins else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, default=DATA / "v1.dev.txt")
    parser.add_argument("--lifetimes", type=Path, default=DATA / "v1.dev.c2100000.txt")
    parser.add_argument("--interval-map", type=Path, default=DATA / "v1.interval_map.txt")
    parser.add_argument("--flavor-map", type=Path, default=DATA / "flav_map.txt")
    parser.add_argument("--first-bin", type=int, default=0)
    parser.add_argument("--bins", type=int, default=48, help="300 s bins to replay")
    parser.add_argument("--create-mean-s", type=float, default=7.0)
    parser.add_argument("--budget", type=int, default=60, help="pool VMs over all flavors")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--history",
        default=str(DATA / "v1.train.txt"),
        help="arrivals before the trace (the demand policy's history; '' for none)",
    )
    parser.add_argument(
        "--history-bins",
        type=int,
        default=288,
        help="300 s bins of history the demand policy starts with (default a day)",
    )
    parser.add_argument(
        "--policies",
        default="warmcache,demand,objective,static,oracle,oracle-tiered,cold",
        help="which policies to run (comma-separated); the last line needs warmcache, "
        "demand, static, oracle and cold (and objective for its keys)",
    )
    parser.add_argument(
        "--standby-cost",
        default="running=1,paused=0.5,saved=0.02",
        help="what an idle VM costs in each standby state, running = 1 (default: a VM's "
        "cost half memory, half CPU; paused keeps the memory; saved only a disk image)",
    )
    parser.add_argument(
        "--objective",
        default="served=0.99,p99_ms=1000",
        help="the objective policy's objective: share served at once and p99 latency (ms); "
        "its AZ budget is --budget cost units ([cost]: --standby-cost)",
    )
    parser.add_argument(
        "--standby-ms",
        default="running=0,paused=114,saved=982",
        help="latency each state adds to an acquisition served from the pool "
        "(default: bench/standby.py's p50s on this machine)",
    )
    args = parser.parse_args()
    flavors = read_flavors(args.flavor_map)
    requests = read_requests(
        args.trace, args.lifetimes, read_bins(args.interval_map), args.first_bin, args.bins
    )
    end = max(r.at for r in requests) // BIN_S * BIN_S + BIN_S
    demand = Counter()
    for r in requests:
        demand[r.flavor] += len(r.lifetimes)
    total = sum(demand.values())
    shaped = {f: max(1, round(args.budget * n / total)) for f, n in demand.items()}
    even = {f: max(1, args.budget // len(demand)) for f in demand}
    history = read_history(history_lines(args))
    print(
        f"{len(requests)} requests, {total} VMs, {len(demand)} flavors, "
        f"{args.bins} bins of {BIN_S:.0f} s; pool budget {args.budget}; demand history "
        f"{args.history_bins} bins ({len(history)} requests)",
        flush=True,
    )
    wanted = args.policies.split(",")
    n = len(requests)
    weights = dict(_pairs(args.standby_cost))
    wake = dict(_pairs(args.standby_ms))
    tier_cost = CostConfig(
        **weights,
        running_ms=wake["running"],
        paused_ms=wake["paused"],
        saved_ms=wake["saved"],
    )
    goal = {k.strip(): float(v) for k, v in (x.split("=", 1) for x in args.objective.split(","))}
    if set(goal) != {"served", "p99_ms"}:
        raise SystemExit(f"--objective wants served= and p99_ms=, got {args.objective!r}")
    costs: dict[str, float] = {}
    p99_ms: dict[str, float] = {}
    rows: dict[str, tuple[str, ...]] = {}
    changes = 0
    for policy in wanted:
        if policy == "warmcache":
            out = PoolRun(
                flavors, shaped, policy="static", early=0.5, mean_s=args.create_mean_s,
                seed=args.seed, budget=args.budget, cost=tier_cost,
            ).run(requests, end)  # fmt: skip
        elif policy == "demand":
            run = PoolRun(
                flavors, dict.fromkeys(demand, 0), policy="demand", early=1.0,
                mean_s=args.create_mean_s, seed=args.seed, budget=args.budget, history=history,
                cost=tier_cost,
            )  # fmt: skip
            out = run.run(requests, end)
            changes = run.target_changes
        elif policy == "objective":
            out = PoolRun(
                flavors, dict.fromkeys(demand, 0), policy="objective", early=1.0,
                mean_s=args.create_mean_s, seed=args.seed, budget=args.budget, history=history,
                cost=tier_cost, objective=goal,
            ).run(requests, end)  # fmt: skip
            print(f"  objective: VMs served per tier {dict(sorted(out.by_tier.items()))}")
        elif policy == "oracle-tiered":
            # the same clairvoyance with the budget in cost units: every VM it
            # holds while building costs what a saved one does
            out = oracle(
                requests, random.Random(args.seed), args.create_mean_s,
                int(args.budget / tier_cost.saved), end,
            )  # fmt: skip
        elif policy == "static":
            out = PoolRun(
                flavors, even, policy="static", early=0.0, mean_s=args.create_mean_s,
                seed=args.seed, budget=args.budget, cost=tier_cost,
            ).run(requests, end)  # fmt: skip
        elif policy == "oracle":
            out = oracle(requests, random.Random(args.seed), args.create_mean_s, args.budget, end)
        elif policy == "cold":
            out = cold(requests, random.Random(args.seed), args.create_mean_s, end)
        else:
            raise SystemExit(f"unknown policy {policy!r}")
        rows[policy] = summary("static pool" if policy == "static" else policy, out, n)
        costs[policy] = out.weighted_idle_vm_s / 3600
        ordered = sorted(out.times)
        p99_ms[policy] = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        print(f"  {policy}: done", flush=True)
    header = (
        "policy",
        "served at once",
        "p50 s",
        "p99 s",
        "rack-aware ok",
        "idle/used",
        "idle VM-h",
        "weighted idle VM-h",
    )
    rows = {p: (*row, f"{costs[p]:.1f}") for p, row in rows.items()}
    shown = list(rows.values())
    widths = [max(len(str(x)) for x in col) for col in zip(header, *shown, strict=True)]
    for row in (header, *shown):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))
    if "demand" in rows:
        print(f"(demand: the targets changed at {changes} of the cycles and acquisitions)")
    if "warmcache" in rows:
        cost = dict(_pairs(args.standby_cost))
        added_ms = dict(_pairs(args.standby_ms))
        idle_h = float(rows["warmcache"][6])
        print(
            "\nstandby cost model (warmcache policy; idle VM-hours weighted by what "
            "each state holds):"
        )
        for state in ("running", "paused", "saved"):
            print(
                f"  {state:8s} idle VM-hours {idle_h:8.1f}  weighted "
                f"{idle_h * cost[state]:8.1f} (x{cost[state]:g})  each served-at-once "
                f"request +{added_ms[state]:.0f} ms"
            )
    if all(p in rows for p in ("warmcache", "demand", "static", "oracle", "cold")):
        w, d, s, o, c = (rows[p] for p in ("warmcache", "demand", "static", "oracle", "cold"))
        line = (
            f"replay requests={n} warmcache_served={w[1]} static_served={s[1]} "
            f"cold_p50_s={c[2]} warmcache_p50_s={w[2]} warmcache_idle_share={w[5]} "
            f"demand_served={d[1]} oracle_served={o[1]} demand_idle_share={d[5]}"
        )
        if "objective" in rows:
            j = rows["objective"]
            line += (
                f" objective_served={j[1]} objective_p99_ms={p99_ms['objective']:.0f} "
                f"objective_cost={costs['objective']:.1f} demand_cost={costs['demand']:.1f}"
            )
        print(line)


if __name__ == "__main__":
    main()
