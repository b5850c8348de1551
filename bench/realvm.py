"""Real guests: define-to-ready time per guest, and N guests in parallel.

    .venv/bin/python bench/realvm.py [--sequential 3] [--parallel 10]   (root)

Starts libvirtd if it is not running (stopped again by PID), prepares the
guest image (Debian cloud kernel + busybox initramfs, see agent/guest.py),
runs one ``warmcache-agent`` on qemu:///system and asks it, over its socket,
to create guests: each create returns when the guest printed its readiness
marker, so its duration is define-to-ready as a caller of the agent sees it.
First ``--sequential`` guests one at a time (then deleted), then
``--parallel`` guests at once (then deleted). Last line:

    realvm define_to_ready_s p50=<x> max=<y> parallel_n=<n> parallel_s=<z>
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from warmcache.adapters.agent_client import AgentClient
from warmcache.model import Flavor
from warmcache.ports import VmSpec
from warmcache_agent.guest import agent_config_toml, default_cache, prepare
from warmcache_agent.libvirtd import Libvirtd

TINY = Flavor(name="tiny", vcpus=1, memory_mib=128, disk_gib=1)


def timed_create(client: AgentClient, name: str) -> float:
    started = time.monotonic()
    status = client.create(VmSpec(name, TINY))
    if not status.healthy:
        raise SystemExit(f"{name} came up unhealthy: {status}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequential", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="warmcache-realvm-"))
    daemons = Libvirtd(work / "libvirtd").ensure()
    agent = None
    try:
        image = prepare(default_cache())
        config = work / "agent.toml"
        config.write_text(
            agent_config_toml(
                image,
                hypervisor="bench",
                rack="r1",
                az="az1",
                memory_mib=200 * max(args.parallel, 1),
            )
        )
        sock = work / "agent.sock"
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "warmcache_agent",
                "--socket",
                str(sock),
                "--config",
                str(config),
            ],
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not sock.exists():
            if time.monotonic() > deadline:
                raise SystemExit("the agent did not start")
            time.sleep(0.05)
        client = AgentClient(f"unix:{sock}", timeout_s=600)
        times = []
        for i in range(args.sequential):
            name = f"bench-{uuid.uuid4().hex[:8]}"
            took = timed_create(client, name)
            times.append(took)
            print(f"guest {i + 1}: define-to-ready {took:.2f} s", flush=True)
            client.delete(name)
        names = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(args.parallel)]
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=max(args.parallel, 1)) as pool:
            each = list(pool.map(lambda n: timed_create(client, n), names))
        parallel_s = time.monotonic() - started
        print(
            f"{args.parallel} guests in parallel: all ready after {parallel_s:.2f} s "
            f"(each {min(each):.2f}-{max(each):.2f} s)",
            flush=True,
        )
        for name in names:
            client.delete(name)
    finally:
        if agent is not None:
            os.kill(agent.pid, signal.SIGTERM)
            agent.wait(timeout=30)
        daemons.stop()
    print(
        f"realvm define_to_ready_s p50={statistics.median(times):.2f} max={max(times):.2f} "
        f"parallel_n={args.parallel} parallel_s={parallel_s:.2f}"
    )


if __name__ == "__main__":
    main()
