"""Replay real Azure VM demand against warmcache, a cold start, and a
static-size warm pool.

    .venv/bin/python bench/replay.py \\
        --trace ../shared/data/azure-vm-arrivals/v1.dev.txt \\
        --lifetimes ../shared/data/azure-vm-arrivals/v1.dev.c2100000.txt \\
        [--bins 48] [--create-mean-s 7] [--budget 60]

Each batch of the trace (``|`` ends one) is one request, split by flavor;
its VMs live as long as the lifetimes file says (a bin's midpoint; censored
VMs their bin's lower bound). Time is simulated (a discrete-event run, so a
4-hour window takes seconds): arrivals are spread evenly within their
300 s bin, and VM creates take a lognormal latency with mean
``--create-mean-s``.

* **warmcache**: pools on warmcache's real embedded stack (SQLite store,
  claims, modes, build-rule arithmetic, placement over simulated
  hypervisors). Each flavor's target is its share of ``--budget`` by the
  window's demand; build cycles every 60 s plus an early cycle when an
  acquisition leaves a pool below half its target. A request tries
  rack-aware (best-effort for one VM), then best-effort, else goes cold.
* **static**: the same stack and budget split evenly over the flavors seen,
  refilled only by the 60 s cycles (a fixed-size warm pool).
* **cold**: no pool: every VM is created on request.

Reported per policy: requests fully served from the pool at once,
time-to-VMs p50/p99 per request, rack-aware success among multi-VM
requests, and idle pool VM-hours as a share of used VM-hours. Any trace of
this format is accepted. Last line:

    replay requests=<n> warmcache_served=<x> static_served=<y> cold_p50_s=<c>
        warmcache_p50_s=<w> warmcache_idle_share=<i>       (one line)
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import statistics
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from warmcache.adapters.file_catalog import FileFlavorCatalog
from warmcache.adapters.log_alerts import LogAlerts
from warmcache.adapters.sqlite_events import LogEvents
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.builders.deficits import below_low_water, state_counts, to_build
from warmcache.builders.plan import plan_az
from warmcache.clock import ManualClock
from warmcache.config import ServiceConfig
from warmcache.errors import NoCapacity
from warmcache.layout import Keys, PoolRecords
from warmcache.model import InstanceState, Mode, PoolInstance
from warmcache.placement.pipeline import default_pipeline
from warmcache.ports import VmSpec
from warmcache.service import WarmCache
from warmcache.sim import sim_fleet

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "azure-vm-arrivals"
BIN_S = 300.0

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
        batches: list[list[tuple[str, str]]] = [[]]
        for tok, life in zip(tokens.split(","), life_tokens.split(","), strict=False):
            if tok == "|":
                batches.append([])
            elif tok:
                batches[-1].append((tok, life))
        batches = [b for b in batches if b]
        for i, batch in enumerate(batches):
            at = float(t) - start + (i + 1) * BIN_S / (len(batches) + 1)
            by_flavor: dict[str, list[float]] = defaultdict(list)
            for flavor, life in batch:
                by_flavor[flavor].append(lifetime(life, bins))
            out += [Request(at, f, tuple(ls)) for f, ls in sorted(by_flavor.items())]
    return out


@dataclass
class Outcome:
    served: int = 0
    times: list[float] = field(default_factory=list)
    multi: int = 0
    rack_aware_ok: int = 0
    idle_vm_s: float = 0.0
    used_vm_s: float = 0.0


def cold(requests: list[Request], draw: random.Random, mean_s: float) -> Outcome:
    mu = math.log(mean_s) - 0.125
    out = Outcome()
    for r in requests:
        out.times.append(max(draw.lognormvariate(mu, 0.5) for _ in r.lifetimes))
        out.used_vm_s += sum(r.lifetimes)
    return out


def pooled(
    requests: list[Request],
    flavors: dict[str, tuple[int, float]],
    targets: dict[str, int],
    early: bool,
    mean_s: float,
    seed: int,
) -> Outcome:
    """Requests against pools on warmcache's embedded stack, in simulated time."""
    work = Path(tempfile.mkdtemp(prefix="warmcache-replay-"))
    catalog = work / "flavors.toml"
    catalog.write_text(
        "".join(
            f"[flavors.{f}]\nvcpus = {v}\nmemory_mib = {int(g * 1024)}\ndisk_gib = 10\n"
            for f, (v, g) in flavors.items()
        )
    )
    clock = ManualClock(0.0)
    store = SqliteStore(work / "store.db", clock=clock)
    agents = sim_fleet(store, "rp", 1, 6, 20, vcpus=1024, memory_mib=8 << 20, disk_gib=100_000)
    service = WarmCache(
        config=ServiceConfig(
            node="replay",
            prefix="rp",
            low_water_ratio=0.0,
            leader_ttl_s=86_400,
            max_acquire_count=100_000,
        ),
        store=store,
        catalog=FileFlavorCatalog(catalog),
        events=LogEvents(),
        alerts=LogAlerts(),
        agent_for=agents.__getitem__,
        clock=clock,
        rng=random.Random(seed),
    )  # --seed makes the whole run repeatable
    for f, n in targets.items():
        service.rules.put(
            "az1",
            f,
            {"max_instance_per_cycle": max(n, 1), "total_instances": n, "min_fault_domain": 1},
        )
    rules = {f: r for (_, f), r in service.rules.all().items()}
    flavor_models = {f.name: f for f in service.catalog.list()}
    mu = math.log(mean_s) - 0.125
    draw = random.Random(seed)
    seq = itertools.count()
    events: list[tuple[float, int, str, object]] = []
    end = max(r.at for r in requests) + BIN_S
    for t in range(0, int(end), 60):
        heapq.heappush(events, (float(t), next(seq), "cycle", None))
    for r in requests:
        heapq.heappush(events, (r.at, next(seq), "request", r))
    out = Outcome()
    last_t = 0.0
    ready_now = 0  # ready pool VMs (kept by the events below, not re-read)

    def records() -> list[PoolInstance]:
        return [item.record for item in PoolRecords(store, KEYS).read("az1")[0]]

    def cycle(now: float, only: str | None = None) -> None:
        recs = records()
        service.hosts.catch_up()
        for f in [only] if only else sorted(rules):
            n = to_build(rules[f], state_counts(recs, f))
            if n == 0:
                continue
            plan = plan_az(
                "az1",
                {f: rules[f]},
                flavor_models,
                service.hosts.hosts(),
                recs,
                default_pipeline(draw),
                lambda _a, fl: f"{fl}-{next(seq)}",
            )
            for vm in plan.builds:
                agents[vm.host.endpoint].create(VmSpec(vm.name, vm.flavor))
                rec = PoolInstance(
                    name=vm.name,
                    az="az1",
                    flavor=f,
                    hypervisor=vm.host.hypervisor,
                    rack=vm.host.rack,
                    state=InstanceState.BUILDING,
                    created_at=now,
                )
                store.put(KEYS.pool("az1", vm.name), rec.model_dump_json())
                heapq.heappush(
                    events, (now + draw.lognormvariate(mu, 0.5), next(seq), "ready", rec)
                )
            service.hosts.catch_up()

    while events:
        now, _, kind, item = heapq.heappop(events)
        # idle pool VM-seconds: ready VMs waiting, integrated over time
        out.idle_vm_s += ready_now * (now - last_t)
        last_t = now
        clock.advance(now - clock.now())  # simulated time moves only here
        if kind == "cycle":
            cycle(now)
        elif kind == "ready":
            rec = item  # type: ignore[assignment]
            assert isinstance(rec, PoolInstance)
            store.put(
                KEYS.pool("az1", rec.name),
                rec.with_state(InstanceState.READY, ready_at=now).model_dump_json(),
            )
            ready_now += 1
        elif kind == "end":
            vm = item
            assert isinstance(vm, PoolInstance)
            agents[f"sim:{vm.hypervisor}"].delete(vm.name)
        else:
            r = item
            assert isinstance(r, Request)
            count = len(r.lifetimes)
            out.used_vm_s += sum(r.lifetimes)
            got: list[PoolInstance] = []
            if r.flavor in rules:
                if count > 1:
                    out.multi += 1
                for mode in (
                    [Mode.RACK_AWARE, Mode.BEST_EFFORT] if count > 1 else [Mode.BEST_EFFORT]
                ):
                    try:
                        got = service.acquire(r.flavor, "az1", count, mode, requester="replay")
                    except NoCapacity:
                        continue
                    if count > 1 and mode is Mode.RACK_AWARE:
                        out.rack_aware_ok += 1
                    break
            if got:
                ready_now -= len(got)
                out.served += 1
                out.times.append(0.0)
                for vm, life in zip(got, r.lifetimes, strict=True):
                    heapq.heappush(events, (now + life, next(seq), "end", vm))
            else:
                out.times.append(max(draw.lognormvariate(mu, 0.5) for _ in r.lifetimes))
            if (
                early
                and r.flavor in rules
                and below_low_water(
                    rules[r.flavor], state_counts(records(), r.flavor)[InstanceState.READY], 0.5
                )
            ):
                cycle(now, r.flavor)
    service.close()
    store.close()
    return out


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
        f"{o.idle_vm_s / 3600:.3f}",
    )


