"""Names are checked in full at every door (issue 28, item 4): a name with
a trailing newline was accepted (``re.match`` with ``$`` matches before a
final newline) and could then never be deleted."""

from __future__ import annotations

from flask.testing import FlaskClient

from warmcache.model import BuildRule, is_valid_name
from warmcache.service import WarmCache
from warmcache.web import create_app

RULE = {"max_instance_per_cycle": 1, "total_instances": 1}


def test_a_name_with_a_trailing_newline_is_not_a_name() -> None:
    assert is_valid_name("az1") and not is_valid_name("az1\n") and not is_valid_name("az1\n\n")


def test_every_door_refuses_it_and_stores_nothing(service: WarmCache) -> None:
    client: FlaskClient = create_app(service).test_client()
    pool = {"cidrs": ["10.9.0.0/24"], "gateway": "10.9.0.1"}
    for method, path, body in (
        ("put", "/v1/rules/az1%0A/small", RULE),
        ("put", "/v1/rules/az1/small%0A", RULE),
        ("put", "/v1/budgets/az1%0A", {"vms": 3}),
        ("put", "/v1/networks/az1/probe%0A", pool),
        ("put", "/v1/networks/az1%0A/probe", pool),
    ):
        reply = getattr(client, method)(path, json=body)
        assert reply.status_code in (400, 404), (path, reply.status_code)
        assert reply.get_json()["error"] in ("invalid_request", "invalid_rule", "unknown_flavor")
    assert service.rules.all() == {} and service.budgets.all() == {}
    assert service.networks.all() == {}


def test_a_name_stored_before_the_check_can_still_be_deleted(service: WarmCache) -> None:
    rule = BuildRule.model_validate(RULE)
    service.store.put(service.keys.rule("az1\n", "small"), rule.model_dump_json())
    asked = service.approvals.ask("delete_rule", {"az": "az1\n", "flavor": "small"}, "alice")
    done = service.approvals.approve(asked.id, "bob")
    assert done.state == "executed", done.result
    assert service.store.get(service.keys.rule("az1\n", "small")) is None


def test_duplicate_keys_are_refused_and_integral_floats_read_as_integers(
    service: WarmCache,
) -> None:
    """Issue 28, item 10: ``{"count": 1, "count": 99}`` was read as its last
    value; ``PUT /v1/rules`` refused 10397.0, which the schema and
    ``/v1/acquire`` accept."""
    client: FlaskClient = create_app(service).test_client()
    body = '{"max_instance_per_cycle": 1, "total_instances": 1, "total_instances": 9}'
    reply = client.put(
        "/v1/rules/az1/small", data=body, headers={"Content-Type": "application/json"}
    )
    assert (reply.status_code, reply.get_json()["error"]) == (400, "invalid_request")
    assert "total_instances" in reply.get_json()["detail"] and service.rules.all() == {}
    reply = client.put(
        "/v1/rules/az1/small", json={"max_instance_per_cycle": 2.0, "total_instances": 10397.0}
    )
    assert reply.status_code == 200 and reply.get_json()["rule"]["total_instances"] == 10397
    reply = client.put(
        "/v1/rules/az1/small", json={"max_instance_per_cycle": 2, "total_instances": "9"}
    )
    assert reply.status_code == 400
