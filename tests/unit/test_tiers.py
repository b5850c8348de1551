"""Tiers in one pool (issue 29): the leader keeps each standby tier at its
target, parking and waking between them (an earlier leader's half-done
move settled by the next); acquisitions take running VMs first, then
paused, then saved, all or nothing across tiers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.fakes import FakeAgent
from warmcache.builders.tiers import tier_moves
from warmcache.client import AsyncClient, Client
from warmcache.clock import ManualClock
from warmcache.errors import InvalidRequest, NoCapacity
from warmcache.layout import Stored
from warmcache.model import InstanceState, PoolInstance, Tiers
from warmcache.schemas import Vm
from warmcache.service import WarmCache
from warmcache.web import create_app


def pool(service: WarmCache) -> list[PoolInstance]:
    kvs, _ = service.store.range(service.keys.pool_dir("az1"))
    return [PoolInstance.model_validate_json(kv.value) for kv in kvs]


def mix(service: WarmCache) -> dict[str, int]:
    return dict(Counter(r.standby for r in pool(service) if r.state is InstanceState.READY))


def put_rule(service: WarmCache, **tiers: int) -> None:
    total = sum(tiers.values())
    service.rules.put(
        "az1",
        "small",
        {"max_instance_per_cycle": total, "total_instances": total, "tiers": tiers},
    )


def woken(agents: dict[str, FakeAgent]) -> list[str]:
    return [c for a in agents.values() for c in a.calls if c.endswith(" running")]


def test_the_leader_keeps_each_tier_at_its_target(service: WarmCache) -> None:
    put_rule(service, running=2, paused=3, saved=1)
    service.run_cycle()
    assert mix(service) == {"running": 2, "paused": 3, "saved": 1}
    [summary] = service.pools()
    assert summary.standby == {"paused": 3, "running": 2, "saved": 1}
    assert summary.tier_targets == {"running": 2, "paused": 3, "saved": 1}
    service.acquire("small", "az1", 2, "best-effort")
    service.run_cycle()  # two new ones are built (running) and stay running
    assert mix(service) == {"running": 2, "paused": 3, "saved": 1}
    put_rule(service, running=1, paused=1, saved=4)  # the mix changes: VMs move
    service.run_cycle()
    assert mix(service) == {"running": 1, "paused": 1, "saved": 4}


def test_acquisitions_take_running_then_paused_then_saved(
    service: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    put_rule(service, running=2, paused=2, saved=2)
    service.run_cycle()
    for agent in agents.values():
        agent.calls.clear()
    first = service.acquire("small", "az1", 2, "best-effort")
    assert woken(agents) == []  # the two running ones: nothing to wake
    assert {vm.name for vm in first}.isdisjoint({r.name for r in pool(service)})
    assert mix(service) == {"paused": 2, "saved": 2}
    second = service.acquire("small", "az1", 2, "best-effort")
    assert len(woken(agents)) == 2 and mix(service) == {"saved": 2}  # the paused ones
    assert all(vm.standby == "running" for vm in [*first, *second])


def test_a_request_across_tiers_gets_all_its_vms_or_none(
    service: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    put_rule(service, running=1, paused=1, saved=2)
    service.run_cycle()
    with pytest.raises(NoCapacity):
        service.acquire("small", "az1", 5, "best-effort")
    assert mix(service) == {"running": 1, "paused": 1, "saved": 2}  # nothing taken
    assert woken(agents) == []  # nor woken
    got = service.acquire("small", "az1", 4, "best-effort")
    assert len(got) == 4 and mix(service) == {}
    assert all(vm.standby == "running" for vm in got)


def test_a_move_an_earlier_leader_left_half_done_is_settled_by_the_next(
    make_service: Callable[..., Any], agents: dict[str, FakeAgent], clock: ManualClock
) -> None:
    first: WarmCache = make_service(node="one")
    put_rule(first, running=1, paused=2)
    first.run_cycle()
    # the first leader took a VM out to park it and died before its agent answered
    victim = next(r for r in pool(first) if r.standby == "running")
    first.store.put(
        first.keys.pool("az1", victim.name),
        victim.with_state(InstanceState.PARKING).model_dump_json(),
    )
    first.stop()
    second: WarmCache = make_service(node="two", leader_ttl_s=5)
    clock.advance(10)  # the first one's lock ran out
    assert second.run_cycle() is not None
    assert {r.state for r in pool(second)} == {InstanceState.READY}  # nothing stuck parking
    assert mix(second) == {"running": 1, "paused": 2}
    assert len(second.acquire("small", "az1", 3, "best-effort")) == 3


def _stored(
    name: str, standby: str, state: InstanceState = InstanceState.READY
) -> Stored[PoolInstance]:
    rec = PoolInstance(
        name=name,
        az="az1",
        flavor="small",
        hypervisor="hv",
        rack="r",
        state=state,
        created_at=0.0,
        standby=standby,  # type: ignore[arg-type]
    )
    return Stored(f"k/{name}", 1, rec)


def test_moves_come_from_the_nearest_tier_and_surplus_waits_saved() -> None:
    items = [_stored("a", "running"), _stored("b", "running"), _stored("c", "saved")]
    moves = tier_moves(items, Tiers(running=1, paused=1, saved=1))
    assert [(i.record.name, t) for i, t in moves] == [("b", "paused")]  # not the saved one
    surplus = tier_moves(items, Tiers(running=1), park_surplus=True)
    assert sorted((i.record.name, t) for i, t in surplus) == [("b", "saved")]
    # a one-state pool: every VM in that state, its surplus too (as before tiers)
    assert [(i.record.name, t) for i, t in tier_moves(items, Tiers(running=1))] == [
        ("c", "running")
    ]


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ({"total_instances": 4, "tiers": {"running": 1, "paused": 1}}, "add up to 2"),
        (
            {"total_instances": 2, "tiers": {"running": 2}, "standby": "paused"},
            "tiers or standby",
        ),
        ({"total_instances": 2, "objective": {"served_at_once": 0.99}}, "sizing"),
        ({"total_instances": 2, "tiers": {"running": "2"}}, "'tiers', 'running'"),
    ],
)
def test_a_bad_mix_is_refused_and_changes_nothing(
    service: WarmCache, rule: dict[str, Any], why: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        service.rules.put("az1", "small", {"max_instance_per_cycle": 2, **rule})
    assert why in str(refused.value.detail())
    assert service.rules.all() == {}


def test_after_a_drop_the_surplus_waits_saved_and_retires_after_decay_after_s(
    service: WarmCache, clock: ManualClock
) -> None:
    """Hysteresis: the target falls at once but the VMs beyond it wait in
    the cheapest tier; a burst that takes them back within decay_after_s
    starts the count afresh; a surplus that lasts retires."""

    def put(running: int, paused: int) -> None:
        total = running + paused
        service.rules.put(
            "az1",
            "small",
            {
                "max_instance_per_cycle": 6,
                "total_instances": total,
                "tiers": {"running": running, "paused": paused},
                "decay_after_s": 600,
            },
        )

    put(2, 4)
    service.run_cycle()
    put(2, 1)  # the target falls from 6 to 3
    service.run_cycle()
    assert mix(service) == {"running": 2, "paused": 1, "saved": 3}  # not retired: saved
    clock.advance(500)
    service.acquire("small", "az1", 3, "best-effort")  # a burst: no surplus any more
    service.run_cycle()
    assert service.store.get(service.keys.surplus("az1", "small")) is None
    clock.advance(500)
    put(1, 0)  # down again: 2 beyond it, counted from now
    service.run_cycle()
    clock.advance(599)
    report = service.run_cycle()
    assert report is not None and not report.retired and len(pool(service)) == 3
    clock.advance(2)
    report = service.run_cycle()
    assert report is not None and report.retired[("az1", "small", "surplus")] >= 1


# --- receipts ----------------------------------------------------------------------------


class _AsyncOverWsgi(httpx.AsyncBaseTransport):
    """AsyncClient against the Flask app in process."""

    def __init__(self, app: Any) -> None:
        self._wsgi = httpx.WSGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        reply = self._wsgi.handle_request(request)
        return httpx.Response(reply.status_code, headers=reply.headers, content=reply.read())


def test_receipts_say_the_tier_the_wait_and_the_latency_split(
    service: WarmCache, clock: ManualClock
) -> None:
    put_rule(service, running=1, paused=1, saved=2)
    service.run_cycle()
    clock.advance(30)  # the VMs wait in the pool
    app = create_app(service)
    web = app.test_client()
    first = web.post(
        "/v1/acquire", json={"flavor": "small", "az": "az1", "count": 1, "mode": "best-effort"}
    )
    [vm] = first.get_json()["vms"]
    assert vm["receipt"]["tier"] == "running" and vm["receipt"]["waited_s"] == 30
    latency = first.get_json()["latency"]
    assert set(latency) == {"select_ms", "commit_ms", "wake_ms", "total_ms"}
    assert latency["total_ms"] >= latency["commit_ms"] >= 0
    assert first.headers["Server-Timing"].startswith("select;dur=")
    assert web.get(f"/v1/vms/{vm['name']}").get_json()["receipt"]["tier"] == "running"
    event = service.events.recent(5, "acquisition")[0].fields
    assert event["tiers"] == {"running": 1} and event["tier"] == "running"
    assert event["waited_s"] == 30 and event["wake_ms"] is not None
    # the client: the next one comes from the paused tier
    http = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://wc")
    [paused] = Client("http://wc", http=http).acquire("small", "az1", 1, "best-effort")
    assert paused.receipt is not None and paused.receipt.tier == "paused"
    assert paused.standby == "running"  # woken before it was handed out

    async def both_saved() -> list[Vm]:
        transport = _AsyncOverWsgi(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://wc") as h:
            return await AsyncClient("http://wc", http=h).acquire("small", "az1", 2, "best-effort")

    saved = asyncio.run(both_saved())
    assert [v.receipt.tier for v in saved if v.receipt] == ["saved", "saved"]
    metrics = web.get("/metrics").get_data(as_text=True)
    for tier in ("running", "paused", "saved"):
        assert f'warmcache_served_vms_total{{az="az1",flavor="small",tier="{tier}"}}' in metrics
    assert 'warmcache_acquire_tier_seconds_count{tier="saved"} 1.0' in metrics
    assert 'warmcache_pool_tier_target_vms{az="az1",flavor="small",tier="saved"} 2.0' in metrics
