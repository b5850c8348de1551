"""A cluster-provisioning service that embeds warmcache.

It holds one ``WarmCache`` for its lifetime (explicit start/stop), and for
each cluster it is asked for, acquires a rack-aware set of VMs from the pool
in one call: either every VM is on a different rack, or nothing is claimed
and the service falls back (here: it says it would provision cold).

    python examples/cluster_provisioner.py \
        --config ~/.local/share/warmcache/quickstart/instance-1.toml

against a running ``warmcache quickstart``. The embedded instance joins no
election and polls no health by default (``--join`` to take part).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from warmcache import Mode, NoCapacity, WarmCache


def provision_cluster(
    cache: WarmCache, name: str, size: int, flavor: str, az: str
) -> list[Any] | None:
    try:
        vms = cache.acquire(
            flavor, az, size, Mode.RACK_AWARE, requester=f"cluster-provisioner/{name}"
        )
    except NoCapacity as exc:
        print(
            f"{name}: no rack-aware set of {size} now ({exc.ready} ready on {exc.racks} "
            f"racks); provisioning it cold instead"
        )
        return None
    for vm in vms:
        print(f"{name}: {vm.name} on rack {vm.rack}, hypervisor {vm.hypervisor}")
    return vms


def main() -> None:
    parser = argparse.ArgumentParser(description="Provision clusters from warm pools.")
    parser.add_argument("--config", required=True, help="a warmcache service config")
    parser.add_argument("--clusters", type=int, default=2)
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument("--flavor", default="small")
    parser.add_argument("--az", default="az1")
    parser.add_argument(
        "--join", action="store_true", help="also take part in build cycles and health polling"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("WARMCACHE_SERVICE__NODE", f"provisioner-{os.getpid()}")
    if not args.join:
        os.environ.setdefault("WARMCACHE_SERVICE__RUN_BUILDS", "false")
        os.environ.setdefault("WARMCACHE_SERVICE__RUN_HEALTH", "false")
    cache = WarmCache.from_config(args.config).start()
    try:
        for i in range(args.clusters):
            provision_cluster(cache, f"es-{i + 1}", args.size, args.flavor, args.az)
    finally:
        cache.close()


if __name__ == "__main__":
    main()
