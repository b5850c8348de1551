"""Acquisition throughput and latency at fleet scale, in-process or over HTTP.

    .venv/bin/python bench/acquire.py --store sqlite|etcd --clients 8 --seconds 10 \\
        --via http|library [--hypervisors 30 --pools 1 --pool-size 300] \\
        [--no-batch] [--server waitress|gunicorn|granian|werkzeug]

Two service instances (``--instances``) share one store (a SQLite file, or a real etcd started
on loopback or given with --etcd-url): with ``--via library`` they are
``WarmCache`` objects in this process, started (views followed from the
change feed, shares of the pools dealt between them); with ``--via http``
two ``warmcache serve`` processes (``--server``) reached over keep-alive
HTTP connections. The fleet: ``--hypervisors`` heartbeating hosts (20 per
rack, at least 6 racks, over ceil(pools / 3) AZs) and ``--pool-size`` ready
VMs split evenly over ``--pools`` pools (AZ x flavor), kept topped up by a
refiller writing to the same store (standing in for build cycles), so
clients never run dry. ``--clients`` threads, spread over both instances,
each acquire one VM (best-effort) of a random pool in a loop for
``--seconds`` (after a miss, a client waits 1 ms: it would not ask again
at once); every VM handed out is checked against all the others.

In one run it measures, one after the other on the same store and fleet:
the store's own ceiling (compare-and-swap transactions per second from one
thread, through the client warmcache uses), the baseline with one claim
per transaction (``batch=off``) and group-committed claims (``batch=on``),
and prints the ratio. ``--no-batch`` runs the baseline only. Last line (the
batched run, or the baseline with ``--no-batch``):

    acquire_per_s=<x> p50_ms=<y> p99_ms=<z> duplicates=<n> clients=<N> store=<s> via=<v>
        hypervisors=<H> pooled=<V> pools=<P> batch=<on|off> server_cpu_ms=<c>

CPU per acquisition: each run reads the CPU time (user + system, from
/proc) of every part over its measured window and divides it by the
acquisitions served: the serving processes (``server_cpu_ms``; with
``--via library`` the instances run in the clients' threads, so it is this
whole process), the clients (``--via http``), the store (an etcd this
script started; SQLite runs inside its callers) and the refiller. With
etcd it also prints the gateway's ceiling from one thread through each
client: etcd3gw (requests), a urllib3 pool (what warmcache's unary calls
use) and bare http.client, in calls per second and CPU per call.

``--release`` (``--via library``) measures giving VMs back too: after the
acquire-only run, the same clients loop acquire + release (each VM given
back at once; the instances' release workers finish them, their agent
calls answered by a stand-in since the fleet's hosts have no agent, as the
refiller stands in for builds), and prints the ratio of the loop's rate to
the acquire-only rate. Then, with real agent processes on libvirt's
test:///default and one instance building through them, it times release
-> capacity free: from the release's return until the agent no longer has
the VM; and it counts the store's keys before and after ``--loops``
(20,000) acquire + release loops. The last line gains ``loop_per_s=<x>
loop_ratio=<r> keys_before=<n> keys_after=<m> free_p50_ms=<y>
free_p99_ms=<z>``.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import http.client
import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from warmcache.bootstrap import build, build_store
from warmcache.config import parse_config
from warmcache.errors import (
    ClaimContention,
    NoCapacity,
    UnknownAZ,
    UnknownPool,
    WarmCacheError,
)
from warmcache.layout import Keys
from warmcache.model import HostFacts, InstanceState, PoolInstance
from warmcache.ports import Compare, CoordinationStore, Put
from warmcache.testing.ports import free_port

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
PREFIX = "bench"
KEYS = Keys(PREFIX)
FLAVORS = ("small", "medium", "large")
PER_RACK = 20
CHUNK = 100  # puts per seeding transaction (within etcd's --max-txn-ops)
REFILL_CHUNK = 50  # puts per refill transaction


class Fleet:
    """Hosts and pools of the run, and the refiller that keeps pools full."""

    def __init__(
        self, store: CoordinationStore, hypervisors: int, pools: int, pool_size: int
    ) -> None:
        self.store = store
        n_azs = math.ceil(pools / len(FLAVORS))
        self.pools = [(f"az{1 + i % n_azs}", FLAVORS[i // n_azs]) for i in range(pools)]
        per_az = max(1, hypervisors // n_azs)
        racks = max(6, math.ceil(per_az / PER_RACK))
        self.hosts: dict[str, list[tuple[str, str]]] = {}
        for a in range(n_azs):
            az = f"az{1 + a}"
            self.hosts[az] = [(f"{az}-r{(i % racks):04}", f"{az}-h{i:05}") for i in range(per_az)]
        self.target = {pool: pool_size // pools for pool in self.pools}
        self.hypervisor_count = hypervisors
        self._n = 0

    @property
    def hypervisors(self) -> int:
        return sum(len(h) for h in self.hosts.values())

    @property
    def pooled(self) -> int:
        return sum(self.target.values())

    def seed(self) -> None:
        puts = []
        for az, hosts in self.hosts.items():
            for rack, hv in hosts:
                facts = HostFacts(
                    hypervisor=hv,
                    rack=rack,
                    az=az,
                    vcpus_total=64,
                    vcpus_free=0,
                    memory_mib_total=1,
                    memory_mib_free=0,
                    disk_gib_total=1,
                    disk_gib_free=0,
                    endpoint=f"unix:/nowhere/{hv}",
                )
                puts.append(Put(f"{KEYS.hosts_dir()}{az}/{hv}", facts.model_dump_json()))
        for pool, n in self.target.items():
            puts += self._vms(pool, n)
        for i in range(0, len(puts), CHUNK):
            self.store.txn([], puts[i : i + CHUNK])

    def _vms(self, pool: tuple[str, str], n: int) -> list[Put]:
        az, flavor = pool
        hosts = self.hosts[az]
        out = []
        for _ in range(n):
            self._n += 1
            rack, hv = hosts[self._n * 7919 % len(hosts)]
            vm = PoolInstance(
                name=f"vm-{self._n}-{uuid.uuid4().hex[:6]}",
                az=az,
                flavor=flavor,
                rack=rack,
                hypervisor=hv,
                state=InstanceState.READY,
                created_at=time.time(),
            )
            out.append(Put(KEYS.pool(az, vm.name), vm.model_dump_json()))
        return out

    def start(self, store_cfg: dict[str, str], revision: int) -> None:
        """The refiller, in a process of its own (so that it never waits
        for the GIL of the clients and instances it stands behind)."""
        ctx = multiprocessing.get_context("spawn")
        self._proc = ctx.Process(
            target=_refiller,
            name="refill",
            daemon=True,
            args=(store_cfg, self.hypervisor_count, len(self.pools), self.pooled, revision),
        )
        self._proc.start()

    @property
    def pid(self) -> int | None:
        proc = getattr(self, "_proc", None)
        return proc.pid if proc is not None else None

    def stop(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.is_alive():
            proc.terminate()
            proc.join(timeout=10)


def _refiller(
    store_cfg: dict[str, str], hypervisors: int, pools: int, pool_size: int, revision: int
) -> None:
    """Follow ``acquired/`` on the store's change stream and put back, every
    10 ms, as many ready VMs in each pool as were handed out (a pool of 300
    turns over in well under a second at the rates measured here)."""
    store = build_store(parse_config({"store": store_cfg}, environ={}))
    fleet = Fleet(store, hypervisors, pools, pool_size)
    stream = store.watch(KEYS.acquired_dir(), revision)
    while True:
        due: Counter[tuple[str, str]] = Counter()
        for change in stream.get(0.01):
            if change.kind == "put" and change.value:
                flavor = json.loads(change.value)["flavor"]
                due[(change.key.split("/")[-2], flavor)] += 1
        puts = [p for pool, n in due.items() for p in fleet._vms(pool, n)]
        for i in range(0, len(puts), REFILL_CHUNK):
            store.txn([], puts[i : i + REFILL_CHUNK])


def cpu_s(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far, in
    seconds, from /proc/<pid>/stat (utime and stime, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_or_gone(pid: int) -> float:
    try:
        return cpu_s(pid)
    except OSError:  # a worker that exited since it was listed
        return 0.0


def with_children(pid: int) -> list[int]:
    """``pid`` and every process below it (granian's and gunicorn's workers
    are children of ``warmcache serve``), from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(child) for child in task.read_text().split()]
    return found