def _pairs(text: str) -> list[tuple[str, float]]:
    """``running=1,paused=0.5`` -> pairs (all three states required)."""
    pairs = [(k.strip(), float(v)) for k, v in (item.split("=", 1) for item in text.split(","))]
    if {k for k, _ in pairs} != {"running", "paused", "saved"}:
        raise SystemExit(f"want running=, paused= and saved=, got {text!r}")
    return pairs


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
        "--standby-cost",
        default="running=1,paused=0.5,saved=0.02",
        help="what an idle VM costs in each standby state, running = 1 (default: a VM's "
        "cost half memory, half CPU; paused keeps the memory; saved only a disk image)",
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
    demand = Counter()
    for r in requests:
        demand[r.flavor] += len(r.lifetimes)
    total = sum(demand.values())
    shaped = {f: max(1, round(args.budget * n / total)) for f, n in demand.items()}
    even = {f: max(1, args.budget // len(demand)) for f in demand}
    print(
        f"{len(requests)} requests, {total} VMs, {len(demand)} flavors, "
        f"{args.bins} bins of {BIN_S:.0f} s; pool budget {args.budget}",
        flush=True,
    )
    rows = [
        summary(
            "warmcache",
            pooled(requests, flavors, shaped, True, args.create_mean_s, args.seed),
            len(requests),
        ),
        summary(
            "static pool",
            pooled(requests, flavors, even, False, args.create_mean_s, args.seed),
            len(requests),
        ),
        summary(
            "cold", cold(requests, random.Random(args.seed), args.create_mean_s), len(requests)
        ),
    ]
    header = ("policy", "served at once", "p50 s", "p99 s", "rack-aware ok", "idle/used")
    shown = [row[:6] for row in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *shown, strict=True)]
    for row in (header, *shown):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))
    cost = dict(_pairs(args.standby_cost))
    added_ms = dict(_pairs(args.standby_ms))
    idle_h = float(rows[0][6]) if len(rows[0]) > 6 else 0.0
    print(
        "\nstandby cost model (warmcache policy; idle VM-hours weighted by what each state holds):"
    )
    for state in ("running", "paused", "saved"):
        print(
            f"  {state:8s} idle VM-hours {idle_h:8.1f}  weighted {idle_h * cost[state]:8.1f} "
            f"(x{cost[state]:g})  each served-at-once request +{added_ms[state]:.0f} ms"
        )
    rows = [row[:6] for row in rows]
    w, s, c = rows
    print(
        f"replay requests={len(requests)} warmcache_served={w[1]} static_served={s[1]} "
        f"cold_p50_s={c[2]} warmcache_p50_s={w[2]} warmcache_idle_share={w[5]}"
    )


if __name__ == "__main__":
    main()
