"""Acquisition throughput and latency, in-process or over HTTP.

    .venv/bin/python bench/acquire.py --store sqlite|etcd --clients 8 --seconds 10 \\
                                      --via http|library

Two service instances share one store (a SQLite file, or a real etcd started
on loopback or given with --etcd-url): with ``--via library`` they are
``WarmCache`` objects in this process, with ``--via http`` two
``warmcache serve`` processes reached with keep-alive HTTP clients. A pool
of ``--pool`` ready VMs over 6 racks x 5 hypervisors is seeded and kept
topped up by a refiller (standing in for build cycles), so clients never run
dry. ``--clients`` threads, spread over both instances, each acquire one VM
(best-effort) in a loop for ``--seconds``. Every VM handed out is checked
against all the others. Last line:

    acquire_per_s=<x> p50_ms=<y> p99_ms=<z> duplicates=<n> clients=<N> store=<s> via=<v>
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from warmcache.bootstrap import build, build_store
from warmcache.config import parse_config
from warmcache.errors import ClaimContention, NoCapacity
from warmcache.model import HostFacts, InstanceState, PoolInstance
from warmcache.ports import CoordinationStore, Put

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
PREFIX = "bench"
HOSTS = [(f"r{r}", f"r{r}-h{h}") for r in range(6) for h in range(5)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed_hosts(store: CoordinationStore) -> None:
    for rack, hv in HOSTS:
        facts = HostFacts(hypervisor=hv, rack=rack, az="az1", vcpus_total=64, vcpus_free=0,
                          memory_mib_total=1, memory_mib_free=0, disk_gib_total=1,
                          disk_gib_free=0, endpoint=f"unix:/nowhere/{hv}")
        store.put(f"{PREFIX}/hosts/az1/{hv}", facts.model_dump_json())


def refill(store: CoordinationStore, target: int, stop: threading.Event) -> None:
    """Keep about ``target`` ready VMs in the pool (the build cycles' job)."""
    n = 0
    while not stop.is_set():
        kvs, _ = store.range(f"{PREFIX}/pool/az1/")
        missing = target - len(kvs)
        while missing > 0 and not stop.is_set():
            batch = []
            for _ in range(min(missing, 50)):
                rack, hv = HOSTS[n % len(HOSTS)]
                n += 1
                vm = PoolInstance(name=f"vm-{n}-{uuid.uuid4().hex[:6]}", az="az1",
                                  flavor="small", rack=rack, hypervisor=hv,
                                  state=InstanceState.READY, created_at=time.time())
                batch.append(Put(f"{PREFIX}/pool/az1/{vm.name}", vm.model_dump_json()))
            store.txn([], batch)
            missing -= len(batch)
        stop.wait(0.05)


def config_for(i: int, store: dict[str, str], port: int) -> dict[str, Any]:
    return {
        "service": {"node": f"bench-{i}", "prefix": PREFIX, "run_builds": False,
                    "run_health": False, "listen_port": port, "acquire_attempts": 100,
                    "low_water_ratio": 0.0, "max_acquire_count": 10},
        "store": store,
        "catalog": {"path": str(CONFIG_DIR / "flavors.toml")},
        "events": {"kind": "log"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "etcd"], default="sqlite")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--via", choices=["http", "library"], default="library")
    parser.add_argument("--pool", type=int, default=300, help="ready VMs kept in the pool")
    parser.add_argument("--etcd-url", default="")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="warmcache-acquire-"))
    cluster: Any = None
    if args.store == "sqlite":
        store_cfg = {"kind": "sqlite", "path": str(work / "store.db")}
    else:
        url = args.etcd_url
        if not url:
            from warmcache.localetcd import EtcdCluster

            cluster = EtcdCluster(work / "etcd").start()
            url = cluster.urls[0]
        store_cfg = {"kind": "etcd", "url": url}
    store = build_store(parse_config({"store": store_cfg}, environ={}))
    seed_hosts(store)
    stop_refill = threading.Event()
    refiller = threading.Thread(target=refill, args=(store, args.pool, stop_refill))
    refiller.start()
    ports = [free_port(), free_port()]
    services: list[Any] = []
    procs: list[subprocess.Popen[bytes]] = []
    latencies: list[float] = []
    handed: list[str] = []
    misses = 0
    lock = threading.Lock()
    try:
        setup = build(parse_config(config_for(0, store_cfg, ports[0]), environ={}))
        setup.rules.put("az1", "small", {"max_instance_per_cycle": 1,
                                         "total_instances": args.pool})
        setup.close()
        deadline = time.monotonic() + 30
        while len(store.range(f"{PREFIX}/pool/az1/")[0]) < args.pool:
            if time.monotonic() > deadline:
                raise SystemExit("the pool did not fill")
            time.sleep(0.05)
        if args.via == "library":
            services = [build(parse_config(config_for(i, store_cfg, ports[i]), environ={}))
                        .start() for i in range(2)]
        else:
            for i in range(2):
                path = work / f"instance-{i}.toml"
                path.write_text(_toml(config_for(i, store_cfg, ports[i])))
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "warmcache", "serve", "--config", str(path)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for port in ports:
                _wait_http(f"http://127.0.0.1:{port}/healthz")
        stop_at = time.monotonic() + args.seconds

        def client(n: int) -> None:
            nonlocal misses
            http = httpx.Client(base_url=f"http://127.0.0.1:{ports[n % 2]}", timeout=30) \
                if args.via == "http" else None
            body = {"flavor": "small", "az": "az1", "count": 1, "mode": "best-effort",
                    "requester": f"c{n}"}
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                names: list[str] = []
                try:
                    if http is not None:
                        reply = http.post("/v1/acquire", json=body)
                        if reply.status_code == 200:
                            names = [vm["name"] for vm in reply.json()["vms"]]
                    else:
                        names = [vm.name for vm in services[n % 2].acquire(
                            "small", "az1", 1, "best-effort", requester=f"c{n}")]
                except (NoCapacity, ClaimContention):
                    pass
                took = time.perf_counter() - started
                with lock:
                    if names:
                        latencies.append(took)
                        handed.extend(names)
                    else:
                        misses += 1
            if http is not None:
                http.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
        began = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - began
    finally:
        stop_refill.set()
        refiller.join()
        for service in services:
            service.close()
        for proc in procs:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        store.close()
        if cluster is not None:
            cluster.stop()
    if not latencies:
        raise SystemExit("no acquisition succeeded")
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    duplicates = len(handed) - len(set(handed))
    print(f"acquisitions {len(latencies)} in {elapsed:.1f} s, misses {misses}, "
          f"pool {args.pool}")
    print(f"acquire_per_s={len(latencies) / elapsed:.1f} p50_ms={statistics.median(ms):.2f} "
          f"p99_ms={p99:.2f} duplicates={duplicates} clients={args.clients} "
          f"store={args.store} via={args.via}")


def _toml(config: dict[str, Any]) -> str:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, (int, float)):
                lines.append(f"{key} = {value}")
            else:
                lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


def _wait_http(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer")


if __name__ == "__main__":
    main()
