"""AsyncClient against a live app over a real socket: the same models and
the same typed errors as Client, and an idempotent acquire."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.live import served
from warmcache import AsyncClient, Client, NoCapacity, PoolSummary, UnknownClaim, UnknownRule, Vm
from warmcache.service import WarmCache
from warmcache.web import create_app


@pytest.fixture
def url(service: WarmCache) -> Iterator[str]:
    service.rules.put(
        "az1", "small", {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 3}
    )
    service.run_cycle()
    with served(create_app(service)) as url:
        yield url


def test_async_client_speaks_the_same_wire(url: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(url) as wc:
            assert (await wc.health()).status == "ok"
            assert (await wc.ready()).ready
            [pool] = await wc.pools()
            assert isinstance(pool, PoolSummary) and pool.ready == 6
            # two concurrent acquisitions of one claim id: one claim
            a, b = await asyncio.gather(
                wc.acquire("small", "az1", 2, "best-effort", claim_id="async-1"),
                wc.acquire("small", "az1", 2, "best-effort", claim_id="async-1"),
            )
            assert all(isinstance(vm, Vm) for vm in a) and {vm.name for vm in a} == {
                vm.name for vm in b
            }
            claim = await wc.claim("async-1")
            assert {vm.name for vm in claim.vms} == {vm.name for vm in a}
            with pytest.raises(NoCapacity) as err:
                await wc.acquire("small", "az1", 5, "best-effort")
            assert err.value.ready == 4
            with pytest.raises(UnknownClaim):
                await wc.claim("nope")
            with pytest.raises(UnknownRule):
                await wc.get_rule("az1", "medium")
            assert (await wc.get_rule("az1", "small")).total_instances == 6
            assert (await wc.explain("az1", "small")).az == "az1"
            assert [r.flavor for r in await wc.rules()] == ["small"]

    asyncio.run(scenario())
    with Client(url) as sync:  # and the blocking client sees what the async one did
        assert sync.pools()[0].ready == 4
        assert sync.claim("async-1").claim_id == "async-1"
