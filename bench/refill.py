"""Time to refill a drained pool of N VMs.

    .venv/bin/python bench/refill.py [--vms 24] [--create-mean-s 7] [--concurrency 8] [--real-vms]

Simulated: the pool's rule asks for N VMs on 3 racks x 4 simulated
hypervisors (in process, behind the host-agent port) whose creates take a
latency drawn with mean ``--create-mean-s`` (PhonePe measured ~7 s per VM).
The pool is filled, drained (every VM acquired), and the clock runs from the
drain until build cycles (back to back, as the low-water trigger makes them)
have it full again. ``--real-vms`` does the same with real QEMU guests under
libvirtd (root), through ``warmcache quickstart --real-vms``'s stack.

Last line: ``refill vms=<N> create_mean_s=<m> concurrency=<c> simulated_s=<x>
[real_s=<y>]``.
"""

from __future__ import annotations

import argparse
import atexit
import random
import shutil
import tempfile
import time
from pathlib import Path

from warmcache.adapters.file_catalog import FileFlavorCatalog
from warmcache.adapters.log_alerts import LogAlerts
from warmcache.adapters.sqlite_events import LogEvents
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import SystemClock
from warmcache.config import ServiceConfig
from warmcache.layout import PoolRecords
from warmcache.model import InstanceState, Mode
from warmcache.service import WarmCache
from warmcache.testing.sim import lognormal_latency, sim_fleet

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def full(service: WarmCache, n: int) -> bool:
    states = [item.record.state for item in PoolRecords(service.store, service.keys).read("az1")[0]]
    return states.count(InstanceState.READY) >= n


def fill(service: WarmCache, n: int, deadline_s: float) -> float:
    started = time.monotonic()
    while not full(service, n):
        if time.monotonic() - started > deadline_s:
            raise SystemExit(f"pool not full after {deadline_s:.0f} s")
        service.run_cycle()
    return time.monotonic() - started


def simulated(n: int, mean_s: float, concurrency: int) -> float:
    work = Path(tempfile.mkdtemp(prefix="warmcache-refill-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    store = SqliteStore(work / "store.db")
    agents = sim_fleet(store, "bench", 1, 3, 4, latency=lognormal_latency(mean_s, random.Random(1)))
    service = WarmCache(
        config=ServiceConfig(
            node="bench", prefix="bench", build_concurrency=concurrency, leader_ttl_s=30
        ),
        store=store,
        catalog=FileFlavorCatalog(CONFIG_DIR / "flavors.toml"),
        events=LogEvents(),
        alerts=LogAlerts(),
        agent_for=agents.__getitem__,
        clock=SystemClock(),
    )
    try:
        service.rules.put(
            "az1",
            "small",
            {"max_instance_per_cycle": n, "total_instances": n, "min_fault_domain": 3},
        )
        fill(service, n, 600)
        service.acquire("small", "az1", n, Mode.BEST_EFFORT, requester="drain")
        return fill(service, n, 3600)
    finally:
        service.close()
        store.close()


def real(n: int) -> float:
    from warmcache.quickstart import QuickstartStack, Topology

    rules = (
        f"[rules.az1.tiny]\ntotal_instances = {n}\nmax_instance_per_cycle = {n}\n"
        "min_fault_domain = 1\n"
    )
    from warmcache.testing.ports import free_port

    work = Path(tempfile.mkdtemp(prefix="warmcache-refill-real-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    stack = QuickstartStack(
        work / "qs",
        port=free_port(),
        instances=1,
        real_vms=True,
        rules_toml=rules,
        cycle_interval_s=1,
        topology=Topology(azs=("az1",), racks_per_az=1, hypervisors_per_rack=1),
    )
    import httpx

    with stack:
        stack.wait_full(timeout_s=900)
        reply = httpx.post(
            f"{stack.urls[0]}/v1/acquire",
            timeout=60,
            json={"flavor": "tiny", "az": "az1", "count": n, "mode": "best-effort"},
        )
        reply.raise_for_status()
        started = time.monotonic()
        stack.wait_full(timeout_s=900)
        return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=24)
    parser.add_argument("--create-mean-s", type=float, default=7.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--real-vms", action="store_true")
    args = parser.parse_args()
    sim_s = simulated(args.vms, args.create_mean_s, args.concurrency)
    print(
        f"simulated: {args.vms} VMs refilled in {sim_s:.2f} s "
        f"(create mean {args.create_mean_s} s, {args.concurrency} at a time per AZ)"
    )
    line = (
        f"refill vms={args.vms} create_mean_s={args.create_mean_s} "
        f"concurrency={args.concurrency} simulated_s={sim_s:.2f}"
    )
    if args.real_vms:
        real_s = real(args.vms)
        print(f"real guests: {args.vms} refilled in {real_s:.2f} s")
        line += f" real_s={real_s:.2f}"
    print(line)


if __name__ == "__main__":
    main()
