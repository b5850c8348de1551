"""Hosts and capacity (issue 27, part 2): ``GET /v1/hosts``,
``/v1/hosts/<hypervisor>`` and ``/v1/capacity`` over simulated hosts, and
the rollups kept by ``FleetView`` as hosts change, die and come back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.fakes import FakeAgent
from warmcache.clock import ManualClock
from warmcache.drains import Drain
from warmcache.model import PoolInstance
from warmcache.service import WarmCache
from warmcache.web import create_app


@pytest.fixture
def svc(make_service: Callable[..., WarmCache]) -> WarmCache:
    return make_service()


@pytest.fixture
def http(svc: WarmCache) -> FlaskClient:
    return create_app(svc).test_client()


def get(http: FlaskClient, path: str, status: int = 200) -> Any:
    reply = http.get(path)
    assert reply.status_code == status, reply.get_json()
    return reply.get_json()


def on_host(agents: dict[str, FakeAgent], hv: str) -> FakeAgent:
    [agent] = [a for a in agents.values() if a.current_facts().hypervisor == hv]
    return agent


def fill(svc: WarmCache) -> list[PoolInstance]:
    svc.rules.put("az1", "small", {"max_instance_per_cycle": 6, "total_instances": 6})
    svc.run_cycle()
    kvs, _ = svc.store.range(svc.keys.pool_dir("az1"))
    return [PoolInstance.model_validate_json(kv.value) for kv in kvs]


def test_a_host_shows_its_capacity_booked_free_and_vms_by_state(
    svc: WarmCache, http: FlaskClient
) -> None:
    vms = fill(svc)
    hv = vms[0].hypervisor
    here = [v for v in vms if v.hypervisor == hv]
    small = svc.catalog.get("small")
    assert small is not None
    host = get(http, f"/v1/hosts/{hv}")
    assert (host["az"], host["rack"], host["status"]) == ("az1", vms[0].rack, "up")
    assert host["vms"] == {"ready": len(here)}
    vcpus = host["capacity"]["vcpus"]
    assert vcpus == {"total": 16, "booked": small.vcpus * len(here), "free": 16 - vcpus["booked"]}
    assert host["heartbeat"]["alive"] is True and host["drain"] is None
    assert get(http, "/v1/hosts/nope", 404)["error"] == "unknown_hypervisor"


def test_capacity_rolls_up_per_rack_and_az_and_follows_every_change(
    svc: WarmCache, http: FlaskClient, agents: dict[str, FakeAgent]
) -> None:
    vms = fill(svc)
    small = svc.catalog.get("small")
    assert small is not None
    [az1] = get(http, "/v1/capacity?az=az1")["azs"]
    assert (az1["hosts"], len(az1["racks"])) == (6, 3)
    assert az1["capacity"]["vcpus"] == {
        "total": 6 * 16,
        "booked": 6 * small.vcpus,
        "free": 6 * 16 - 6 * small.vcpus,
    }
    assert sum(r["capacity"]["vcpus"]["booked"] for r in az1["racks"]) == 6 * small.vcpus
    everything = get(http, "/v1/capacity")["azs"]
    assert [a["az"] for a in everything] == ["az1", "az2"]

    # A host dies: it leaves the rack's capacity, and is reported unreachable
    # (with its VMs) until it comes back.
    dead_hv = vms[0].hypervisor
    dead = on_host(agents, dead_hv)
    dead.withdraw()
    [az1] = get(http, "/v1/capacity?az=az1")["azs"]
    [rack] = [r for r in az1["racks"] if r["rack"] == vms[0].rack]
    assert (rack["hosts"], rack["unreachable"], az1["hosts"]) == (1, 1, 5)
    host = get(http, f"/v1/hosts/{dead_hv}")
    assert (host["status"], host["heartbeat"]["alive"]) == ("unreachable", False)
    assert host["vms"]["ready"] >= 1
    dead.attach(svc.store, "wc")
    [az1] = get(http, "/v1/capacity?az=az1")["azs"]
    assert (az1["hosts"], az1["unreachable"]) == (6, 0)
    assert get(http, f"/v1/hosts/{dead_hv}")["status"] == "up"


def test_drained_hosts_and_racks_are_shown(svc: WarmCache, http: FlaskClient) -> None:
    svc.store.put(svc.keys.drain("az1-r1-h1"), Drain(at=5.0, by="ops").model_dump_json())
    svc.store.put(
        svc.keys.rack_drain("az1", "az1-r2"), Drain(evacuate="as_acquired").model_dump_json()
    )
    svc.drains.catch_up()
    host = get(http, "/v1/hosts/az1-r1-h1")
    assert host["status"] == "drained"
    assert host["drain"] == {"scope": "host", "evacuate": "now", "at": 5.0, "by": "ops"}
    assert get(http, "/v1/hosts/az1-r2-h2")["drain"]["scope"] == "rack"
    [az1] = get(http, "/v1/capacity?az=az1")["azs"]
    assert {r["rack"]: r["drained"] for r in az1["racks"]} == {
        "az1-r1": 1,
        "az1-r2": 2,
        "az1-r3": 0,
    }


def test_hosts_are_paged_in_az_and_name_order_and_filtered(
    svc: WarmCache, http: FlaskClient
) -> None:
    names: list[str] = []
    after = ""
    while True:
        page = get(http, f"/v1/hosts?limit=4{after}")
        names += [h["hypervisor"] for h in page["hosts"]]
        if page["next"] is None:
            break
        after = f"&after={page['next']}"
    assert len(names) == 12 and names == sorted(names)
    rack = get(http, "/v1/hosts?az=az2&rack=az2-r3")["hosts"]
    assert [h["hypervisor"] for h in rack] == ["az2-r3-h1", "az2-r3-h2"]
    assert get(http, "/v1/hosts?limit=0", 400)["error"] == "invalid_request"
    assert get(http, "/v1/hosts?after=no-slash", 400)["error"] == "invalid_request"
    assert get(http, "/v1/hosts?bogus=1", 400)["error"] == "invalid_request"


def test_a_dead_host_with_nothing_left_on_it_leaves_the_view(
    svc: WarmCache, http: FlaskClient, agents: dict[str, FakeAgent], clock: ManualClock
) -> None:
    on_host(agents, "az2-r1-h1").withdraw()  # no VMs were ever on it
    [az2] = get(http, "/v1/capacity?az=az2")["azs"]
    assert (az2["hosts"], az2["unreachable"]) == (5, 0)
    assert "az2-r1-h1" not in [h["hypervisor"] for h in get(http, "/v1/hosts?az=az2")["hosts"]]
    assert get(http, "/v1/hosts/az2-r1-h1", 404)["error"] == "unknown_hypervisor"
