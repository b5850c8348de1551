"""The maker-checker actions are one registry: approvals, the HTTP body
schema, its OpenAPI document and the CLI all offer exactly its entries."""

from __future__ import annotations

import click
import pytest

from warmcache.actions import ACTIONS
from warmcache.cli import main
from warmcache.schemas import ChangeAsk


def test_the_body_schema_offers_every_action_with_its_params() -> None:
    schema = ChangeAsk.model_json_schema()
    asks = {
        d["properties"]["action"]["const"]: d
        for d in schema["$defs"].values()
        if "action" in d.get("properties", {})
    }
    assert set(asks) == set(ACTIONS)
    for action, spec in ACTIONS.items():
        params = asks[action]["properties"]["params"]["$ref"].rsplit("/", 1)[-1]
        assert params == spec.params.__name__


def test_the_cli_offers_every_action() -> None:
    requests = main.commands["requests"]
    assert isinstance(requests, click.Group)
    [action] = [p for p in requests.commands["ask"].params if p.name == "action"]
    assert isinstance(action.type, click.Choice)
    assert list(action.type.choices) == list(ACTIONS)


@pytest.mark.parametrize(
    "body",
    [
        {"action": "purge_pool", "params": {"hypervisor": "h1"}},
        {"action": "reboot_fleet", "params": {}},
        {"action": "drain_hypervisor", "params": {"hypervisor": "../etc"}},
    ],
)
def test_a_body_off_the_registry_is_refused(body: dict[str, object]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ChangeAsk.model_validate(body)
