"""The /v1 HTTP contract (Flask test client over a real SQLite store)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from warmcache.service import WarmCache
from warmcache.web import create_app


@pytest.fixture
def client(service: WarmCache) -> Iterator[FlaskClient]:
    for az in ("az1", "az2"):
        service.rules.put(
            az, "small", {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 3}
        )
    service.rules.put("az1", "medium", {"max_instance_per_cycle": 2, "total_instances": 2})
    service.run_cycle()
    yield create_app(service).test_client()


def pools(client: FlaskClient) -> list[dict[str, Any]]:
    reply = client.get("/v1/pools")
    assert reply.status_code == 200
    result: list[dict[str, Any]] = reply.get_json()["pools"]
    return result


def acquire(client: FlaskClient, **body: Any) -> Any:
    return client.post(
        "/v1/acquire",
        json={"flavor": "small", "az": "az1", "count": 3, "mode": "rack-aware", **body},
    )


def test_pools_shape(client: FlaskClient) -> None:
    small = next(p for p in pools(client) if (p["az"], p["flavor"]) == ("az1", "small"))
    assert set(small) >= {
        "az",
        "flavor",
        "target",
        "ready",
        "reserved",
        "building",
        "ready_by_rack",
    }
    assert small["ready"] == 6 and len(small["ready_by_rack"]) == 3


@pytest.mark.parametrize("mode,key", [("rack-aware", "rack"), ("hypervisor-aware", "hypervisor")])
def test_acquire_returns_vms_spread_as_asked(client: FlaskClient, mode: str, key: str) -> None:
    reply = acquire(client, mode=mode)
    assert reply.status_code == 200
    vms = reply.get_json()["vms"]
    assert len(vms) == 3 and len({vm[key] for vm in vms}) == 3
    assert all({"name", "az", "flavor", "rack", "hypervisor"} <= set(vm) for vm in vms)
    small = next(p for p in pools(client) if (p["az"], p["flavor"]) == ("az1", "small"))
    assert small["ready"] == 3


def test_unsatisfiable_request_is_409_and_changes_nothing(client: FlaskClient) -> None:
    before = pools(client)
    reply = acquire(client, count=4)  # 3 racks only
    assert reply.status_code == 409
    body = reply.get_json()
    assert body["error"] == "no_capacity"
    assert body["detail"]["racks"] == 3 and body["detail"]["wanted"] == 4
    assert acquire(client, count=7, mode="best-effort").status_code == 409
    assert pools(client) == before


@pytest.mark.parametrize(
    "body",
    [
        {"count": 0},
        {"count": -2},
        {"count": "3"},
        {"count": 2.5},
        {"count": True},
        {"mode": "nearby"},
        {"flavor": 7},
        {"surprise": 1},
        {"count": 1001},
    ],
)
def test_malformed_input_is_400_and_changes_nothing(
    client: FlaskClient, body: dict[str, Any]
) -> None:
    before = pools(client)
    reply = acquire(client, **body)
    assert reply.status_code == 400, reply.get_json()
    assert reply.get_json()["error"] == "invalid_request"
    assert pools(client) == before


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"", b'{"flavor": "small"'])
def test_unparseable_body_is_400(client: FlaskClient, raw: bytes) -> None:
    reply = client.post("/v1/acquire", data=raw, content_type="application/json")
    assert reply.status_code == 400 and reply.get_json()["error"] == "invalid_request"


HOSTILE = [
    (b"[" * 100_000 + b"]" * 100_000, "invalid_request"),  # RecursionError: was a 500
    (b'{"count": 1' + b"0" * 5000 + b"}", "invalid_request"),  # over 4,300 digits: a 500
    (b"\xff\xfe{}", "invalid_request"),
    (b'{"flavor": "' + b"a" * 2_000_000 + b'"}', "body_too_large"),
]


@pytest.mark.parametrize("route", ["/v1/acquire", "/v1/rules/az1/small"])
@pytest.mark.parametrize("raw,code", HOSTILE)
def test_hostile_bodies_get_a_typed_4xx_and_change_nothing(
    client: FlaskClient, route: str, raw: bytes, code: str
) -> None:
    before = pools(client), client.get("/v1/rules").get_json()
    send = client.put if route.startswith("/v1/rules") else client.post
    reply = send(route, data=raw, content_type="application/json")
    assert reply.status_code == (413 if code == "body_too_large" else 400)
    assert reply.get_json()["error"] == code
    assert (pools(client), client.get("/v1/rules").get_json()) == before


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_a_body_that_is_not_declared_json_is_refused(
    client: FlaskClient, content_type: str | None
) -> None:
    """A web page can POST text/plain or a form cross-site without a
    preflight; with authentication off that acquired VMs."""
    body = b'{"flavor": "small", "az": "az1", "count": 1, "mode": "best-effort"}'
    before = pools(client)
    headers = {"Content-Type": content_type} if content_type else {}
    reply = client.post("/v1/acquire", data=body, headers=headers)
    assert reply.status_code == 415 and reply.get_json()["error"] == "unsupported_media_type"
    assert pools(client) == before


def test_a_wrong_method_says_which_are_allowed(client: FlaskClient) -> None:
    reply = client.get("/v1/acquire")
    assert reply.status_code == 405 and reply.get_json()["error"] == "method_not_allowed"
    assert set(reply.headers["Allow"].replace(" ", "").split(",")) >= {"POST"}
    assert client.delete("/v1/rules/az1/small").headers["Allow"]


def test_missing_fields_are_named(client: FlaskClient) -> None:
    reply = client.post("/v1/acquire", json={"flavor": "small"})
    assert reply.status_code == 400
    missing = {e["loc"][0] for e in reply.get_json()["detail"]["errors"]}
    assert missing == {"az", "count", "mode"}


@pytest.mark.parametrize(
    "body,code",
    [
        ({"flavor": "xxl"}, "unknown_flavor"),
        ({"az": "az9"}, "unknown_az"),
        ({"flavor": "large"}, "unknown_pool"),
    ],
)
def test_unknown_flavor_az_or_pool_is_404(
    client: FlaskClient, body: dict[str, Any], code: str
) -> None:
    reply = acquire(client, **body)
    assert reply.status_code == 404 and reply.get_json()["error"] == code


def test_errors_share_one_shape_even_for_unknown_paths(client: FlaskClient) -> None:
    for reply in (client.get("/v1/nope"), client.get("/v1/acquire")):
        body = reply.get_json()
        assert reply.status_code in (404, 405) and set(body) == {"error", "detail"}


def test_leader_and_health(client: FlaskClient, service: WarmCache) -> None:
    assert client.get("/healthz").get_json()["status"] == "ok"
    assert client.get("/v1/leader").get_json() == {"leader": None}  # idle between cycles
    lead = service.election.try_acquire()
    assert lead is not None
    leader = client.get("/v1/leader").get_json()["leader"]
    assert leader["node"] == "wc-test" and leader["token"] == lead.token


def test_acquisitions_are_recorded(client: FlaskClient, service: WarmCache) -> None:
    acquire(client, requester="es-provisioner")
    [event] = service.events.recent(type_prefix="acquisition")
    assert event.fields["requester"] == "es-provisioner" and event.fields["count"] == 3
    assert len(event.fields["vms"]) == 3 and event.fields["latency_ms"] >= 0


def test_draining_a_pool_below_its_low_water_mark_triggers_a_cycle(
    client: FlaskClient, service: WarmCache
) -> None:
    assert not service.cycle_pending
    acquire(client, count=2)  # 6 -> 4 left: above 50 % of 6
    assert not service.cycle_pending
    acquire(client, count=2)  # 2 left: below
    assert service.cycle_pending


def test_rules_read_and_write(client: FlaskClient) -> None:
    listed = client.get("/v1/rules").get_json()["rules"]
    assert {(r["az"], r["flavor"]) for r in listed} == {
        ("az1", "small"),
        ("az2", "small"),
        ("az1", "medium"),
    }
    rule = {"max_instance_per_cycle": 2, "total_instances": 4, "group_hint": "db"}
    reply = client.put("/v1/rules/az2/large", json=rule)
    assert reply.status_code == 200 and reply.get_json()["rule"]["group_hint"] == "db"
    got = client.get("/v1/rules/az2/large").get_json()
    assert got["rule"]["total_instances"] == 4 and got["rule"]["min_fault_domain"] == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"max_instance_per_cycle": 2, "total_instances": 4, "reserve_cap": 5},
        {"max_instance_per_cycle": "2", "total_instances": 4},
        {"total_instances": 4},
        {"max_instance_per_cycle": 2, "total_instances": 4, "colour": "blue"},
    ],
)
def test_an_invalid_rule_is_refused_and_the_old_one_stays(
    client: FlaskClient, bad: dict[str, Any]
) -> None:
    before = client.get("/v1/rules/az1/small").get_json()
    reply = client.put("/v1/rules/az1/small", json=bad)
    assert reply.status_code == 400 and reply.get_json()["error"] == "invalid_rule"
    assert reply.get_json()["detail"]["errors"]
    assert client.get("/v1/rules/az1/small").get_json() == before


def test_rules_for_unknown_things(client: FlaskClient) -> None:
    assert client.get("/v1/rules/az1/large").get_json()["error"] == "unknown_rule"
    reply = client.put(
        "/v1/rules/az1/xxl", json={"max_instance_per_cycle": 1, "total_instances": 1}
    )
    assert reply.status_code == 404 and reply.get_json()["error"] == "unknown_flavor"
    assert reply.get_json()["detail"]["flavor"] == "xxl"
    reply = client.put("/v1/rules/az1/small", data=b"{", content_type="application/json")
    assert reply.status_code == 400


def test_explain_dry_runs_placement(client: FlaskClient, service: WarmCache) -> None:
    service.rules.put(
        "az2", "medium", {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 3}
    )
    body = client.get("/v1/explain/az2/medium").get_json()
    assert body["to_build"] == 6 and body["hosts"] == 6 and body["problem"] is None
    assert len({p["rack"] for p in body["placements"]}) == 3
    assert all("has_capacity removed 0" in p["explanation"] for p in body["placements"])
    assert (
        next(p for p in pools(client) if p["flavor"] == "medium" and p["az"] == "az2")["building"]
        == 0
    )  # nothing was built
    assert client.get("/v1/explain/az9/medium").status_code == 404


def test_the_dashboard_shows_pools_and_history(client: FlaskClient) -> None:
    acquire(client, requester="es-provisioner")
    acquire(client, count=99)
    page = client.get("/").get_data(as_text=True)
    assert 'data-pool="az1/small"' in page and "az1-r1" in page
    assert "es-provisioner" in page and "invalid_request" not in page
    assert "vm.build_finished" in page and "leader.elected" in page


def test_the_dashboard_draws_levels_capacity_and_holders(
    client: FlaskClient, service: WarmCache, clock: Any
) -> None:
    """Issue 27's dashboard: per pool a level chart with data once two
    samples exist, the share served at once and latency percentiles, the
    racks' capacity, a square per hypervisor, handed-out VMs by requester;
    ``/live`` is the fragment the page swaps in (no full reload)."""
    service.history.sample()
    clock.advance(60)
    assert acquire(client, requester="es-provisioner").status_code == 200
    # a holder's name is the store's: text on the page, never markup
    service.store.put(service.keys.held("<b>x</b>", "az1", "az1-small-0123456789"), "1")
    acquire(client, count=5)  # served or refused, it counts towards the share
    service.history.sample()
    page = client.get("/").get_data(as_text=True)
    assert 'id="live"' in page and "fetch(" in page and "<script src" not in page
    live = client.get("/live").get_data(as_text=True)
    [row] = [r for r in live.split("<tr ") if r.startswith('data-pool="az1/small"')]
    level = row.split('class="chart-level"')[1].split("</svg>")[0]
    assert 'class="series-ready"' in level and 'class="series-held"' in level
    assert "collecting" not in level
    assert "served at once" in row and "p99" in row
    assert live.count('class="host-') == 12  # every hypervisor, one square each
    racks = live.split('id="capacity"')[1].split("</svg>")[0]
    assert racks.count('class="part-booked"') >= 2 and "az2/az2-r3" in racks
    holders = live.split('id="requesters"')[1].split("</svg>")[0]
    assert "es-provisioner" in holders and "3 VM(s)" in holders
    assert "&lt;b&gt;x&lt;/b&gt;" in holders and "<b>x</b>" not in live


def test_a_store_that_will_not_take_a_write_is_a_bounded_503(
    make_service: Any, sqlite_store: Any
) -> None:
    """SQLite's write lock held (a process frozen inside a write): the
    acquisition is 503 store_unavailable by its deadline, nothing claimed,
    instead of waiting the 30 s busy timeout."""
    import sqlite3
    import time

    service = make_service(request_deadline_s=0.3)
    for az in ("az1", "az2"):
        service.rules.put(
            az, "small", {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 3}
        )
    service.run_cycle()
    client = create_app(service).test_client()
    before = pools(client)
    held = sqlite3.connect(sqlite_store.path, isolation_level=None)
    held.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        reply = acquire(client)
        took = time.monotonic() - started
    finally:
        held.execute("ROLLBACK")
        held.close()
    assert reply.status_code == 503 and reply.get_json()["error"] == "store_unavailable"
    assert took < 0.3 + 0.5
    assert pools(client) == before
    assert acquire(client).status_code == 200  # and fine once the lock is free