def cpu_by_part(servers: list[int], store: list[int], refiller: int | None) -> dict[str, float]:
    """CPU seconds used so far by each part of a run: the serving processes
    (``--via http``), this process (the clients, and with ``--via library``
    the instances they call into), the store's processes (etcd; SQLite runs
    inside its callers) and the refiller."""
    return {
        "server": sum(_cpu_or_gone(pid) for top in servers for pid in with_children(top)),
        "bench": cpu_s(os.getpid()),
        "store": sum(cpu_s(pid) for pid in store),
        "refiller": cpu_s(refiller) if refiller else 0.0,
    }


def store_ceiling(store: CoordinationStore, seconds: float = 2.0) -> float:
    """Compare-and-swap transactions per second from one thread."""
    key = f"{PREFIX}/ceiling"
    revision = store.put(key, "0")
    done, stop_at = 0, time.monotonic() + seconds
    while time.monotonic() < stop_at:
        result = store.txn([Compare.mod_revision(key, revision)], [Put(key, str(done))])
        revision = result.revision
        done += result.succeeded
    return done / seconds


def gateway_clients(url: str, calls: int = 500) -> list[tuple[str, float, float]]:
    """The same one-key transaction sent ``calls`` times from one thread
    through each way of reaching etcd's gateway: etcd3gw's client (on
    requests, what warmcache used for every call), a urllib3 connection pool
    (what it uses now for unary calls) and bare http.client (the floor of a
    Python client). -> (name, calls/s, CPU ms per call)."""
    import etcd3gw
    import urllib3

    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 2379
    key = base64.b64encode(f"{PREFIX}/gateway".encode()).decode()
    body = {
        "success": [{"request_put": {"key": key, "value": base64.b64encode(b"x" * 200).decode()}}]
    }
    gw = etcd3gw.Etcd3Client(host=host, port=port, timeout=5, api_path="/v3/")
    gw.session.trust_env = False  # as warmcache's sessions (environment read once)
    pool = urllib3.HTTPConnectionPool(host, port, maxsize=4)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    headers = {"Content-Type": "application/json"}

    def via_pool() -> Any:
        return json.loads(
            pool.urlopen("POST", "/v3/kv/txn", body=json.dumps(body).encode(), headers=headers).data
        )

    def via_http_client() -> Any:
        conn.request("POST", "/v3/kv/txn", json.dumps(body), headers)
        return json.loads(conn.getresponse().read())

    def via_etcd3gw() -> Any:
        return gw.post(gw.get_url("kv/txn"), json=body)

    found = []
    ways: list[tuple[str, Callable[[], Any]]] = [
        ("etcd3gw (requests)", via_etcd3gw),
        ("urllib3 pool", via_pool),
        ("http.client", via_http_client),
    ]
    for name, call in ways:
        for _ in range(50):
            call()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            call()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        found.append((name, calls / wall, cpu * 1000 / calls))
    conn.close()
    pool.close()
    return found


