"""Real guests: define-to-ready time per guest, each booting its own root
disk made from an image, with the host's image cache cold and warm; and N
guests in parallel.

    .venv/bin/python bench/realvm.py [--sequential 3] [--parallel 10]   (root)

Starts libvirtd if it is not running (stopped again by PID), builds the test
image (Debian's cloud kernel, a busybox root disk: agent/guest.py), runs one
``warmcache-agent`` on qemu:///system with an empty image cache and asks it,
over its socket, to create guests: each create returns when the guest
printed its readiness marker, so its duration is define-to-ready as a caller
of the agent sees it (the image fetched and verified, the guest's root disk
made as a qcow2 overlay of it, its seed, the define, the boot). The first
guest finds the cache cold (its fetch time is printed beside it); then
``--sequential`` guests one at a time with the cache warm (then deleted),
then ``--parallel`` guests at once (then deleted). Last line:

    realvm define_to_ready_s p50=<x> max=<y> parallel_n=<n> parallel_s=<z>
        root=image cache=warm cold_fetch_s=<s> [recycle_p50_s=<r> recycle_ratio=<q>]

(one line; p50 and max over the warm sequential guests. ``--recycle N``:
one guest recycled N times through the agent, as the release worker does
for a pool with ``on_release = "recycle"``: its time against the warm
build's.)
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
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
from warmcache.images import Image
from warmcache.model import Flavor
from warmcache.ports import VmSpec
from warmcache_agent.guest import agent_config_toml, build_image, default_cache
from warmcache_agent.libvirtd import Libvirtd

TINY = Flavor(name="tiny", vcpus=1, memory_mib=128, disk_gib=1, image_id="bench")


def timed_create(client: AgentClient, name: str, image: Image) -> tuple[float, float]:
    """Define-to-ready seconds, and the seconds of it spent fetching the image."""
    started = time.monotonic()
    vm = {"name": name, "flavor": TINY.model_dump(mode="json"), "image": image.model_dump()}
    reply = client.call({"op": "create", "vm": vm})
    if not reply["healthy"] or reply.get("image_version") != "bench":
        raise SystemExit(f"{name} came up unhealthy or not from its image: {reply}")
    return time.monotonic() - started, float(reply.get("image_fetch_s", 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequential", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=10)
    parser.add_argument(
        "--recycle",
        type=int,
        default=0,
        help="also recycle one guest this many times (a VM given back to a pool that reuses "
        "VMs: a fresh root disk, a new seed, a boot) and compare with a build",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="warmcache-realvm-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    daemons = Libvirtd(work / "libvirtd").ensure()
    agent = None
    try:
        cache = default_cache()
        image = build_image(cache, "bench", image_id="bench")
        config = work / "agent.toml"
        config.write_text(
            agent_config_toml(
                hypervisor="bench",
                rack="r1",
                az="az1",
                memory_mib=200 * max(args.parallel, 1),
                image_dirs=[cache],
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
        name = f"bench-{uuid.uuid4().hex[:8]}"
        cold_s, cold_fetch_s = timed_create(client, name, image)
        print(
            f"guest 0 (cache cold): define-to-ready {cold_s:.2f} s, of which fetching "
            f"{image.size_bytes / 2**20:.1f} MiB image + boot files {cold_fetch_s:.2f} s",
            flush=True,
        )
        client.delete(name)
        times = []
        for i in range(args.sequential):
            name = f"bench-{uuid.uuid4().hex[:8]}"
            took, fetched = timed_create(client, name, image)
            times.append(took)
            print(f"guest {i + 1}: define-to-ready {took:.2f} s (cache warm)", flush=True)
            assert fetched == 0.0, "the image was fetched again"
            client.delete(name)
        recycles: list[float] = []
        if args.recycle:
            name = f"bench-{uuid.uuid4().hex[:8]}"
            timed_create(client, name, image)
            spec = VmSpec(name, TINY, image=image)
            for i in range(args.recycle):
                started = time.monotonic()
                status = client.recycle(spec)
                recycles.append(time.monotonic() - started)
                if not status.healthy or status.image_version != "bench":
                    raise SystemExit(f"{name} came back unhealthy from its recycle: {status}")
                print(f"recycle {i + 1}: {recycles[-1]:.2f} s", flush=True)
            client.delete(name)
        names = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(args.parallel)]
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=max(args.parallel, 1)) as pool:
            each = [t for t, _ in pool.map(lambda n: timed_create(client, n, image), names)]
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
        f"parallel_n={args.parallel} parallel_s={parallel_s:.2f} root=image cache=warm "
        f"cold_fetch_s={cold_fetch_s:.2f}"
        + (
            f" recycle_p50_s={statistics.median(recycles):.2f} "
            f"recycle_ratio={statistics.median(recycles) / statistics.median(times):.2f}"
            if recycles
            else ""
        )
    )


if __name__ == "__main__":
    main()
