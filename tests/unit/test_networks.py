"""Address pools: validation, allocation in the fenced build transaction,
exhaustion, quarantine, and the leader's report of leaked addresses."""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes import FakeAgent, fleet
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.errors import InvalidRequest, NetworkExists
from warmcache.layout import PoolRecords
from warmcache.model import InstanceState, Mode, PoolInstance, StaticNetwork
from warmcache.networks import AddressPool, Held, NetworkBook
from warmcache.service import WarmCache
from warmcache.web import create_app

POOL = {
    "cidrs": ["10.20.0.0/26"],
    "gateway": "10.20.0.1",
    "dns": ["10.0.0.53"],
    "excluded": ["10.20.0.2-10.20.0.9"],
}


@pytest.fixture
def agents(sqlite_store: SqliteStore) -> dict[str, FakeAgent]:
    """Hypervisors with room for 50 small VMs in az1 (the shared fixture's fit 48)."""
    fakes = fleet(("az1", "az2"), vcpus=32, memory_mib=131072)
    for agent in fakes.values():
        agent.attach(sqlite_store, "wc")
    return fakes


def rule(service: WarmCache, total: int, per_cycle: int | None = None) -> None:
    service.rules.put(
        "az1",
        "small",
        {
            "max_instance_per_cycle": per_cycle or total,
            "total_instances": total,
            "min_fault_domain": 1,
        },
    )


def records(service: WarmCache, az: str = "az1") -> list[PoolInstance]:
    return [s.record for s in PoolRecords(service.store, service.keys).read(az)[0]]


