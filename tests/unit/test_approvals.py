"""Maker-checker: destructive changes need a second identity; requests
expire; every step is an event; nothing happens before the approval."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr

from tests.fakes import FakeAgent
from warmcache.config import AuthConfig, TokenConfig
from warmcache.model import Mode, PoolInstance
from warmcache.service import WarmCache
from warmcache.web import create_app
from warmcache.web.auth import Authenticator

ALICE, BOB, CAROL = "alice-token", "bob-token", "carol-token"


@pytest.fixture
def client(service: WarmCache) -> FlaskClient:
    service.rules.put(
        "az1", "small", {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 3}
    )
    service.run_cycle()
    auth = Authenticator(
        AuthConfig(
            tokens=(
                TokenConfig(name="alice", role="admin", token=SecretStr(ALICE)),
                TokenConfig(name="bob", role="admin", token=SecretStr(BOB)),
                TokenConfig(name="carol", role="user", token=SecretStr(CAROL)),
            )
        )
    )
    app: Flask = create_app(service, auth)
    return app.test_client()


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ask(client: FlaskClient, token: str, action: str, **params: Any) -> Any:
    return client.post(
        "/v1/requests", headers=as_(token), json={"action": action, "params": params}
    )


def pooled(service: WarmCache) -> list[PoolInstance]:
    kvs, _ = service.store.range(service.keys.pool_dir("az1"))
    return [PoolInstance.model_validate_json(kv.value) for kv in kvs]


def test_purge_needs_a_second_admin(
    client: FlaskClient, service: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    reply = ask(client, ALICE, "purge_pool", az="az1", flavor="small")
    assert reply.status_code == 202
    rid = reply.get_json()["request"]["id"]
    assert len(pooled(service)) == 6  # asked, nothing done
    refused = client.post(f"/v1/requests/{rid}/approve", headers=as_(ALICE))
    assert refused.status_code == 403 and refused.get_json()["error"] == "approval_refused"
    assert client.post(f"/v1/requests/{rid}/approve", headers=as_(CAROL)).status_code == 403
    done = client.post(f"/v1/requests/{rid}/approve", headers=as_(BOB)).get_json()["request"]
    assert done["state"] == "executed" and done["result"]["purged"] == 6
    assert done["approved_by"] == "bob" and done["asked_by"] == "alice"
    assert pooled(service) == [] and all(not a.vms for a in agents.values())
    again = client.post(f"/v1/requests/{rid}/approve", headers=as_(BOB))
    assert again.status_code == 409 and again.get_json()["error"] == "request_conflict"
    steps = [e.type for e in reversed(service.events.recent(type_prefix="request."))]
    assert steps == ["request.created", "request.refused", "request.approved", "request.executed"]


def test_requests_expire(client: FlaskClient, service: WarmCache) -> None:
    rid = ask(client, ALICE, "delete_rule", az="az1", flavor="small").get_json()["request"]["id"]
    service.clock.advance(service.config.requests_ttl_s + 1)  # type: ignore[attr-defined]
    listed = client.get("/v1/requests", headers=as_(CAROL)).get_json()["requests"]
    assert [r["state"] for r in listed] == ["expired"]
    reply = client.post(f"/v1/requests/{rid}/approve", headers=as_(BOB))
    assert reply.status_code == 409 and reply.get_json()["detail"]["state"] == "expired"
    assert service.rules.get("az1", "small") is not None


def test_delete_rule_and_drain_take_effect_on_approval(
    client: FlaskClient, service: WarmCache
) -> None:
    target = pooled(service)[0].hypervisor
    on_host = {vm.name for vm in pooled(service) if vm.hypervisor == target}
    rid = ask(client, ALICE, "drain_hypervisor", hypervisor=target).get_json()["request"]["id"]
    client.post(f"/v1/requests/{rid}/approve", headers=as_(BOB))
    got = service.acquire("small", "az1", 6 - len(on_host), Mode.BEST_EFFORT)
    assert not on_host & {vm.name for vm in got}  # a drained host's VMs are not handed out
    service.rules.put("az1", "small", {"max_instance_per_cycle": 6, "total_instances": 12})
    service.run_cycle()
    assert not any(
        vm.hypervisor == target for vm in pooled(service) if vm.name not in on_host
    )  # and nothing new is built there
    rid = ask(client, BOB, "delete_rule", az="az1", flavor="small").get_json()["request"]["id"]
    assert client.post(f"/v1/requests/{rid}/approve", headers=as_(ALICE)).status_code == 200
    assert service.rules.get("az1", "small") is None


@pytest.mark.parametrize(
    "body",
    [
        {"action": "format_disks", "params": {}},
        {"action": "purge_pool", "params": {"az": "az1"}},
        {"action": "drain_hypervisor", "params": {"hypervisor": "../x"}},
        {"action": "purge_pool", "params": {"az": "az1", "flavor": "small", "now": "yes"}},
    ],
)
def test_bad_requests_are_refused_and_change_nothing(
    client: FlaskClient, service: WarmCache, body: dict[str, Any]
) -> None:
    reply = client.post("/v1/requests", headers=as_(ALICE), json=body)
    assert reply.status_code == 400 and reply.get_json()["error"] == "invalid_request"
    assert client.get("/v1/requests", headers=as_(ALICE)).get_json()["requests"] == []
    assert client.post("/v1/requests/nope/approve", headers=as_(BOB)).status_code == 404


def test_an_approved_request_whose_instance_died_is_taken_over_and_ends(
    make_service: Any, agents: dict[str, FakeAgent], clock: Any
) -> None:
    """Issue 28, item 6: an instance SIGKILLed 3 s into an approved
    purge_pool left it 'approved' for ever (2 of 60 VMs purged), and a
    second approval was 409."""
    from warmcache.approvals import LEASE_S, MAX_ATTEMPTS, ChangeRequest

    dead, alive = make_service(node="wc-dead"), make_service(node="wc-alive")
    dead.rules.put("az1", "small", {"max_instance_per_cycle": 6, "total_instances": 6})
    dead.run_cycle()
    asked = dead.approvals.ask("purge_pool", {"az": "az1", "flavor": "small"}, "alice")
    # What the dead instance left: approved, its lease running, one VM purged.
    key = dead.keys.request(asked.id)
    left = asked.model_copy(
        update={
            "state": "approved",
            "approved_by": "bob",
            "runner": "wc-dead",
            "lease_until": clock.now() + LEASE_S,
            "attempts": 1,
        }
    )
    dead.store.put(key, left.model_dump_json())
    alive.approvals.resume_job()
    assert alive.approvals.get(asked.id).state == "approved"  # its lease still runs
    clock.advance(LEASE_S)
    alive.approvals.resume_job()
    done = alive.approvals.get(asked.id)
    assert (done.state, done.runner, done.attempts) == ("executed", "wc-alive", 2)
    assert pooled(alive) == []  # the purge went to the end
    # A request that never finishes, run after run, ends failed with why.
    stuck = left.model_copy(update={"id": "stuck1", "attempts": MAX_ATTEMPTS, "lease_until": 0.0})
    dead.store.put(dead.keys.request("stuck1"), stuck.model_dump_json())
    alive.approvals.resume_job()
    ended = ChangeRequest.model_validate(alive.approvals.get("stuck1").model_dump())
    assert ended.state == "failed" and "never finished" in str(ended.result)
