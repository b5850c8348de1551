"""The OpenAPI document is generated from the models, valid, and true: a
bounded schemathesis run against the live app (every operation, positive and
negative data, a fixed seed and budget) finds no server error and no reply
that breaks its schema."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import CheckFunction
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from warmcache.config import AuthConfig, TokenConfig
from warmcache.service import WarmCache
from warmcache.web import create_app
from warmcache.web.auth import Authenticator

EXAMPLES_PER_MODE = 15  # per operation: ~16 operations x 2 modes, a few seconds
TOKEN = "fuzz-admin"


@pytest.fixture
def app(service: WarmCache) -> Flask:
    service.rules.put(
        "az1", "small", {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 3}
    )
    service.run_cycle()
    auth = Authenticator(
        AuthConfig(tokens=(TokenConfig(name="fuzz", role="admin", token=SecretStr(TOKEN)),))
    )
    return create_app(service, auth)


def test_the_document_is_valid_and_every_ref_resolves(app: Flask) -> None:
    doc = app.test_client().get("/v1/openapi.json").get_json()
    validate(doc)  # openapi-spec-validator: OpenAPI 3.1 + JSON Schema

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            return [v for k, v in node.items() if k == "$ref"] + [
                r for v in node.values() for r in refs(v)
            ]
        return [r for v in node for r in refs(v)] if isinstance(node, list) else []

    schemas = doc["components"]["schemas"]
    found = refs(doc)
    assert found and all(r.removeprefix("#/components/schemas/") in schemas for r in found)
    vm = schemas["Vm"]["properties"]
    assert vm["rack"]["type"] == "string" and vm["addresses"]["type"] == "array"
    for name in ("Explain", "LeaderReply", "RulesReply", "ChangesReply", "Claim", "ErrorBody"):
        assert name in schemas, name
    acquire = doc["paths"]["/v1/acquire"]["post"]["responses"]
    assert "no_capacity" in acquire["409"]["description"]
    assert schemas["AcquireRequest"]["properties"]["count"]["maximum"] == 1000


# Operations whose bodies have rules a JSON Schema cannot say (a gateway
# inside one of the pool's CIDRs, no overlap with the AZ's other pools): a
# schema-valid body may still be a typed 400, so "valid data is accepted" is
# not asked of them; every other check is.
SEMANTIC: dict[str, list[CheckFunction]] = {
    "PUT /v1/networks/{az}/{name}": [positive_data_acceptance],
    "POST /v1/requests": [positive_data_acceptance],
    # a limit sets one of three fields; max_held only over every AZ and flavor
    "PUT /v1/quotas/{requester}": [positive_data_acceptance],
}


def agree(case: schemathesis.Case[Any]) -> None:
    """The one rule a schema cannot say: a claim_id in the body and the
    Idempotency-Key header must be the same id (both given and different is
    a 400, as the header's description says). Other data stays as generated."""
    header = case.headers.get("Idempotency-Key") if case.headers else None
    if header is not None and isinstance(case.body, dict) and case.body.get("claim_id"):
        case.body["claim_id"] = header


def test_schemathesis_finds_no_server_error_and_no_reply_off_its_schema(app: Flask) -> None:
    schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", app)
    failures: list[str] = []
    cases = 0
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert len(operations) == 39
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.seed(1)
            @settings(
                max_examples=EXAMPLES_PER_MODE,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case[Any]) -> None:
                nonlocal cases
                cases += 1
                agree(case)
                case.call_and_validate(
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    excluded_checks=SEMANTIC.get(case.operation.label, []),
                )

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                continue  # no negative data for an operation that takes no input
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} {mode.value}: {str(exc)[:2000]}")
    assert failures == [], "\n\n".join(failures)
    assert cases > 200


def test_the_api_reference_page_is_what_the_served_document_says() -> None:
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("api_page", root / "scripts" / "api_page.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert (root / "docs" / "api-reference.md").read_text() == generator.page(), (
        "regenerate: .venv/bin/python scripts/api_page.py > docs/api-reference.md"
    )
