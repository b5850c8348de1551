"""Leader failover: how long from SIGKILL of the leader to a new leader?

    .venv/bin/python bench/failover.py --store sqlite|etcd --ttl 2 --runs 10

Starts ``--contenders`` processes that run warmcache's own election
(``LeaderElection.lead`` with renewal, ``wait_for_vacancy`` on the change
feed, fenced writes every 50 ms while leading) against a real store: a
SQLite file, or a real etcd started on loopback (or ``--etcd-url``). Then,
``--runs`` times: SIGKILL the leader's process, time until another
contender holds the lock, try a write with the dead leader's fencing token
(it must be rejected) and check that nothing carrying that token landed
after the new leader took over; replace the dead contender.

Prints one line per run and, last, the contract line:
    failover_s p50=<x> max=<y> stale_writes_accepted=<n>
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from warmcache.clock import SystemClock
from warmcache.errors import LeadershipLost, StoreError
from warmcache.layout import Keys
from warmcache.leader.election import LeaderElection, Leadership, watch_poll_s
from warmcache.ports import CoordinationStore

KEY = Keys("bench").leader()
WORK = "bench/work/"


def open_store(spec: dict[str, str]) -> CoordinationStore:
    if spec["kind"] == "sqlite":
        from warmcache.adapters.sqlite_store import SqliteStore

        return SqliteStore(spec["path"])
    from warmcache.adapters.etcd_store import EtcdStore

    return EtcdStore(spec["url"])


def contend(spec: dict[str, str], node: str, ttl_s: float) -> None:
    """One contender: lead while it can (fenced writes), else watch for a vacancy."""
    store = open_store(spec)
    election = LeaderElection(store, KEY, node, ttl_s=ttl_s, clock=SystemClock())
    stop = threading.Event()
    seq = 0
    while True:
        try:
            with election.lead() as leadership:
                if leadership is not None:
                    writer = election.writer(leadership)
                    while not leadership.lost.is_set():
                        seq += 1
                        writer.put(
                            f"{WORK}{node}", json.dumps({"token": leadership.token, "seq": seq})
                        )
                        leadership.lost.wait(0.05)
                    continue
            election.wait_for_vacancy(stop, poll_s=watch_poll_s(ttl_s))
        except (LeadershipLost, StoreError):
            stop.wait(0.05)


def spawn(spec: dict[str, str], node: str, ttl_s: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--contender",
            json.dumps(spec),
            "--node",
            node,
            "--ttl",
            str(ttl_s),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def holder(store: CoordinationStore) -> tuple[str, int] | None:
    kv = store.get(KEY)
    return (json.loads(kv.value)["node"], kv.create_revision) if kv else None


def wait_holder(
    store: CoordinationStore, not_token: int | None, timeout_s: float
) -> tuple[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            h = holder(store)
        except StoreError:
            h = None
        if h and h[1] != not_token:
            return h
        time.sleep(0.005)
    raise SystemExit(f"no new leader within {timeout_s} s")


def stale_writes(
    store: CoordinationStore, dead_token: int, new_token: int, node: str, ttl_s: float
) -> int:
    """Writes carrying the dead leader's token that landed after the takeover."""
    accepted = 0
    ghost = Leadership(node, "gone", dead_token, 0.0)
    election = LeaderElection(store, KEY, node, ttl_s=ttl_s, clock=SystemClock())
    try:
        election.writer(ghost).put(f"{WORK}ghost", json.dumps({"token": dead_token}))
        accepted += 1
    except LeadershipLost:
        pass
    kvs, _ = store.range(WORK)
    for kv in kvs:
        if json.loads(kv.value)["token"] == dead_token and kv.mod_revision > new_token:
            accepted += 1
    return accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "etcd"], default="sqlite")
    parser.add_argument("--ttl", type=float, default=2.0, help="leader session TTL, seconds")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--contenders", type=int, default=3)
    parser.add_argument("--etcd-url", default="", help="use this etcd instead of starting one")
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--node", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        contend(json.loads(args.contender), args.node, args.ttl)
        return

    workdir = Path(tempfile.mkdtemp(prefix="warmcache-failover-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    cluster: Any = None
    if args.store == "sqlite":
        spec = {"kind": "sqlite", "path": str(workdir / "store.db")}
    elif args.etcd_url:
        spec = {"kind": "etcd", "url": args.etcd_url}
    else:
        from warmcache.testing.localetcd import EtcdCluster

        cluster = EtcdCluster(workdir / "etcd").start()
        spec = {"kind": "etcd", "url": cluster.urls[0]}
    store = open_store(spec)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    times: list[float] = []
    stale = 0
    try:
        for i in range(args.contenders):
            procs[f"c{i}"] = spawn(spec, f"c{i}", args.ttl)
        current = wait_holder(store, None, 30 + args.ttl)
        for run in range(1, args.runs + 1):
            node, token = current
            victim = procs[node]
            killed = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            current = wait_holder(store, token, 10 * args.ttl + 30)
            took = time.monotonic() - killed
            times.append(took)
            found = stale_writes(store, token, current[1], node, args.ttl)
            stale += found
            print(
                f"run {run}: killed {node} (token {token}); {current[0]} leads after "
                f"{took:.3f} s; stale writes accepted: {found}",
                flush=True,
            )
            replacement = f"c{args.contenders + run - 1}"
            procs[replacement] = spawn(spec, replacement, args.ttl)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        store.close()
        if cluster is not None:
            cluster.stop()
    p50 = statistics.median(times)
    print(
        f"store={args.store} ttl_s={args.ttl} runs={args.runs} "
        f"contenders={args.contenders} min={min(times):.3f} "
        f"p90={statistics.quantiles(times, n=10)[-1] if len(times) > 1 else times[0]:.3f}"
    )
    print(f"failover_s p50={p50:.3f} max={max(times):.3f} stale_writes_accepted={stale}")


if __name__ == "__main__":
    main()
