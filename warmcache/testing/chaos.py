"""warmcache under faults, across real network namespaces (DESIGN §12).

The topology (``warmcache/testing/netns.py``: one namespace per host on a bridge):
three etcd members, two ``warmcache serve`` instances (leader election,
build cycles, health polls, acquisitions) and hypervisors, each an agent on
libvirt's test driver behind a ``warmcache-proxy`` (mTLS over TCP). The
driver, in the root namespace, sends acquisitions to both instances from a
few client threads while faults are injected from a seeded schedule:

* cutting an instance (or an agent) off the etcd majority, both ways, or
  one way only (requests lost, or replies lost: a claim that lands with
  nobody told);
* isolating one etcd member from its peers and clients;
* taking a host's link down and up;
* SIGKILL (then a restart) and SIGSTOP (then SIGCONT) of an instance or
  an agent.

Then everything is healed, the system settles (two build cycles complete,
every agent reconciles), and the checker reads every reply and the final
store: a VM handed out twice, or recorded as acquired by another caller
(``duplicates``); a VM on a hypervisor in no record and not reported, or a
record whose VM is gone and not reported (``lost``); a builder's write
landing with a fencing token other than the leader's at that revision
(``stale_writes``, from etcd's full history); an acquired record that no
reply accounts for, a caller told "failed" whose VMs were claimed anyway,
or a success whose VMs are not acquired (``unresolved_claims``). Each
acquisition names its caller (``requester``), so one whose reply never came
(a timeout) is resolved by what the store says it holds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmcache.adapters.etcd_store import EtcdStore
from warmcache.layout import Keys
from warmcache.model import InstanceState, PoolInstance
from warmcache.testing.certs import TestCA
from warmcache.testing.netns import Network
from warmcache.testing.polling import wait_for

CONFIG_DIR = Path(__file__).resolve().parents[1] / "data" / "config"  # the example config
KEYS = Keys("warmcache")
ETCD, SVC, HV = 11, 21, 31  # last octets: etcd members, instances, hypervisors
FAULTS = (
    "partition_instance",
    "instance_loses_requests",
    "instance_loses_replies",
    "partition_member",
    "partition_agent",
    "link_flap",
    "kill_instance",
    "stop_instance",
    "kill_agent",
    "stop_agent",
)


@dataclass
class Proc:
    name: str
    host: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    stopped: bool = False


@dataclass
class Reply:
    requester: str
    instance: str
    count: int
    mode: str
    status: int | None  # None: no reply (timeout, connection cut)
    body: Any = None


@dataclass
class Report:
    faults: list[str] = field(default_factory=list)
    acquisitions: int = 0
    duplicates: int = 0
    lost: int = 0
    stale_writes: int = 0
    unresolved_claims: int = 0
    releases: int = 0
    double_releases: int = 0  # a VM moved to releasing more than once
    stuck_releases: int = 0  # given back, and still not gone once everything healed
    notes: list[str] = field(default_factory=list)
    replies: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        return (
            f"chaos faults={len(self.faults)} acquisitions={self.acquisitions} "
            f"duplicates={self.duplicates} lost={self.lost} "
            f"stale_writes={self.stale_writes} unresolved_claims={self.unresolved_claims} "
            f"releases={self.releases} double_releases={self.double_releases} "
            f"stuck_releases={self.stuck_releases}"
        )

    @property
    def clean(self) -> bool:
        return not (
            self.duplicates
            or self.lost
            or self.stale_writes
            or self.unresolved_claims
            or self.double_releases
            or self.stuck_releases
        )


class ChaosRig:
    def __init__(
        self,
        work: Path,
        *,
        seed: int = 1,
        hypervisors: int = 3,
        instances: int = 2,
        members: int = 3,
    ) -> None:
        self.work = work
        self.rng = random.Random(seed)
        self.tag = f"wcx{os.getpid() % 100000}"
        self.net = Network(self.tag, f"10.77.{20 + os.getpid() % 200}")
        self.n_hv, self.n_svc, self.n_etcd = hypervisors, instances, members
        self.procs: dict[str, Proc] = {}
        self.replies: list[Reply] = []
        self.released: dict[str, int | None] = {}  # VM -> the DELETE's status (None: no reply)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._down: str | None = None  # the host whose link a link_flap took down
        self._clients: list[threading.Thread] = []
        self.store: EtcdStore | None = None
        self.start_revision = 0

    # --- addresses -----------------------------------------------------------------

    def ip(self, base: int, i: int) -> str:
        return f"{self.net.subnet}.{base + i}"

    @property
    def etcd_urls(self) -> str:
        return ",".join(f"http://{self.ip(ETCD, i)}:2379" for i in range(self.n_etcd))

    def instance_url(self, i: int) -> tuple[str, int]:
        return self.ip(SVC, i), 8080

    # --- bring up ------------------------------------------------------------------

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.net.create()
        for i in range(self.n_etcd):
            self.net.add(f"etcd{i}", ETCD + i)
        for i in range(self.n_svc):
            self.net.add(f"svc{i}", SVC + i)
        for i in range(self.n_hv):
            self.net.add(f"hv{i}", HV + i)
        self._certs()
        self._start_etcd()
        self.store = EtcdStore(self.etcd_urls, timeout_s=5)
        self.start_revision = self.store.put("chaos/started", str(time.time()))
        self._load_rules()
        for i in range(self.n_hv):
            self._start_agent(i)
        self._wait(
            lambda: len(self.store_range(KEYS.hosts_dir())) == self.n_hv,
            60,
            "every agent to publish its facts",
        )
        for i in range(self.n_svc):
            self._start_instance(i)
        self._wait(
            lambda: all(self._get(i, "/healthz")[0] == 200 for i in range(self.n_svc)),
            60,
            "the instances to answer",
        )
        self._wait(self._pool_full, 90, "the pool to fill")

    def _certs(self) -> None:
        self.ca = TestCA(self.work, "chaos")
        self.client_cert = self.ca.issue("instances", server=False)
        self.proxy_certs = [
            self.ca.issue(f"hv{i}", server=True, ips=(self.ip(HV, i),)) for i in range(self.n_hv)
        ]

    def _start_etcd(self) -> None:
        from warmcache.testing.localetcd import etcd_binary

        initial = ",".join(f"m{i}=http://{self.ip(ETCD, i)}:2380" for i in range(self.n_etcd))
        for i in range(self.n_etcd):
            ip = self.ip(ETCD, i)
            self._spawn(
                f"etcd{i}",
                f"etcd{i}",
                [
                    etcd_binary(),
                    "--name",
                    f"m{i}",
                    "--data-dir",
                    str(self.work / f"etcd{i}"),
                    "--listen-client-urls",
                    f"http://{ip}:2379",
                    "--advertise-client-urls",
                    f"http://{ip}:2379",
                    "--listen-peer-urls",
                    f"http://{ip}:2380",
                    "--initial-advertise-peer-urls",
                    f"http://{ip}:2380",
                    "--initial-cluster",
                    initial,
                    "--initial-cluster-state",
                    "new",
                    "--heartbeat-interval",
                    "100",
                    "--election-timeout",
                    "1000",
                ],
            )
        self._wait(self._etcd_healthy, 60, "etcd to form a cluster")

    def _etcd_healthy(self) -> bool:
        try:
            store = EtcdStore(self.etcd_urls, timeout_s=2)
            store.put("chaos/probe", "1")
            return True
        except Exception:
            return False

    def _load_rules(self) -> None:
        from warmcache.adapters.file_catalog import FileFlavorCatalog
        from warmcache.rules import RuleBook

        assert self.store is not None
        RuleBook(self.store, KEYS, FileFlavorCatalog(CONFIG_DIR / "flavors.toml")).put(
            "az1", "small", {"max_instance_per_cycle": 12, "total_instances": 12}
        )

    def _start_agent(self, i: int) -> None:
        adir = self.work / f"hv{i}"
        adir.mkdir(exist_ok=True)
        ip = self.ip(HV, i)
        (adir / "agent.toml").write_text(
            f'hypervisor = "hv{i}"\nrack = "r{i}"\naz = "az1"\n'
            f'libvirt_uri = "test:///default"\nstate_dir = "{adir}"\ncreate_delay_s = 0.05\n'
            'reconcile_ignore = ["test"]\npin_cpus = false\n'
            # room for every VM a 50-fault run hands out (they stay on their host)
            "[capacity]\nvcpus = 16384\nmemory_mib = 67108864\ndisk_gib = 1000000\n"
            "[reserved]\nvcpus = 2\nmemory_mib = 4096\ndisk_gib = 50\n"
            # simulated hosts sharing this machine's disk; the catalog's image is here
            "[disks]\ncheck_filesystem = false\n"
            f'[images]\nlocal_dirs = ["{CONFIG_DIR / "images"}"]\n'
            f'[inventory]\nkind = "etcd"\nurl = "{self.etcd_urls}"\nttl_s = 2\n'
            f'advertise = "https://{ip}:8443"\n'
        )
        sock = adir / "agent.sock"
        self._spawn(
            f"agent{i}",
            f"hv{i}",
            [
                sys.executable,
                "-m",
                "warmcache_agent",
                "--socket",
                str(sock),
                "--config",
                str(adir / "agent.toml"),
            ],
        )
        self._wait(sock.exists, 30, f"agent {i} to listen")
        cert = self.proxy_certs[i]
        self._spawn(
            f"proxy{i}",
            f"hv{i}",
            [
                sys.executable,
                "-m",
                "warmcache_agent.proxy",
                "--listen",
                f"{ip}:8443",
                "--socket",
                str(sock),
                "--cert",
                str(cert.cert),
                "--key",
                str(cert.key),
                "--client-ca",
                str(self.ca.cert),
                "--allow",
                f"{self.net.subnet}.0/24",
                "--idle-timeout",
                "10",
            ],
        )

    def _start_instance(self, i: int) -> None:
        ip, port = self.instance_url(i)
        path = self.work / f"svc{i}.toml"
        path.write_text(
            f'[service]\nnode = "wc-{i}"\nlisten_host = "{ip}"\nlisten_port = {port}\n'
            "cycle_interval_s = 2\nretry_interval_s = 1\nleader_ttl_s = 2\n"
            "health_interval_s = 2\nbuild_concurrency = 4\nrequest_deadline_s = 2\n"
            "release_interval_s = 1\nrelease_retry_s = 1\n"
            "agent_timeout_s = 10\nbuild_retries = 2\nshares_refresh_s = 1\n"
            f'[store]\nkind = "etcd"\nurl = "{self.etcd_urls}"\n'
            f'[catalog]\npath = "{CONFIG_DIR / "flavors.toml"}"\n'
            '[events]\nkind = "log"\n'
            f'[agent_tls]\ncert = "{self.client_cert.cert}"\nkey = "{self.client_cert.key}"\n'
            f'ca = "{self.ca.cert}"\n'
        )
        self._spawn(
            f"svc{i}",
            f"svc{i}",
            [sys.executable, "-m", "warmcache", "serve", "--config", str(path)],
        )

    def _spawn(self, name: str, host: str, argv: list[str]) -> None:
        proc = self.procs.get(name) or Proc(name, host, argv, self.work / f"{name}.log")
        log = open(proc.log, "ab")  # noqa: SIM115
        proc.popen = subprocess.Popen(
            self.net.command(host, argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.work,
        )
        log.close()
        proc.stopped = False
        self.procs[name] = proc

    def _pool_full(self) -> bool:
        ready = [
            PoolInstance.model_validate_json(kv.value) for kv in self.store_range(KEYS.pool_dir())
        ]
        return sum(r.state is InstanceState.READY for r in ready) >= 12

    def store_range(self, prefix: str) -> list[Any]:
        assert self.store is not None
        try:
            return self.store.range(prefix)[0]
        except Exception:
            return []

    @staticmethod
    def _wait(predicate: Any, timeout_s: float, what: str) -> None:
        wait_for(what, predicate, timeout_s, interval_s=0.1)

    # --- the workload ----------------------------------------------------------------

    def _get(self, i: int, path: str) -> tuple[int | None, Any]:
        ip, port = self.instance_url(i)
        conn = http.client.HTTPConnection(ip, port, timeout=3)
        try:
            conn.request("GET", path)
            reply = conn.getresponse()
            return reply.status, json.loads(reply.read() or b"null")
        except (OSError, ValueError):
            return None, None
        finally:
            conn.close()

    def _client(self, n: int) -> None:
        rng = random.Random(n)
        seq = 0
        while not self._stop.is_set():
            i = rng.randrange(self.n_svc)
            seq += 1
            requester = f"c{n}-{seq}"
            mode = rng.choice(["rack-aware", "hypervisor-aware", "best-effort"])
            count = rng.choice([1, 1, 2])
            ip, port = self.instance_url(i)
            conn = http.client.HTTPConnection(ip, port, timeout=5)
            status, body = None, None
            try:
                conn.request(
                    "POST",
                    "/v1/acquire",
                    json.dumps(
                        {
                            "flavor": "small",
                            "az": "az1",
                            "count": count,
                            "mode": mode,
                            "requester": requester,
                        }
                    ),
                    {"Content-Type": "application/json"},
                )
                reply = conn.getresponse()
                status, body = reply.status, json.loads(reply.read())
            except (OSError, ValueError) as exc:
                body = f"{type(exc).__name__}: {exc}"
            finally:
                conn.close()
            with self._lock:
                self.replies.append(Reply(requester, f"wc-{i}", count, mode, status, body))
            if status == 200 and isinstance(body, dict) and rng.random() < 0.5:
                for vm in body["vms"]:  # half of them are given back at once
                    self._release(rng.randrange(self.n_svc), vm["name"])
            self._stop.wait(0.2 if status == 200 else 0.5)

    def _release(self, i: int, name: str) -> None:
        ip, port = self.instance_url(i)
        conn = http.client.HTTPConnection(ip, port, timeout=5)
        status: int | None = None
        try:
            conn.request("DELETE", f"/v1/vms/{name}")
            reply = conn.getresponse()
            reply.read()
            status = reply.status
        except OSError:
            status = None
        finally:
            conn.close()
        with self._lock:
            self.released[name] = status

    # --- faults ---------------------------------------------------------------------

    def run(
        self,
        faults: int,
        *,
        clients: int = 3,
        hold_s: tuple[float, float] = (1.5, 3.5),
        kinds: tuple[str, ...] = FAULTS,
    ) -> Report:
        report = Report()
        self._clients = [
            threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)
        ]
        for t in self._clients:
            t.start()
        schedule = [kinds[i % len(kinds)] for i in range(faults)]
        self.rng.shuffle(schedule)
        for kind in schedule:
            described = self._inject(kind)
            report.faults.append(described)
            self._hold(self.rng.uniform(*hold_s))
            self._heal_all()
            self._hold(1.0)
        self._stop.set()
        for t in self._clients:
            t.join()
        self._settle()
        return self.check(report)

    def _hold(self, seconds: float) -> None:
        """Keep the world as it is for ``seconds`` of real time while the
        clients keep asking: a fault's duration (straddling the leader and
        session TTLs) is this experiment's input, not a wait for an event.
        Ends early only if the run is stopped."""
        self._stop.wait(seconds)

    def _inject(self, kind: str) -> str:
        svc = f"svc{self.rng.randrange(self.n_svc)}"
        member = f"etcd{self.rng.randrange(self.n_etcd)}"
        agent = self.rng.randrange(self.n_hv)
        to_etcd = [f"ip daddr {self.ip(ETCD, i)} tcp dport 2379" for i in range(self.n_etcd)]
        from_etcd = [f"ip saddr {self.ip(ETCD, i)} tcp sport 2379" for i in range(self.n_etcd)]
        if kind == "partition_instance":
            self.net.drop(svc, outgoing=to_etcd, incoming=from_etcd)
            return f"{kind} {svc}"
        if kind == "instance_loses_requests":
            self.net.drop(svc, outgoing=to_etcd)
            return f"{kind} {svc}"
        if kind == "instance_loses_replies":
            self.net.drop(svc, incoming=from_etcd)
            return f"{kind} {svc}"
        if kind == "partition_member":
            self.net.drop(
                member,
                outgoing=["tcp dport 2380", "tcp sport 2380", "tcp sport 2379"],
                incoming=["tcp dport 2380", "tcp sport 2380", "tcp dport 2379"],
            )
            return f"{kind} {member}"
        if kind == "partition_agent":
            self.net.drop(f"hv{agent}", outgoing=to_etcd, incoming=from_etcd)
            return f"{kind} hv{agent}"
        if kind == "link_flap":
            host = self.rng.choice([svc, member, f"hv{agent}"])
            self.net.link_down(host)
            self._down = host
            return f"{kind} {host}"
        name = {
            "kill_instance": svc,
            "stop_instance": svc,
            "kill_agent": f"agent{agent}",
            "stop_agent": f"agent{agent}",
        }[kind]
        proc = self.procs[name]
        assert proc.popen is not None
        if kind.startswith("kill"):
            os.kill(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()
        else:
            os.kill(proc.popen.pid, signal.SIGSTOP)
            proc.stopped = True
        return f"{kind} {name}"

    def _heal_all(self) -> None:
        for host in self.net.hosts:
            self.net.heal(host)
        if self._down:
            self.net.link_up(self._down)
            self._down = None
        for proc in self.procs.values():
            assert proc.popen is not None
            if proc.stopped:
                os.kill(proc.popen.pid, signal.SIGCONT)
                proc.stopped = False
            elif proc.popen.poll() is not None:
                self._spawn(proc.name, proc.host, proc.argv)

    def _settle(self) -> None:
        """Healed: wait for every agent and instance, then two complete
        build cycles (the leader settles what the faults left), then a
        reconciliation on every agent."""
        self._heal_all()
        self._wait(
            lambda: len(self.store_range(KEYS.hosts_dir())) == self.n_hv,
            60,
            "every agent to heartbeat again",
        )
        self._wait(
            lambda: all(self._get(i, "/healthz")[0] == 200 for i in range(self.n_svc)),
            60,
            "the instances to answer again",
        )
        for _ in range(2):
            since = time.time()
            self._wait(
                lambda since=since: self._cycle_done_after(since),
                90,
                "a complete build cycle after the faults",
            )
        self._wait(self._quiet, 90, "no VM being built")
        # every VM given back is gone once its agent answers again (backoff at most 16 s here)
        with contextlib.suppress(RuntimeError, AssertionError, TimeoutError):
            self._wait(lambda: not self.store_range(KEYS.releasing_dir()), 60, "releases")
        self.findings = {i: self._agent(i, {"op": "reconcile"}) for i in range(self.n_hv)}

    def _quiet(self) -> bool:
        recs = [
            PoolInstance.model_validate_json(kv.value) for kv in self.store_range(KEYS.pool_dir())
        ]
        return bool(recs) and not any(r.state is InstanceState.BUILDING for r in recs)

    def _cycle_done_after(self, since: float) -> bool:
        assert self.store is not None
        try:
            kv = self.store.get(KEYS.last_cycle())
        except Exception:
            return False
        if kv is None:
            return False
        last = json.loads(kv.value)
        return bool(
            last["finished_at"] > since and not last["unsettled"] and not last["leadership_lost"]
        )

    def _agent(self, i: int, request: dict[str, Any]) -> Any:
        ctx = ssl.create_default_context(cafile=str(self.ca.cert))
        ctx.load_cert_chain(str(self.client_cert.cert), str(self.client_cert.key))
        conn = http.client.HTTPSConnection(self.ip(HV, i), 8443, context=ctx, timeout=30)
        try:
            conn.request(
                "POST", "/v1/agent", json.dumps(request), {"Content-Type": "application/json"}
            )
            return json.loads(conn.getresponse().read())["result"]
        finally:
            conn.close()

    # --- the checker -----------------------------------------------------------------

    def check(self, report: Report) -> Report:
        assert self.store is not None
        acquired = {
            kv.key.rsplit("/", 1)[1]: PoolInstance.model_validate_json(kv.value)
            for kv in self.store_range(KEYS.acquired_dir())
        }
        pooled = {
            kv.key.rsplit("/", 1)[1]: PoolInstance.model_validate_json(kv.value)
            for kv in self.store_range(KEYS.pool_dir())
        }
        by_requester: dict[str, list[PoolInstance]] = {}
        for vm in acquired.values():
            by_requester.setdefault(vm.acquired_by or "?", []).append(vm)
        handed: Counter[str] = Counter()
        for reply in self.replies:
            code = (
                reply.body.get("error", "ok")
                if isinstance(reply.body, dict)
                else ("no reply" if reply.status is None else str(reply.status))
            )
            report.replies[code if reply.status != 200 else "ok"] += 1
            held = by_requester.pop(reply.requester, [])
            if reply.status == 200:
                report.acquisitions += 1
                names = [vm["name"] for vm in reply.body["vms"]]
                handed.update(names)
                holding = {vm.name for vm in held}
                # given back (202), or maybe (no reply): not held any more
                kept = [
                    n
                    for n in names
                    if n not in self.released
                    or (self.released[n] not in (202, 404) and n in holding)
                ]
                if sorted(kept) != sorted(holding):
                    report.unresolved_claims += 1
                    report.notes.append(
                        f"{reply.requester}: replied {names}, store holds "
                        f"{[vm.name for vm in held]}"
                    )
                if not self._mode_holds(reply.mode, reply.body["vms"]):
                    report.duplicates += 1
                    report.notes.append(f"{reply.requester}: {reply.mode} broken")
            elif reply.status is None or code == "claim_outcome_unknown":
                handed.update(vm.name for vm in held)  # resolved by the store
                report.acquisitions += bool(held)
            elif held:  # told it failed, and yet claimed
                report.unresolved_claims += 1
                report.notes.append(
                    f"{reply.requester}: {code}, yet holds {[vm.name for vm in held]}"
                )
        for requester, vms in by_requester.items():  # nobody asked for these
            report.unresolved_claims += len(vms)
            report.notes.append(f"acquired by unknown {requester}: {[v.name for v in vms]}")
        report.duplicates += sum(n - 1 for n in handed.values() if n > 1)
        report.lost = self._lost(pooled, acquired, report)
        report.stale_writes = self._stale_writes(report)
        report.releases = sum(1 for status in self.released.values() if status == 202)
        stuck = [Keys.name(kv.key) for kv in self.store_range(KEYS.releasing_dir())]
        report.stuck_releases = len(stuck)
        if stuck:
            report.notes.append(f"still releasing after the heal: {stuck}")
        return report

    @staticmethod
    def _mode_holds(mode: str, vms: list[dict[str, Any]]) -> bool:
        key = {"rack-aware": "rack", "hypervisor-aware": "hypervisor"}.get(mode)
        return key is None or len({vm[key] for vm in vms}) == len(vms)

    def _lost(
        self, pooled: dict[str, PoolInstance], acquired: dict[str, PoolInstance], report: Report
    ) -> int:
        lost = 0
        for i in range(self.n_hv):
            hv = f"hv{i}"
            # what libvirt has, not what the books say (a killed test-driver
            # agent comes back with its books and none of its domains)
            on_host = {s["name"] for s in self._agent(i, {"op": "list"}) if s["state"] != "missing"}
            reported = {f["vm"] for f in self.findings[i]}
            records = {name for name, r in {**pooled, **acquired}.items() if r.hypervisor == hv}
            for name in (on_host - records) - reported:
                lost += 1
                report.notes.append(f"{name} on {hv}: no record, not reported")
            for name in (records - on_host) - reported:
                lost += 1
                report.notes.append(f"{name}: recorded on {hv}, no VM there, not reported")
        return lost

    def _stale_writes(self, report: Report) -> int:
        """From etcd's whole history since the start: every builder write
        (a new pool record, or one leaving `building`) must carry the token
        of the leader key alive at its revision."""
        assert self.store is not None
        changes = []
        after = self.start_revision
        while batch := self.store.changes("warmcache/", after, 0):
            changes += batch
            after = batch[-1].revision
        leader: int | None = None
        states: dict[str, str] = {}
        stale = 0
        releasing_seen: dict[str, int] = {}  # first put of a VM's releasing record
        releasing_gone: dict[str, int] = {}
        for change in changes:
            if change.key.startswith(KEYS.releasing_dir()) and change.kind == "put":
                name = Keys.name(change.key)
                if change.value is not None and name not in releasing_seen:
                    releasing_seen[name] = change.revision
                elif (
                    change.value is not None and releasing_gone.get(name, 0) > releasing_seen[name]
                ):
                    report.double_releases += 1  # created again after it was finished
                    report.notes.append(f"{name} released twice (at {change.revision})")
                continue
            if change.key.startswith(KEYS.releasing_dir()):
                releasing_gone[Keys.name(change.key)] = change.revision
                continue
            if change.key == KEYS.leader():
                leader = (
                    change.revision
                    if change.kind == "put" and leader is None
                    else (None if change.kind == "delete" else leader)
                )
                continue
            if not change.key.startswith(KEYS.pool_dir()):
                continue
            if change.kind == "delete":
                states.pop(change.key, None)
                continue
            assert change.value is not None
            rec = PoolInstance.model_validate_json(change.value)
            before = states.get(change.key)
            states[change.key] = rec.state.value
            builder = before is None or (before == "building" and rec.state.value != "building")
            if builder and rec.fencing_token != leader:
                stale += 1
                report.notes.append(
                    f"{rec.name} written at {change.revision} with token "
                    f"{rec.fencing_token}, leader {leader}"
                )
        return stale

    # --- teardown --------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        for proc in self.procs.values():
            if proc.popen is None or proc.popen.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                if proc.stopped:
                    os.kill(proc.popen.pid, signal.SIGCONT)
                os.kill(proc.popen.pid, signal.SIGTERM)
        for proc in self.procs.values():
            if proc.popen is None:
                continue
            try:
                proc.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
        self.net.destroy()
