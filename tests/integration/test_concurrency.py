"""64 concurrent acquirers over 2 started service instances, on a real etcd
and on one SQLite file (§12.1, §12.3): claims group-committed, each
instance preferring its own share of the pool, mixed modes and counts,
some requests no pool could satisfy. No VM handed out twice, every success
satisfies its mode, every failure claimed nothing, none lost."""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from warmcache.bootstrap import build
from warmcache.config import parse_config
from warmcache.errors import ClaimContention, NoCapacity
from warmcache.layout import Keys
from warmcache.model import HostFacts, InstanceState, Mode, PoolInstance
from warmcache.testing.polling import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
RACKS, PER_RACK, VMS_PER_HOST = 6, 3, 4  # 72 VMs on 18 hypervisors


def seed(store: Any, prefix: str) -> set[str]:
    names = set()
    for r in range(RACKS):
        for h in range(PER_RACK):
            hv = f"r{r}-h{h}"
            facts = HostFacts(
                hypervisor=hv,
                rack=f"r{r}",
                az="az1",
                vcpus_total=64,
                vcpus_free=0,
                memory_mib_total=1,
                memory_mib_free=0,
                disk_gib_total=1,
                disk_gib_free=0,
                endpoint=f"unix:/nowhere/{hv}",
            )
            store.put(Keys(prefix).host("az1", hv), facts.model_dump_json())
            for i in range(VMS_PER_HOST):
                vm = PoolInstance(
                    name=f"{hv}-vm{i}",
                    az="az1",
                    flavor="small",
                    rack=f"r{r}",
                    hypervisor=hv,
                    state=InstanceState.READY,
                    created_at=0,
                )
                store.put(Keys(prefix).pool("az1", vm.name), vm.model_dump_json())
                names.add(vm.name)
    return names


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {"kind": "sqlite", "path": str(tmp_path / "store.db")}
    return {"kind": "etcd", "url": request.getfixturevalue("etcd_url")}


def test_64_acquirers_over_2_instances(store_config: dict[str, str], tmp_path: Path) -> None:
    prefix = f"conc-{uuid.uuid4().hex[:8]}"
    instances = []
    for i in range(2):
        config = parse_config(
            {
                "service": {
                    "node": f"wc-{i}",
                    "prefix": prefix,
                    "run_builds": False,
                    "run_health": False,
                    "acquire_attempts": 50,
                    "low_water_ratio": 0.0,
                    "shares_refresh_s": 0.2,
                },
                "store": store_config,
                "catalog": {"path": str(CONFIG_DIR / "flavors.toml")},
                "events": {"kind": "log"},
            },
            environ={},
        )
        instances.append(build(config))
    pooled = seed(instances[0].store, prefix)
    instances[0].rules.put(
        "az1", "small", {"max_instance_per_cycle": 1, "total_instances": len(pooled)}
    )
    try:
        for service in instances:
            service.start()
        wait_for(
            "both instances to share the pool",
            lambda: all(len(s.acquirer.index.instances) == 2 for s in instances),
            10,
        )
        results: list[tuple[Mode, int, list[PoolInstance]]] = []
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()
        barrier = threading.Barrier(64)

        def acquirer(n: int) -> None:
            rng = random.Random(n)
            service = instances[n % 2]
            barrier.wait()
            misses = 0
            while misses < 3:
                mode = rng.choice(list(Mode))
                # one request in ten asks for more distinct racks than exist
                count = RACKS + 1 if rng.random() < 0.1 else rng.randint(1, 3)
                try:
                    got = service.acquire("small", "az1", count, mode, requester=f"client-{n}")
                except NoCapacity:
                    with lock:
                        outcomes["no_capacity"] += 1
                    if count <= RACKS:
                        misses += 1
                    continue
                except ClaimContention:
                    with lock:
                        outcomes["contention"] += 1
                    continue
                with lock:
                    results.append((mode, count, got))
                    outcomes["ok"] += 1

        threads = [threading.Thread(target=acquirer, args=(n,)) for n in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        handed = [vm.name for _, _, vms in results for vm in vms]
        assert len(handed) == len(set(handed)), "a VM was handed out twice"
        for mode, count, vms in results:
            assert len(vms) == count
            if mode is Mode.RACK_AWARE:
                assert len({vm.rack for vm in vms}) == count
            if mode is Mode.HYPERVISOR_AWARE:
                assert len({vm.hypervisor for vm in vms}) == count
        store = instances[0].store
        acquired, _ = store.range(Keys(prefix).acquired_dir())
        left, _ = store.range(Keys(prefix).pool_dir())
        # every failure claimed nothing: what is acquired is exactly what was returned
        assert {kv.key.rsplit("/", 1)[1] for kv in acquired} == set(handed)
        claims = Counter(PoolInstance.model_validate_json(kv.value).claim_id for kv in acquired)
        assert sorted(claims.values()) == sorted(len(vms) for _, _, vms in results)
        assert len(handed) + len(left) == len(pooled)
        assert outcomes["ok"] > 20 and len(left) < 10, outcomes
        batched = sum(s.acquirer.claimer.batches for s in instances)
        print(
            f"outcomes {dict(outcomes)}, handed {len(handed)}, left {len(left)}, "
            f"transactions {batched}"
        )
    finally:
        for service in instances:
            service.close()
