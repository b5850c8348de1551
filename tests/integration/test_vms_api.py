"""The VM lifecycle over HTTP with tokens, through ``Client``,
``AsyncClient`` and the CLI: a user token sees and gives back only the VMs
it holds, an admin any; releases answer 202, repeats are harmless, 404 once
gone; leases and day-2 disks; nothing changes on a refusal."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from tests.live import served
from warmcache import AsyncClient, Client, Forbidden, UnknownClaim, UnknownVm, VmNotHeld
from warmcache.cli import main
from warmcache.config import AuthConfig, TokenConfig
from warmcache.service import WarmCache
from warmcache.web import create_app
from warmcache.web.auth import Authenticator

ADMIN, ALICE, BOB = "admin-token", "alice-token", "bob-token"


@pytest.fixture
def url(make_service: Callable[..., WarmCache]) -> Iterator[str]:
    service = make_service()
    service.rules.put("az1", "small", {"max_instance_per_cycle": 6, "total_instances": 6})
    service.run_cycle()
    auth = Authenticator(
        AuthConfig(
            tokens=(
                TokenConfig(name="ops", role="admin", token=SecretStr(ADMIN)),
                TokenConfig(name="alice", role="user", token=SecretStr(ALICE)),
                TokenConfig(name="bob", role="user", token=SecretStr(BOB)),
            )
        )
    )
    app = create_app(service, auth)
    app.extensions["test.service"] = service
    with served(app) as base:
        yield base


def test_holders_see_and_give_back_their_own_vms_only(url: str) -> None:
    alice, bob, ops = (Client(url, token=t) for t in (ALICE, BOB, ADMIN))
    mine = alice.acquire("small", "az1", 2, "best-effort", lease_s=3600)
    theirs = bob.acquire("small", "az1", 1, "best-effort", claim_id="bob-job")
    assert {v.holder for v in mine} == {"alice"} and all(v.expires_at for v in mine)
    assert alice.vm(mine[0].name).state == "acquired"
    with pytest.raises(UnknownVm):
        alice.vm(theirs[0].name)  # not hers: as if it did not exist
    page = alice.vms()
    assert sorted(v.name for v in page.vms) == sorted(v.name for v in mine)
    with pytest.raises(Forbidden):
        alice.vms(requester="bob")
    assert len(ops.vms(state="acquired").vms) == 3  # an admin sees every VM
    with pytest.raises(Forbidden):
        alice.release(theirs[0].name)
    with pytest.raises(Forbidden):
        alice.release_claim("bob-job")
    assert bob.vm(theirs[0].name).state == "acquired"  # nothing changed
    released = alice.release(mine[0].name)
    assert [v.state for v in released] == ["releasing"]
    assert alice.release(mine[0].name)[0].state == "releasing"  # a repeat: harmless
    raw = httpx.delete(f"{url}/v1/vms/{mine[1].name}", headers={"Authorization": f"Bearer {ALICE}"})
    assert raw.status_code == 202 and raw.json()["vms"][0]["release"]["by"] == "alice"
    assert [v.name for v in ops.release_claim("bob-job")] == [theirs[0].name]
    pooled = next(v.name for v in ops.vms(state="ready").vms)
    with pytest.raises(VmNotHeld):
        ops.release(pooled)
    with pytest.raises(UnknownVm):
        ops.release("no-such-vm")


def test_leases_and_disks_over_http(url: str) -> None:
    alice, bob = Client(url, token=ALICE), Client(url, token=BOB)
    [vm] = alice.acquire("small", "az1", 1, "best-effort", lease_s=60)
    renewed = alice.renew(vm.name, 3600)
    assert renewed.expires_at is not None and vm.expires_at is not None
    assert renewed.expires_at > vm.expires_at
    with pytest.raises(Forbidden):
        bob.renew(vm.name, 10)
    bad = httpx.post(
        f"{url}/v1/vms/{vm.name}/renew",
        json={"lease_s": 0},
        headers={"Authorization": f"Bearer {ALICE}"},
    )
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
    with_disk = alice.attach_disk(vm.name, 8, "metadata")
    assert [(d.target, d.size_gib) for d in with_disk.data_disks] == [("vdb", 8)]
    with pytest.raises(Forbidden):
        bob.attach_disk(vm.name, 1)
    assert alice.detach_disk(vm.name, "vdb").data_disks == []


def test_the_async_client_and_the_cli(url: str) -> None:
    async def run() -> None:
        async with AsyncClient(url, token=ALICE) as wc:
            vms = await wc.acquire("small", "az1", 1, "best-effort", claim_id="a-job")
            assert (await wc.vm(vms[0].name)).holder == "alice"
            assert (await wc.vms()).vms[0].name == vms[0].name
            assert (await wc.release_claim("a-job"))[0].state == "releasing"
            with pytest.raises(UnknownClaim):
                await AsyncClient(url, token=BOB).release_claim("never")

    asyncio.run(run())
    env = {"WARMCACHE_URL": url, "WARMCACHE_TOKEN": ALICE}
    runner = CliRunner()
    got = runner.invoke(main, ["acquire", "small", "az1", "1", "--mode", "best-effort"], env=env)
    assert got.exit_code == 0, got.output
    name = json.loads(got.stdout)["vms"][0]["name"]
    listed = runner.invoke(main, ["vms", "list", "-o", "json"], env=env)
    assert [v["name"] for v in json.loads(listed.stdout)["vms"]] == [name]
    shown = runner.invoke(main, ["vms", "get", name], env=env)
    assert json.loads(shown.stdout)["state"] == "acquired"
    gone = runner.invoke(main, ["vms", "release", name], env=env)
    assert gone.exit_code == 0 and json.loads(gone.stdout)["vms"][0]["state"] == "releasing"
    missing = runner.invoke(main, ["vms", "get", "nope"], env=env)
    assert missing.exit_code == 4 and "unknown_vm" in missing.stderr