def config_for(
    i: int, store: dict[str, str], port: int, batch: bool, clients: int, threads: int = 0
) -> dict[str, Any]:
    return {
        "service": {
            "node": f"bench-{i}",
            "prefix": PREFIX,
            "run_builds": False,
            "run_health": False,
            "listen_port": port,
            "acquire_attempts": 100,
            "low_water_ratio": 0.0,
            "max_acquire_count": 10,
            "batch_claims": batch,
            "shares_refresh_s": 0.5,
            "http_threads": threads or max(8, clients // 2),
        },
        "store": store,
        "catalog": {"path": str(CONFIG_DIR / "flavors.toml")},
        "events": {"kind": "log"},
    }


class Run:
    def __init__(
        self,
        args: argparse.Namespace,
        store_cfg: dict[str, str],
        fleet: Fleet,
        work: Path,
        store_pids: list[int] | None = None,
    ) -> None:
        self.args, self.store_cfg, self.fleet, self.work = args, store_cfg, fleet, work
        self.store_pids = store_pids or []

    def measure(
        self,
        batch: bool,
        release: bool = False,
        loops: int | None = None,
        via: str | None = None,
        empty: bool = False,
    ) -> dict[str, Any]:
        """``loops``: stop after that many acquisitions (within 10 minutes)
        instead of after ``--seconds``. ``via``: other than ``--via`` (the
        in-process ceiling of an HTTP run). ``empty``: the clients ask the
        servers' ``GET /healthz`` instead of acquiring (the ceiling of the web
        stack: server, Flask and its per-request hooks, no claim)."""
        args = self.args
        via = via or args.via
        ports = [free_port() for _ in range(args.instances)]
        services: list[Any] = []
        procs: list[subprocess.Popen[bytes]] = []
        latencies: list[float] = []
        handed: list[str] = []
        misses = Counter[str]()
        lock = threading.Lock()
        try:
            if via == "library":
                services = [
                    build(
                        parse_config(
                            config_for(i, self.store_cfg, ports[i], batch, args.clients), environ={}
                        )
                    ).start()
                    for i in range(args.instances)
                ]
                if release:  # the fleet's hosts have no agent: a stand-in deletes
                    for service in services:
                        service.lifecycle.worker._agent_for = lambda _endpoint: _GoneAgent()
                # Each sees the other and has re-dealt the pools' shares
                # (O(pooled VMs), seconds for 30,000): not in the measured window.
                deadline = time.monotonic() + 120
                while any(s.acquirer.index.dealt_instances < args.instances for s in services):
                    if time.monotonic() > deadline:
                        raise SystemExit("the instances did not see each other")
                    time.sleep(0.05)
            else:
                for i in range(args.instances):
                    path = self.work / f"instance-{i}-{batch}.toml"
                    path.write_text(
                        _toml(
                            config_for(
                                i, self.store_cfg, ports[i], batch, args.clients, args.http_threads
                            )
                        )
                    )
                    procs.append(
                        subprocess.Popen(
                            [
                                sys.executable,
                                "-m",
                                "warmcache",
                                "serve",
                                "--config",
                                str(path),
                                "--server",
                                args.server,
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            start_new_session=True,
                        )
                    )
                for port in ports:
                    _wait_http(f"http://127.0.0.1:{port}/healthz")
                    _wait_dealt(port, args.instances)
            warm_until = time.monotonic() + args.warmup
            stop_at = warm_until + (600.0 if loops else args.seconds)

            def client(n: int) -> None:
                rng = random.Random(n)
                conn = (
                    http.client.HTTPConnection("127.0.0.1", ports[n % len(ports)], timeout=30)
                    if via == "http"
                    else None
                )
                while (now := time.monotonic()) < stop_at and (
                    loops is None or len(handed) < loops
                ):
                    pool = rng.choice(self.fleet.pools)
                    started = time.perf_counter()
                    names: list[str] = []
                    outcome = "ok"
                    try:
                        if conn is not None and empty:
                            names, outcome = _healthz(conn)
                        elif conn is not None:
                            names, outcome = _post(conn, pool, n, args.named)
                        else:
                            names = [
                                vm.name
                                for vm in services[n % len(services)].acquire(
                                    pool[1],
                                    pool[0],
                                    1,
                                    "best-effort",
                                    requester=f"c{n}",
                                    claim_id=uuid.uuid4().hex if args.named else None,
                                )
                            ]
                    except WarmCacheError as exc:  # a typed refusal (over HTTP: its 4xx/503)
                        outcome = exc.code
                    if release and names:
                        for name in names:
                            services[n % len(services)].release(name, requester=f"c{n}")
                    took = time.perf_counter() - started
                    if not names:
                        time.sleep(0.001)  # told no: a caller would not ask again at once
                    with lock:
                        if not empty:
                            handed.extend(names)
                        if now < warm_until:
                            continue
                        if names:
                            latencies.append(took)
                        else:
                            misses[outcome] += 1
                if conn is not None:
                    conn.close()

            def transactions() -> tuple[int, int]:
                if services:
                    return (
                        sum(s.acquirer.claimer.batches for s in services),
                        sum(s.acquirer.claimer.conflicts for s in services),
                    )
                scraped = [_scraped_claims(port) for port in ports]
                return sum(t for t, _ in scraped), sum(c for _, c in scraped)

            at_warm = [(0, 0)]
            cpu_at: dict[str, dict[str, float]] = {}

            def cpu_now() -> dict[str, float]:
                return cpu_by_part([p.pid for p in procs], self.store_pids, self.fleet.pid)

            def at_warm_up() -> None:
                cpu_at["warm"] = cpu_now()
                at_warm[0] = transactions()

            marker = threading.Timer(max(0.0, warm_until - time.monotonic()), at_warm_up)
            marker.start()
            threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            marker.join()
            cpu_at["end"] = cpu_now()
            end = transactions()
            if release:  # the last releases finish before the instances stop
                settled = time.monotonic() + 60
                while services[0].store.range(KEYS.releasing_dir())[0]:
                    if time.monotonic() > settled:
                        raise SystemExit("releases did not finish within 60 s")
                    for service in services:
                        service.lifecycle.worker.run_once()
            batches, conflicts = end[0] - at_warm[0][0], end[1] - at_warm[0][1]
        finally:
            for service in services:
                service.close()
            for proc in procs:
                os.kill(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
        if not latencies:
            raise SystemExit(f"no acquisition succeeded (misses: {dict(misses)})")
        ms = sorted(x * 1000 for x in latencies)
        cpu_ms = {  # CPU per acquisition over the measured window, by part
            part: (cpu_at["end"][part] - cpu_at["warm"][part]) * 1000 / len(latencies)
            for part in cpu_at["end"]
        }
        if via == "library":  # the instances run in the clients' threads
            cpu_ms["server"] = cpu_ms["bench"]
        return {
            "cpu_ms": cpu_ms,
            "acquire_per_s": len(latencies) / args.seconds,
            "p50_ms": statistics.median(ms),
            "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
            "duplicates": len(handed) - len(set(handed)),
            "misses": dict(misses),
            "acquisitions": len(latencies),
            "transactions": batches,
            "conflicts": conflicts,
        }


def _scraped(port: int) -> dict[str, float]:
    """An instance's unlabelled /metrics samples, by name."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = {}
    for metric in text.splitlines():
        name, _, value = metric.partition(" ")
        if value and not name.startswith("#") and "{" not in name:
            found[name] = float(value)
    return found


def _scraped_claims(port: int) -> tuple[int, int]:
    """Claim transactions and conflicts from an instance's /metrics."""
    found = _scraped(port)
    return (
        int(found.get("warmcache_claim_transactions_total", 0)),
        int(found.get("warmcache_claim_conflicts_total", 0)),
    )


def _post(
    conn: http.client.HTTPConnection, pool: tuple[str, str], n: int, named: bool
) -> tuple[list[str], str]:
    body = json.dumps(
        {
            "flavor": pool[1],
            "az": pool[0],
            "count": 1,
            "mode": "best-effort",
            "requester": f"c{n}",
            **({"claim_id": uuid.uuid4().hex} if named else {}),
        }
    )
    conn.request("POST", "/v1/acquire", body, {"Content-Type": "application/json"})
    reply = conn.getresponse()
    data = json.loads(reply.read())
    if reply.status == 200:
        return [vm["name"] for vm in data["vms"]], "ok"
    return [], str(data.get("error"))


def _healthz(conn: http.client.HTTPConnection) -> tuple[list[str], str]:
    conn.request("GET", "/healthz")
    reply = conn.getresponse()
    reply.read()
    return (["healthz"], "ok") if reply.status == 200 else ([], f"http_{reply.status}")


def line(result: dict[str, Any], args: argparse.Namespace, fleet: Fleet, batch: bool) -> str:
    return (
        f"acquire_per_s={result['acquire_per_s']:.1f} p50_ms={result['p50_ms']:.2f} "
        f"p99_ms={result['p99_ms']:.2f} duplicates={result['duplicates']} "
        f"clients={args.clients} store={args.store} via={args.via} "
        f"hypervisors={fleet.hypervisors} pooled={fleet.pooled} pools={len(fleet.pools)} "
        f"batch={'on' if batch else 'off'}"
        + (" named=on" if args.named else "")
        + f" server_cpu_ms={result['cpu_ms']['server']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "etcd"], default="sqlite")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured, per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not measured")
    parser.add_argument("--via", choices=["http", "library"], default="library")
    parser.add_argument("--hypervisors", type=int, default=30)
    parser.add_argument("--pools", type=int, default=1, help="AZ x flavor pools (1-30)")
    parser.add_argument("--pool-size", type=int, default=300, help="ready VMs kept, over all pools")
    parser.add_argument(
        "--no-batch", action="store_true", help="only the baseline: one claim per transaction"
    )
    parser.add_argument(
        "--server",
        default="waitress",
        choices=["waitress", "gunicorn", "granian", "werkzeug"],
        help="--via http: the HTTP server of the instances",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=2,
        choices=[1, 2],
        help="service instances (clients are spread over them)",
    )
    parser.add_argument("--etcd-url", default="")
    parser.add_argument(
        "--release",
        action="store_true",
        help="also the acquire + release loop, and release -> capacity free on real agents",
    )
    parser.add_argument(
        "--loops",
        type=int,
        default=20_000,
        help="--release: acquire + release loops run to count the store's keys around them",
    )
    parser.add_argument(
        "--named",
        action="store_true",
        help="every acquisition names its claim (claim_id): idempotent, one "
        "claim record more per transaction",
    )
    parser.add_argument(
        "--http-threads",
        type=int,
        default=0,
        help="--via http: worker threads per instance (default: clients / 2, at least 8)",
    )
    parser.add_argument(
        "--ceilings",
        action="store_true",
        help="--via http: also measure, in the same run, the servers on an empty "
        "endpoint (GET /healthz) and the same acquisitions in process",
    )
    args = parser.parse_args()
    if args.ceilings and args.via != "http":
        parser.error("--ceilings runs with --via http")
    if not 1 <= args.pools <= 30:
        parser.error("--pools must be between 1 and 30")
    if args.release and args.via != "library":
        parser.error("--release runs with --via library")

    work = Path(tempfile.mkdtemp(prefix="warmcache-acquire-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    cluster: Any = None
    if args.store == "sqlite":
        store_cfg = {"kind": "sqlite", "path": str(work / "store.db")}
    else:
        url = args.etcd_url
        if not url:
            from warmcache.testing.localetcd import EtcdCluster

            cluster = EtcdCluster(work / "etcd").start()
            url = cluster.urls[0]
        store_cfg = {"kind": "etcd", "url": url}
    store = build_store(parse_config({"store": store_cfg}, environ={}))
    fleet = Fleet(store, args.hypervisors, args.pools, args.pool_size)
    try:
        started = time.monotonic()
        fleet.seed()
        setup = build(parse_config(config_for(0, store_cfg, 0, True, 1), environ={}))
        for az, flavor in fleet.pools:
            setup.rules.put(
                az,
                flavor,
                {"max_instance_per_cycle": 1, "total_instances": fleet.target[(az, flavor)]},
            )
        setup.close()
        print(
            f"fleet: {fleet.hypervisors} hypervisors, {fleet.pooled} pooled VMs in "
            f"{len(fleet.pools)} pools, seeded in {time.monotonic() - started:.1f} s"
        )
        print(
            f"store ceiling: {store_ceiling(store):.0f} compare-and-swap txn/s "
            f"(one thread, {args.store} through warmcache's client)"
        )
        if args.store == "etcd":
            for name, per_s, cpu_ms in gateway_clients(store_cfg["url"].split(",")[0]):
                print(f"  etcd through {name}: {per_s:.0f} txn/s, {cpu_ms:.3f} ms CPU per call")
        fleet.start(store_cfg, store.range("zz")[1])
        run = Run(
            args,
            store_cfg,
            fleet,
            work,
            [m.proc.pid for m in cluster.members if m.proc] if cluster is not None else [],
        )
        runs = [False] if args.no_batch else [False, True]
        results = {}
        for batch in runs:
            result = run.measure(batch)
            results[batch] = result
            print(
                f"batch={'on' if batch else 'off'}: {result['acquisitions']} acquisitions, "
                f"misses {result['misses']}, store transactions "
                f"{result['transactions']}, conflicts {result['conflicts']}"
            )
            cpu = result["cpu_ms"]
            print(
                f"  CPU ms per acquisition: server {cpu['server']:.3f}"
                + (
                    " (the instances run in the clients' threads)"
                    if args.via == "library"
                    else f", clients {cpu['bench']:.3f}"
                )
                + f", store {cpu['store']:.3f}, refiller {cpu['refiller']:.3f}"
            )
            print("  " + line(result, args, fleet, batch))
        if len(results) == 2:
            on, off = results[True], results[False]
            print(
                f"batch on / off: {on['acquire_per_s'] / off['acquire_per_s']:.2f}x "
                f"acquisitions/s, p99 {off['p99_ms']:.1f} -> {on['p99_ms']:.1f} ms"
            )
        extra = ""
        if args.ceilings:
            extra = ceilings(run, results[runs[-1]], runs[-1])
        if args.release:
            loop = run.measure(runs[-1], release=True)
            ratio = loop["acquire_per_s"] / results[runs[-1]]["acquire_per_s"]
            print(
                f"acquire + release loop: {loop['acquisitions']} loops, "
                f"{loop['acquire_per_s']:.1f}/s, {ratio:.2f}x the acquire-only rate, "
                f"duplicates {loop['duplicates']}"
            )
            before = len(store.range(f"{PREFIX}/")[0])
            many = run.measure(runs[-1], release=True, loops=args.loops)
            after = len(store.range(f"{PREFIX}/")[0])
            left = {
                k.key.split("/")[1] for k in store.range(f"{PREFIX}/")[0]
            }  # folders holding keys
            print(
                f"store keys around {many['acquisitions']} acquire + release loops: "
                f"{before} before, {after} after (folders now: {', '.join(sorted(left))})"
            )
            free = release_to_free(work / "agents", args.store, store_cfg)
            fms = sorted(x * 1000 for x in free)
            print(
                f"release -> capacity free on a real agent: p50 {statistics.median(fms):.0f} ms, "
                f"p99 {fms[min(len(fms) - 1, int(len(fms) * 0.99))]:.0f} ms over {len(fms)}"
            )
            extra = (
                f" loop_per_s={loop['acquire_per_s']:.1f} loop_ratio={ratio:.2f} "
                f"keys_before={before} keys_after={after} "
                f"free_p50_ms={statistics.median(fms):.0f} "
                f"free_p99_ms={fms[min(len(fms) - 1, int(len(fms) * 0.99))]:.0f}"
            )
    finally:
        fleet.stop()
        store.close()
        if cluster is not None:
            cluster.stop()
    final = runs[-1]
    print(line(results[final], args, fleet, final) + extra)


def ceilings(run: Run, http: dict[str, Any], batch: bool) -> str:
    """The ceiling of each part beside an HTTP run, in the same run: the
    same clients on the servers' empty endpoint (the web stack alone), and
    the same acquisitions in process (the app alone, no HTTP). What the
    HTTP run's server CPU per acquisition is made of, and its limit."""
    empty = run.measure(batch, empty=True)
    inproc = run.measure(batch, via="library")
    served = http["cpu_ms"]["server"]
    web, app = empty["cpu_ms"]["server"], inproc["cpu_ms"]["server"]
    print(
        f"ceiling, empty endpoint (GET /healthz, same clients and servers): "
        f"{empty['acquire_per_s']:.0f} requests/s, p99 {empty['p99_ms']:.1f} ms, "
        f"server CPU {web:.3f} ms per request"
    )
    print(
        f"ceiling, the app in process (same clients, no HTTP): "
        f"{inproc['acquire_per_s']:.0f} acquisitions/s, p99 {inproc['p99_ms']:.1f} ms, "
        f"CPU {app:.3f} ms per acquisition (clients included), misses {inproc['misses']}"
    )
    print(
        f"server CPU per acquisition over HTTP {served:.3f} ms = web stack {web:.3f} "
        f"+ the app in process {app:.3f} + the rest {served - web - app:.3f} "
        f"(the request body, the reply, the claim's extra share over HTTP)"
    )
    return (
        f" empty_per_s={empty['acquire_per_s']:.1f} empty_cpu_ms={web:.3f}"
        f" inproc_per_s={inproc['acquire_per_s']:.1f} inproc_cpu_ms={app:.3f}"
    )


class _GoneAgent:
    """The fleet's hosts have no agent: a release's delete finds nothing to do."""

    def delete(self, name: str) -> None:
        return None


def release_to_free(work: Path, store_kind: str, store_cfg: dict[str, str]) -> list[float]:
    """Seconds from a release's return until the agent no longer has the VM,
    with two agent processes on test:///default and one instance building
    through them (its own store prefix, so the fleet above is not touched)."""
    from warmcache.adapters.agent_client import AgentClient
    from warmcache.errors import AgentVmNotFound

    work.mkdir(parents=True, exist_ok=True)
    procs = []
    sockets = []
    for i in range(2):
        adir = work / f"hv{i}"
        adir.mkdir(exist_ok=True)
        where = (
            f'path = "{store_cfg["path"]}"'
            if store_kind == "sqlite"
            else f'url = "{store_cfg["url"]}"'
        )
        (adir / "agent.toml").write_text(
            f'hypervisor = "free-h{i}"\nrack = "free-r{i}"\naz = "freeaz"\n'
            f'libvirt_uri = "test:///default"\nstate_dir = "{adir}"\npin_cpus = false\n'
            'reconcile_ignore = ["test"]\n'
            "[capacity]\nvcpus = 64\nmemory_mib = 262144\ndisk_gib = 10000\n"
            "[disks]\ncheck_filesystem = false\n"
            f'[images]\nlocal_dirs = ["{CONFIG_DIR / "images"}"]\n'
            f'[inventory]\nkind = "{store_kind}"\n{where}\nprefix = "free"\nttl_s = 10\n'
        )
        sock = adir / "agent.sock"
        sockets.append(sock)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "warmcache_agent", "--socket", str(sock), "--config",
                 str(adir / "agent.toml")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )  # fmt: skip
    service = None
    try:
        config = config_for(9, store_cfg, 0, True, 1)
        config["service"].update(
            {"prefix": "free", "run_builds": True, "cycle_interval_s": 0.5, "retry_interval_s": 0.5}
        )
        service = build(parse_config(config, environ={})).start()
        deadline = time.monotonic() + 60
        while len(service.hosts.hosts()) < 2:
            if time.monotonic() > deadline:
                raise SystemExit("the agents did not heartbeat")
            service.hosts.catch_up()
            time.sleep(0.05)
        service.rules.put("freeaz", "small", {"max_instance_per_cycle": 4, "total_instances": 4})
        agents = {f"free-h{i}": AgentClient(f"unix:{s}") for i, s in enumerate(sockets)}
        took = []
        for _ in range(20):
            deadline = time.monotonic() + 60
            while True:
                try:
                    [vm] = service.acquire("small", "freeaz", 1, "best-effort", requester="bench")
                    break
                except (NoCapacity, ClaimContention, UnknownAZ, UnknownPool):  # not built yet
                    if time.monotonic() > deadline:
                        raise SystemExit("the pool did not fill") from None
                    time.sleep(0.05)
            service.release(vm.name, requester="bench")
            released = time.perf_counter()
            while True:
                try:
                    agents[vm.hypervisor].status(vm.name)
                except AgentVmNotFound:
                    took.append(time.perf_counter() - released)
                    break
                time.sleep(0.002)
        return took
    finally:
        if service is not None:
            service.close()
        for proc in procs:
            os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)


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


def _wait_dealt(port: int, instances: int) -> None:
    """Until the instance has dealt the pools' shares over ``instances``
    (``warmcache_share_instances`` on /metrics): it sees the others and has
    re-dealt every VM (O(pooled VMs), seconds for 30,000)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if _scraped(port).get("warmcache_share_instances", 0) >= instances:
                return
        time.sleep(0.1)
    raise SystemExit(f"instance on port {port} did not deal its shares over {instances}")


def _wait_http(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer")


if __name__ == "__main__":
    main()
