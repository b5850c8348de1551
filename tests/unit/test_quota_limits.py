"""Quotas in the store (issue 27): ``/v1/quotas`` read and changed through
maker-checker, followed by every instance without a restart, seeded from
the config file's ``[[quotas.limits]]`` without undoing an operator's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydantic import SecretStr

from warmcache.config import AuthConfig, QuotaLimit, TokenConfig
from warmcache.errors import QuotaExceeded
from warmcache.service import WarmCache
from warmcache.web import create_app
from warmcache.web.auth import Authenticator

ALICE, BOB, CAROL = "alice-token", "bob-token", "carol-token"
AUTH = AuthConfig(
    tokens=(
        TokenConfig(name="alice", role="admin", token=SecretStr(ALICE)),
        TokenConfig(name="bob", role="admin", token=SecretStr(BOB)),
        TokenConfig(name="carol", role="user", token=SecretStr(CAROL)),
    )
)


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def http(svc: WarmCache) -> FlaskClient:
    return create_app(svc, Authenticator(AUTH)).test_client()


def approve(client: FlaskClient, reply: Any) -> dict[str, Any]:
    assert reply.status_code == 202, reply.get_json()
    request_id = reply.get_json()["request"]["id"]
    done = client.post(f"/v1/requests/{request_id}/approve", headers=as_(BOB))
    assert done.status_code == 200, done.get_json()
    body: dict[str, Any] = done.get_json()["request"]
    assert body["state"] == "executed", body
    return body


@pytest.fixture
def two(make_service: Callable[..., WarmCache]) -> tuple[WarmCache, WarmCache]:
    a, b = make_service(node="wc-a"), make_service(node="wc-b")
    a.rules.put("az1", "small", {"max_instance_per_cycle": 6, "total_instances": 6})
    a.run_cycle()
    return a, b


def test_a_quota_set_on_one_instance_applies_on_the_other_at_its_next_acquisition(
    two: tuple[WarmCache, WarmCache],
) -> None:
    a, b = two
    b.acquire("small", "az1", 2, "best-effort", requester="carol")  # no limit yet
    client = http(a)
    asked = client.put(
        "/v1/quotas/carol",
        headers=as_(ALICE),
        json={"limits": [{"vms_per_window": 1, "window_s": 3600}]},
    )
    assert b.acquirer.quotas.applicable("carol", "az1", "small") == ()  # asked, not approved
    approve(client, asked)
    with pytest.raises(QuotaExceeded):  # b follows the store: no restart
        for _ in range(2):
            b.acquire("small", "az1", 1, "best-effort", requester="carol")
    reply = client.get("/v1/quotas/carol", headers=as_(CAROL))
    assert reply.status_code == 200
    assert reply.get_json()["limits"][0]["vms_per_window"] == 1
    assert [
        q["requester"] for q in client.get("/v1/quotas", headers=as_(CAROL)).get_json()["quotas"]
    ] == ["carol"]

    approve(client, client.delete("/v1/quotas/carol", headers=as_(ALICE)))
    b.acquire("small", "az1", 1, "best-effort", requester="carol")  # the limit is gone
    assert client.get("/v1/quotas/carol", headers=as_(ALICE)).get_json()["error"] == "unknown_quota"


def test_bad_quota_changes_are_refused_and_change_nothing(
    two: tuple[WarmCache, WarmCache],
) -> None:
    a, _ = two
    client = http(a)
    body: dict[str, Any]
    for body in (
        {},  # no limits
        {"limits": []},
        {"limits": [{"az": "az1"}]},  # limits nothing
        {"limits": [{"max_held": 2, "az": "az1"}]},  # max_held is over every AZ
        {"limits": [{"vms_per_window": -1}]},
        {"limits": [{"vms_per_window": 1, "requester": "dave"}]},  # another's
        {"limits": [{"vms_per_window": 1}], "extra": True},
    ):
        reply = client.put("/v1/quotas/carol", headers=as_(ALICE), json=body)
        assert (reply.status_code, reply.get_json()["error"]) == (400, "invalid_request"), body
    bad_name = client.put(
        "/v1/quotas/a%2Fb", headers=as_(ALICE), json={"limits": [{"max_share": 0.5}]}
    )
    assert bad_name.status_code in (400, 404)
    assert (
        client.put(
            "/v1/quotas/carol", headers=as_(CAROL), json={"limits": [{"max_share": 0.5}]}
        ).status_code
        == 403
    )  # a user may not
    missing = client.delete("/v1/quotas/nobody", headers=as_(ALICE))
    assert (missing.status_code, missing.get_json()["error"]) == (404, "unknown_quota")
    assert client.get("/v1/requests", headers=as_(ALICE)).get_json()["requests"] == []
    assert client.get("/v1/quotas", headers=as_(ALICE)).get_json()["quotas"] == []


def test_the_config_file_seeds_the_store_once_and_never_undoes_an_operator(
    make_service: Callable[..., WarmCache],
) -> None:
    seeded = (QuotaLimit(requester="carol", vms_per_window=5),)
    first = make_service(node="wc-a", quotas=seeded).start()
    entry = first.acquirer.quota_limits.get("carol")
    assert entry is not None and entry.by == "config"
    client = http(first)
    approve(
        client,
        client.put(
            "/v1/quotas/carol", headers=as_(ALICE), json={"limits": [{"vms_per_window": 1}]}
        ),
    )
    again = make_service(node="wc-b", quotas=seeded).start()  # a restart with the same file
    again.acquirer.catch_up()
    entry = again.acquirer.quota_limits.get("carol")
    assert entry is not None and entry.by == "operator"
    assert [q.vms_per_window for q in again.acquirer.quotas.limits] == [1]


def test_a_drain_asked_and_approved_on_one_instance_steers_the_other(
    two: tuple[WarmCache, WarmCache],
) -> None:
    """Drains through the API on two instances: a rack drained on ``a``
    (evacuate now) is handed out no more by ``b``; undrained, it is again."""
    a, b = two
    client = http(a)
    approve(
        client,
        client.post(
            "/v1/requests",
            headers=as_(ALICE),
            json={"action": "drain_rack", "params": {"az": "az1", "rack": "az1-r1"}},
        ),
    )
    [pool] = [p for p in b.pools() if (p.az, p.flavor) == ("az1", "small")]
    assert (pool.ready, pool.drained) == (4, 2)
    vms = b.acquire("small", "az1", 4, "best-effort", requester="carol")
    assert all(vm.rack != "az1-r1" for vm in vms)
    host = http(b).get("/v1/hosts/az1-r1-h1", headers=as_(CAROL)).get_json()
    assert (host["status"], host["drain"]["scope"]) == ("drained", "rack")
    approve(
        client,
        client.post(
            "/v1/requests",
            headers=as_(ALICE),
            json={"action": "undrain_rack", "params": {"az": "az1", "rack": "az1-r1"}},
        ),
    )
    [vm] = b.acquire("small", "az1", 1, "best-effort", requester="carol")
    assert vm.rack == "az1-r1"