def held(service: WarmCache, az: str = "az1") -> dict[str, Held]:
    return service.networks.held(az)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"gateway": "10.30.0.1"}, "gateway 10.30.0.1 is in none of the cidrs"),
        ({"cidrs": ["10.20.0.0/26", "10.20.0.32/27"]}, "overlap"),
        ({"cidrs": ["10.20.0.1/26"]}, "host bits set"),
        ({"excluded": ["10.99.0.1"]}, "not inside one CIDR"),
        ({"cidrs": ["10.20.0.0/26", "fd00::/64"]}, "one IP version"),
        ({"dns": ["not-an-ip"]}, "String should match pattern"),
        ({"excluded": ["10.20.0.9-10.20.0.2"]}, "ends before it starts"),
    ],
)
def test_an_invalid_pool_is_refused_and_nothing_is_stored(
    service: WarmCache, change: dict[str, Any], says: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        service.networks.create("az1", "vrf-a", {**POOL, **change})
    assert says in json.dumps(err.value.detail())
    assert service.networks.all() == {}


def test_pools_of_an_az_may_not_overlap_and_a_change_is_maker_checker(service: WarmCache) -> None:
    service.networks.create("az1", "vrf-a", POOL)
    with pytest.raises(InvalidRequest, match="overlaps vrf-a"):
        service.networks.create(
            "az1",
            "vrf-b",
            {**POOL, "cidrs": ["10.20.0.32/27"], "gateway": "10.20.0.33", "excluded": []},
        )
    service.networks.create("az2", "vrf-a", POOL)  # another AZ: another VRF
    with pytest.raises(NetworkExists):
        service.networks.create("az1", "vrf-a", POOL)
    request = service.approvals.ask(
        "update_network",
        {"az": "az1", "name": "vrf-a", "pool": {**POOL, "dns": ["10.0.0.54"]}},
        "alice",
    )
    assert service.networks.get("az1", "vrf-a") == AddressPool.model_validate(POOL)
    service.approvals.approve(request.id, "bob")
    changed = service.networks.get("az1", "vrf-a")
    assert changed is not None and changed.dns == ("10.0.0.54",)


def test_every_vm_gets_its_own_address_and_an_exhausted_pool_says_no_address(
    service: WarmCache,
) -> None:
    service.networks.create(
        "az1", "vrf-a", {**POOL, "cidrs": ["10.20.0.0/28"], "excluded": ["10.20.0.2-10.20.0.9"]}
    )
    # /28: 14 hosts, less the gateway and 8 excluded: 5 addresses for 7 VMs
    rule(service, 7)
    report = service.run_cycle()
    assert report is not None and report.built[("az1", "small")] == 5
    no_address = [f for f in report.failed if "no_address" in f]
    assert len(no_address) == 2 and any("no_address" in p for p in report.problems)
    built = records(service)
    addresses = [r.addresses[0] for r in built]
    assert len(set(addresses)) == 5 and all(
        ipaddress.ip_address(a) in ipaddress.ip_network("10.20.0.0/28") for a in addresses
    )
    assert {a for a in addresses} & {"10.20.0.1", *(f"10.20.0.{i}" for i in range(2, 10))} == set()
    assert {a: h.vm for a, h in held(service).items()} == {r.addresses[0]: r.name for r in built}
    assert all(r.network == "vrf-a" for r in built)
    [vm] = service.acquire("small", "az1", 1, Mode.BEST_EFFORT)
    assert vm.addresses and vm.addresses[0] in addresses  # handed out with its address


def test_the_address_reaches_the_agent_as_network_config(
    service: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    service.networks.create("az1", "vrf-a", POOL)
    seen: list[StaticNetwork | None] = []
    for agent in agents.values():
        agent.before_create = lambda spec: seen.append(spec.network)
    rule(service, 1)
    service.run_cycle()
    [network] = seen
    assert network is not None and network.prefix == 26 and network.gateway == "10.20.0.1"
    config = json.loads(network.network_config())
    primary = config["ethernets"]["primary"]
    assert config["version"] == 2 and primary["addresses"] == [f"{network.address}/26"]
    assert primary["routes"] == [{"to": "0.0.0.0/0", "via": "10.20.0.1"}]
    assert primary["nameservers"] == {"addresses": ["10.0.0.53"]}


def test_an_address_held_meanwhile_by_another_writer_is_never_shared(
    service: WarmCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cycle's view of the held addresses is stale (another builder took
    the first ones after it read them): the store's compare refuses those,
    and every VM still ends with an address of its own."""
    service.networks.create("az1", "vrf-a", POOL)
    for i in range(10, 16):
        service.store.put(
            service.keys.address("az1", f"10.20.0.{i}"),
            Held(vm=f"other-{i}", network="vrf-a", since=0).model_dump_json(),
        )
    monkeypatch.setattr(NetworkBook, "held", lambda self, az: {})
    rule(service, 6)
    report = service.run_cycle()
    assert report is not None and report.built[("az1", "small")] == 6
    addresses = [r.addresses[0] for r in records(service)]
    assert len(set(addresses)) == 6 and not {f"10.20.0.{i}" for i in range(10, 16)} & set(addresses)
    owners = Counter(h.vm for h in held(service).values())
    assert all(n == 1 for n in owners.values())


def test_fifty_builds_across_two_leaders_one_of_them_stale_share_no_address(
    make_service: Any, clock: Any
) -> None:
    a, b = make_service(node="wc-a", leader_ttl_s=5), make_service(node="wc-b", leader_ttl_s=5)
    a.networks.create("az1", "vrf-a", POOL)
    rule(a, 50, per_cycle=25)
    lead_a = a.election.try_acquire()
    assert lead_a is not None
    stale = a.election.writer(lead_a)
    clock.advance(6)  # a pauses past its TTL: b takes over and builds
    report_b = b.run_cycle()
    assert report_b is not None and report_b.built[("az1", "small")] == 25
    late = a.duty.cycle.run(stale)  # a wakes up and builds with its old token: fenced out
    assert late.leadership_lost and not sum(late.built.values())
    report_b2 = b.run_cycle()
    assert report_b2 is not None, report_b2
    assert report_b2.built[("az1", "small")] == 25, (report_b2.failed, report_b2.problems)
    built = records(a)
    assert len(built) == 50
    addresses = [r.addresses[0] for r in built]
    assert len(set(addresses)) == 50
    assert {a: h.vm for a, h in held(a).items()} == {r.addresses[0]: r.name for r in built}


def purge_one(service: WarmCache) -> PoolInstance:
    victim = records(service)[0]
    request = service.approvals.ask("purge_pool", {"az": "az1", "flavor": "small"}, "alice")
    service.approvals.approve(request.id, "bob")
    return victim


def test_a_purged_vms_address_waits_out_its_quarantine(service: WarmCache, clock: Any) -> None:
    service.networks.create("az1", "vrf-a", {**POOL, "cidrs": ["10.20.0.0/28"]})
    rule(service, 2)
    service.run_cycle()
    first = {r.addresses[0] for r in records(service)}
    purge_one(service)  # every ready VM of the pool goes
    assert records(service) == []
    quarantined = held(service)
    assert set(quarantined) == first and all(h.state == "quarantined" for h in quarantined.values())
    assert all(h.until == pytest.approx(clock.now() + 600) for h in quarantined.values())
    service.run_cycle()  # within the quarantine: new VMs get other addresses
    second = {r.addresses[0] for r in records(service)}
    assert second and not second & first
    clock.advance(601)
    service.run_cycle()
    freed = service.events.recent(10, "address.freed")
    assert {e.fields["address"] for e in freed} == first
    assert not first & set(held(service))


def test_a_leaked_address_and_an_unheld_one_are_reported_once_and_left_alone(
    service: WarmCache,
) -> None:
    service.networks.create("az1", "vrf-a", POOL)
    rule(service, 1)
    service.run_cycle()
    [vm] = records(service)
    ghost = service.keys.address("az1", "10.20.0.60")
    service.store.put(ghost, Held(vm="ghost", network="vrf-a", since=0).model_dump_json())
    service.store.delete(service.keys.address("az1", vm.addresses[0]))
    service.run_cycle()
    service.run_cycle()
    leaked = service.events.recent(10, "address.leaked")
    unheld = service.events.recent(10, "address.unheld")
    assert [(e.fields["address"], e.fields["vm"]) for e in leaked] == [("10.20.0.60", "ghost")]
    assert [(e.fields["address"], e.fields["vm"]) for e in unheld] == [(vm.addresses[0], vm.name)]
    assert service.store.get(ghost) is not None  # nothing is freed silently
    assert {r.state for r in records(service)} == {InstanceState.READY}


def test_a_guest_without_its_address_is_not_handed_out(
    service: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    """The guest's own report (real guests answer with their addresses) must
    include the address on its record; a VM whose guest has another one
    fails its health check and is never acquired."""
    service.networks.create("az1", "vrf-a", POOL)
    rule(service, 2)
    service.run_cycle()
    good, bad = records(service)
    for vm, has in ((good, f"{good.addresses[0]}/26"), (bad, "192.168.7.7/24")):
        next(
            a for a in agents.values() if a.current_facts().hypervisor == vm.hypervisor
        ).guest_addresses[vm.name] = (has,)
    service.health.poll()
    failed = {e.fields["name"]: e.fields["reason"] for e in service.events.recent(10, "health.")}
    assert set(failed) == {bad.name} and "192.168.7.7/24" in failed[bad.name]
    [vm] = service.acquire("small", "az1", 1, Mode.BEST_EFFORT)
    assert vm.name == good.name


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.integers(22, 32),
    gateway_at=st.integers(0, 2**10),
    excluded=st.lists(st.tuples(st.integers(0, 2**10), st.integers(0, 40)), max_size=4),
    v6=st.booleans(),
)
def test_the_size_of_a_pool_is_what_it_can_hand_out(
    prefix: int, gateway_at: int, excluded: list[tuple[int, int]], v6: bool
) -> None:
    if v6:
        network = ipaddress.ip_network(f"fd00::/{prefix + 96}")
    else:
        network = ipaddress.ip_network(f"10.20.0.0/{prefix}")
    span = network.num_addresses
    at = network.network_address
    ranges = [f"{at + s % span}-{at + min(span - 1, s % span + n)}" for s, n in excluded]
    pool = AddressPool(
        cidrs=(str(network),), gateway=str(at + gateway_at % span), excluded=tuple(ranges)
    )
    assert pool.size() == sum(1 for _ in pool.candidates())


def test_a_racks_own_pool_serves_its_vms_and_the_azs_pool_the_others(
    service: WarmCache,
) -> None:
    service.networks.create("az1", "az-wide", POOL)
    service.networks.create(
        "az1", "r1-vrf", {"cidrs": ["10.30.0.0/28"], "gateway": "10.30.0.1", "rack": "az1-r1"}
    )
    service.rules.put(
        "az1", "small", {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 3}
    )
    service.run_cycle()
    built = records(service)
    assert {r.rack for r in built} == {"az1-r1", "az1-r2", "az1-r3"}
    for r in built:
        expected = ("10.30.0.0/28", "r1-vrf") if r.rack == "az1-r1" else ("10.20.0.0/26", "az-wide")
        assert ipaddress.ip_address(r.addresses[0]) in ipaddress.ip_network(expected[0])
        assert r.network == expected[1]


def test_every_pool_of_the_az_is_used_until_all_are_exhausted(service: WarmCache) -> None:
    """Issue 28, item 5: with a second AZ-wide pool added, builds still
    failed no_address, and GET /v1/networks showed each pool's held as
    the whole AZ's count."""
    service.networks.create("az1", "a-first", {"cidrs": ["10.40.0.0/29"], "gateway": "10.40.0.1"})
    service.networks.create("az1", "b-second", {"cidrs": ["10.41.0.0/28"], "gateway": "10.41.0.1"})
    rule(service, 12)  # /29: 5 addresses; /28: 13
    report = service.run_cycle()
    assert report is not None and report.built[("az1", "small")] == 12
    assert not any("no_address" in f for f in report.failed)
    by_pool = Counter(r.network for r in records(service))
    assert by_pool == {"a-first": 5, "b-second": 7}  # the first, then the next
    listed = create_app(service).test_client().get("/v1/networks").get_json()["networks"]
    assert {n["name"]: n["held"] for n in listed} == {"a-first": 5, "b-second": 7}
