"""Bearer tokens, the OpenAPI document, and warmcache.Client over WSGI."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import httpx
import pytest
from flask import Flask
from pydantic import SecretStr

from warmcache import Client, InvalidRequest, NoCapacity, PoolSummary, UnknownFlavor, Vm
from warmcache.config import AuthConfig, TokenConfig
from warmcache.errors import ClaimOutcomeUnknown
from warmcache.service import WarmCache
from warmcache.web import create_app
from warmcache.web.auth import Authenticator

USER, ADMIN = "user-secret", "admin-secret"


@pytest.fixture
def app(service: WarmCache) -> Flask:
    service.rules.put(
        "az1", "small", {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 3}
    )
    service.run_cycle()
    auth = Authenticator(
        AuthConfig(
            tokens=(
                TokenConfig(name="es-provisioner", role="user", token=SecretStr(USER)),
                TokenConfig(
                    name="sre-alice",
                    role="admin",
                    token_sha256=hashlib.sha256(ADMIN.encode()).hexdigest(),
                ),
            )
        )
    )
    return create_app(service, auth)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_or_unknown_token_is_401(app: Flask) -> None:
    client = app.test_client()
    for headers in ({}, bearer("nope"), {"Authorization": "Basic dXNlcjpwdw=="}):
        reply = client.get("/v1/pools", headers=headers)
        assert reply.status_code == 401 and reply.get_json()["error"] == "unauthorized"
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/openapi.json").status_code == 200


def test_roles_and_the_requester_come_from_the_token(app: Flask, service: WarmCache) -> None:
    client = app.test_client()
    rule = {"max_instance_per_cycle": 1, "total_instances": 1}
    reply = client.put("/v1/rules/az1/medium", json=rule, headers=bearer(USER))
    assert reply.status_code == 403 and reply.get_json()["error"] == "forbidden"
    assert client.get("/v1/rules/az1/medium", headers=bearer(USER)).status_code == 404
    assert client.put("/v1/rules/az1/medium", json=rule, headers=bearer(ADMIN)).status_code == 200
    reply = client.post(
        "/v1/acquire",
        headers=bearer(USER),
        json={
            "flavor": "small",
            "az": "az1",
            "count": 1,
            "mode": "best-effort",
            "requester": "someone-else",
        },
    )
    assert reply.status_code == 200
    [event] = service.events.recent(type_prefix="acquisition")
    assert event.fields["requester"] == "es-provisioner"


def test_the_openapi_document_covers_every_route(app: Flask) -> None:
    doc = app.test_client().get("/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    routes = {
        re.sub(r"<(\w+)>", r"{\1}", r.rule)
        for r in app.url_map.iter_rules()
        if r.rule.startswith(("/v1", "/healthz", "/metrics"))
    }
    assert routes <= set(doc["paths"])
    body = doc["components"]["schemas"]["AcquireRequest"]
    assert set(body["required"]) == {"flavor", "az", "count", "mode"}
    assert "409" in doc["paths"]["/v1/acquire"]["post"]["responses"]


@pytest.fixture
def client(app: Flask) -> Iterator[Client]:
    transport = httpx.WSGITransport(app=app)
    http = httpx.Client(transport=transport, base_url="http://warmcache", headers=bearer(USER))
    yield Client("http://warmcache", http=http)
    http.close()


def test_client_round_trip_and_typed_errors(client: Client) -> None:
    vms = client.acquire("small", "az1", 3, "rack-aware")
    assert all(isinstance(vm, Vm) for vm in vms) and len({vm.rack for vm in vms}) == 3
    with pytest.raises(NoCapacity) as err:
        client.acquire("small", "az1", 4, "rack-aware")
    assert (err.value.ready, err.value.racks, err.value.wanted) == (3, 3, 4)
    with pytest.raises(UnknownFlavor) as missing:
        client.acquire("xxl", "az1", 1, "best-effort")
    assert missing.value.flavor == "xxl" and "small" in missing.value.known
    with pytest.raises(InvalidRequest):
        client.acquire("small", "az1", 0, "best-effort")
    [pool] = client.pools()
    assert isinstance(pool, PoolSummary) and pool.ready == 3
    assert client.get_rule("az1", "small").total_instances == 6


def test_a_claim_with_an_unknown_outcome_reaches_the_client_typed(
    client: Client, service: WarmCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    vms = client.acquire("small", "az1", 2, "best-effort")
    assert len({vm.claim_id for vm in vms}) == 1 and vms[0].claim_id

    def store_went_away(*_a: object, **_k: object) -> None:
        raise ClaimOutcomeUnknown("c0ffee", ["vm-1", "vm-2"], "read timed out")

    monkeypatch.setattr(service, "acquire", store_went_away)
    with pytest.raises(ClaimOutcomeUnknown) as err:
        client.acquire("small", "az1", 2, "best-effort")
    assert (err.value.claim_id, err.value.vms) == ("c0ffee", ["vm-1", "vm-2"])
