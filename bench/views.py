"""What operators read, at fleet scale: does a view's cost per call grow
with the fleet?

    .venv/bin/python bench/views.py [--sizes 10000,40000] [--calls 200]

For each size, simulated hypervisors (``warmcache.testing.sim``, 3 AZs, 40 hosts
a rack) publish their facts into a SQLite store, a service loads its views
and one cycle builds ``--vms`` VMs (a few hand-outs too, for the
dashboard's holders). Then, through the Flask app (no socket, so this is
warmcache's own cost), the median of ``--calls`` calls each:

* ``GET /v1/hosts?limit=100`` (one page, from the middle of the fleet),
  ``GET /v1/hosts/<hypervisor>``, ``GET /v1/capacity?az=az1`` (one AZ's
  racks), ``GET /v1/capacity`` (every rack), the dashboard's ``/live``
  and ``/metrics`` (both draw every rack: they grow with racks, not hosts);
* ``fleet_update_us``: one host's facts changing, applied to the host
  view and every rollup (what each heartbeat change costs an instance);
* the store's own ceiling beside them: one point read (``store_get_ms``).

Last line (per size): ``views hypervisors=<H> racks=<R> hosts_page_ms=<x>
host_ms=<x> capacity_az_ms=<x> capacity_ms=<x> live_ms=<x> metrics_ms=<x>
fleet_update_us=<x> store_get_ms=<x>``.
"""

from __future__ import annotations

import argparse
import atexit
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from warmcache.adapters.file_catalog import FileFlavorCatalog
from warmcache.adapters.log_alerts import LogAlerts
from warmcache.adapters.sqlite_events import LogEvents
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import SystemClock
from warmcache.config import ServiceConfig
from warmcache.ports import Change
from warmcache.service import WarmCache
from warmcache.testing.sim import sim_fleet
from warmcache.web import create_app

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
PER_RACK = 40
AZS = 3


def median_ms(call: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def run(hypervisors: int, vms: int, calls: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="warmcache-views-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    store = SqliteStore(work / "store.db")
    racks_per_az = max(1, hypervisors // (PER_RACK * AZS))
    agents = sim_fleet(store, "views", AZS, racks_per_az, PER_RACK)
    service = WarmCache(
        config=ServiceConfig(node="views", prefix="views", build_concurrency=32),
        store=store,
        catalog=FileFlavorCatalog(CONFIG_DIR / "flavors.toml"),
        events=LogEvents(),
        alerts=LogAlerts(),
        agent_for=agents.__getitem__,
        clock=SystemClock(),
        rng=random.Random(1),
    )
    for a in range(1, AZS + 1):
        service.rules.put(
            f"az{a}",
            "small",
            {"max_instance_per_cycle": vms // AZS, "total_instances": vms // AZS},
        )
    service.run_cycle()
    for requester in ("es-provisioner", "kafka-team", "ci"):
        service.acquire("small", "az1", 5, "best-effort", requester=requester)
    service.history.sample()
    service.history.sample()
    client = create_app(service).test_client()
    middle = sorted(agents.values(), key=lambda a: a.facts().hypervisor)[len(agents) // 2]
    mid = middle.facts()

    def get(path: str) -> Callable[[], object]:
        def call() -> object:
            reply = client.get(path)
            assert reply.status_code == 200, (path, reply.status_code)
            return reply

        return call

    rows = {
        "hosts_page_ms": get(f"/v1/hosts?limit=100&after={mid.az}/{mid.hypervisor}"),
        "host_ms": get(f"/v1/hosts/{mid.hypervisor}"),
        "capacity_az_ms": get("/v1/capacity?az=az1"),
        "capacity_ms": get("/v1/capacity"),
        "live_ms": get("/live"),
        "metrics_ms": get("/metrics"),
    }
    figures = {name: median_ms(call, calls) for name, call in rows.items()}
    key = service.keys.host(mid.az, mid.hypervisor)
    figures["store_get_ms"] = median_ms(lambda: store.get(key), calls)

    # One host's facts changing, as the change feed applies it.
    facts = [mid.model_copy(update={"vcpus_free": mid.vcpus_free - i % 2}) for i in range(calls)]
    changes = [Change(10**9 + i, key, "put", f.model_dump_json()) for i, f in enumerate(facts)]
    started = time.perf_counter()
    for change in changes:
        service.hosts._apply([change])
    update_us = (time.perf_counter() - started) / len(changes) * 1e6
    racks = len(service.fleet.racks())
    print(
        f"views hypervisors={len(agents)} racks={racks} "
        + " ".join(f"{k}={v:.2f}" for k, v in figures.items() if k != "store_get_ms")
        + f" fleet_update_us={update_us:.1f} store_get_ms={figures['store_get_ms']:.3f}",
        flush=True,
    )
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,40000")
    parser.add_argument("--vms", type=int, default=3000)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        run(size, args.vms, args.calls)


if __name__ == "__main__":
    main()
