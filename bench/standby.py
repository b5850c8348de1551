"""Standby states on real guests: what each costs the host and adds to an
acquisition.

    .venv/bin/python bench/standby.py [--vms 4]   (root)

Starts libvirtd if it is not running (stopped again by PID), prepares the
guest image, runs one ``warmcache-agent`` on qemu:///system heartbeating
into a SQLite store, and an in-process ``WarmCache`` leading it. For each
standby state (running, paused, saved), in one run: the rule is set to that
state, a cycle builds ``--vms`` real guests and puts them in it (the time
to do so from the ``vm.standby`` events), the host memory each pooled VM
holds is read (its QEMU process's RSS; a saved VM has none) with the size
of its saved image, then the VMs are acquired one at a time through
``WarmCache.acquire`` (claim to hand-out as the caller sees it: resume and
health probe included) and deleted. Last line:

    standby running_p50_ms=<a> paused_p50_ms=<b> saved_p50_ms=<c>
            running_host_mib=<d> paused_host_mib=<e> saved_host_mib=<f>
"""

from __future__ import annotations

import argparse
import atexit
import glob
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from warmcache.adapters.agent_client import AgentClient
from warmcache.adapters.file_catalog import FileFlavorCatalog, image_toml
from warmcache.adapters.log_alerts import LogAlerts
from warmcache.adapters.sqlite_events import SqliteEvents
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import SystemClock
from warmcache.config import ServiceConfig
from warmcache.ports import HostAgent
from warmcache.service import WarmCache
from warmcache_agent.guest import agent_config_toml, build_image, default_cache
from warmcache_agent.libvirtd import Libvirtd

STATES = ("running", "paused", "saved")
FLAVORS = '[flavors.tiny]\nvcpus = 1\nmemory_mib = 128\ndisk_gib = 1\nimage_id = "busybox"\n'


def qemu_rss_mib(vm: str) -> float:
    """Resident memory of the QEMU process running ``vm`` (0: none runs)."""
    found = subprocess.run(
        ["pgrep", "-f", f"guest={vm},"], capture_output=True, text=True, check=False
    ).stdout.split()
    total = 0.0
    for pid in found:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def saved_image_mib(vm: str) -> float:
    return sum(os.path.getsize(p) for p in glob.glob(f"/var/lib/libvirt/qemu/save/{vm}.save")) / (
        1 << 20
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="warmcache-standby-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    daemons = Libvirtd(work / "libvirtd").ensure()
    agent = None
    service = None
    clients: dict[str, HostAgent] = {}
    results: dict[str, dict[str, float]] = {}
    try:
        cache = default_cache()
        image = build_image(cache, "v1", image_id="busybox")
        config = work / "agent.toml"
        config.write_text(
            agent_config_toml(
                hypervisor="bench", rack="r1", az="az1", memory_mib=4096, image_dirs=[cache]
            )
            + f'[inventory]\nkind = "sqlite"\npath = "{work / "store.db"}"\nprefix = "wc"\n'
        )
        sock = work / "agent.sock"
        command = ["-m", "warmcache_agent", "--socket", str(sock), "--config", str(config)]
        agent = subprocess.Popen(
            [sys.executable, *command],
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        (work / "flavors.toml").write_text(FLAVORS + image_toml(image))
        clock = SystemClock()
        store = SqliteStore(work / "store.db", clock=clock)
        service = WarmCache(
            config=ServiceConfig(node="bench", prefix="wc", build_concurrency=args.vms),
            store=store,
            alerts=LogAlerts(),
            catalog=FileFlavorCatalog(work / "flavors.toml"),
            events=SqliteEvents(work / "events.db"),
            agent_for=lambda e: clients.setdefault(e, AgentClient(e, timeout_s=300)),
            clock=clock,
            rng=random.Random(1),
        )
        deadline = time.monotonic() + 60
        while service.hosts.catch_up() or not service.hosts.hosts():
            if time.monotonic() > deadline:
                raise SystemExit("the agent did not heartbeat")
            time.sleep(0.1)
        for state in STATES:
            service.rules.put(
                "az1",
                "tiny",
                {
                    "total_instances": args.vms,
                    "max_instance_per_cycle": args.vms,
                    "standby": state,
                },
            )
            marker = time.time()
            report = service.run_cycle()
            if report is None or report.failed:
                raise SystemExit(f"{state}: the cycle failed: {report and report.failed}")
            parked = [
                e.fields["duration_s"]
                for e in service.events.recent(1000, "vm.standby")
                if e.at >= marker
            ]
            names = [
                kv.key.rsplit("/", 1)[1] for kv in store.range(service.keys.pool_dir("az1"))[0]
            ]
            rss = [qemu_rss_mib(n) for n in names]
            images = [saved_image_mib(n) for n in names]
            latencies = []
            for _ in names:
                started = time.perf_counter()
                [vm] = service.acquire("tiny", "az1", 1, "best-effort")
                latencies.append((time.perf_counter() - started) * 1000)
                if vm.standby != "running":
                    raise SystemExit(f"{vm.name} handed out {vm.standby}")
                clients[next(iter(clients))].delete(vm.name)
            results[state] = {
                "p50": statistics.median(latencies),
                "max": max(latencies),
                "host_mib": statistics.mean(rss),
                "image_mib": statistics.mean(images),
                "park_s": statistics.median(parked) if parked else 0.0,
            }
            r = results[state]
            print(
                f"{state:8s} acquire p50 {r['p50']:7.1f} ms  max {r['max']:7.1f} ms  "
                f"qemu RSS {r['host_mib']:6.1f} MiB/VM  saved image {r['image_mib']:6.1f} MiB/VM  "
                f"into the state {r['park_s'] * 1000:6.0f} ms/VM",
                flush=True,
            )
        service.rules.put(
            "az1", "tiny", {"total_instances": 0, "max_instance_per_cycle": 1, "enabled": False}
        )
    finally:
        if service is not None:
            service.stop()
        if agent is not None:
            os.kill(agent.pid, signal.SIGTERM)
            agent.wait(timeout=30)
        daemons.stop()
    print(
        "standby "
        + " ".join(f"{s}_p50_ms={results[s]['p50']:.1f}" for s in STATES)
        + " "
        + " ".join(f"{s}_host_mib={results[s]['host_mib']:.1f}" for s in STATES)
    )


if __name__ == "__main__":
    main()
