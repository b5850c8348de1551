"""The OpenAPI 3.1 document served at ``/v1/openapi.json``.

Request and record schemas come from the pydantic models the API validates
with, so the document cannot drift from what is enforced.
"""

from __future__ import annotations

from typing import Any

from warmcache.model import BuildRule, PoolSummary

ERROR = {"type": "object", "required": ["error", "detail"],
         "properties": {"error": {"type": "string", "description": "stable code"},
                        "detail": {}}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {400: "invalid input (nothing changed)", 401: "no or unknown bearer token",
               403: "the token's role may not do this", 404: "unknown flavor, AZ, pool or rule",
               409: "the pool cannot satisfy the request now (nothing claimed)",
               503: "store unavailable or claim contention (retry)"}
    return {str(c): {"description": meaning[c], **_json({"$ref": "#/components/schemas/Error"})}
            for c in codes}


def document(acquire_body: dict[str, Any], version: str) -> dict[str, Any]:
    vm = {"type": "object", "properties": {k: {} for k in (
        "name", "az", "flavor", "rack", "hypervisor", "server_id", "addresses", "ready_at",
        "acquired_at", "claim_id")}}
    rule_ref = {"$ref": "#/components/schemas/BuildRule"}
    rule_reply = {"type": "object", "properties": {"az": {"type": "string"},
                                                   "flavor": {"type": "string"},
                                                   "rule": rule_ref}}
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "warmcache", "version": version,
                 "description": "Pools of ready VMs, acquired rack-aware in milliseconds."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR, "AcquireRequest": acquire_body,
                        "BuildRule": BuildRule.model_json_schema(),
                        "Pool": PoolSummary.model_json_schema(), "VM": vm},
        },
        "paths": {
            "/healthz": {"get": {"summary": "liveness (asks nothing of the store)",
                                 "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "readiness: store, catalog, event sink, each "
                                           "with its own timeout (no token)", "responses": {
                "200": {"description": "every dependency answered"},
                "503": {"description": "some did not; the body says which"}}}},
            "/v1/openapi.json": {"get": {"summary": "this document", "responses": {"200": {
                "description": "OpenAPI 3.1"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (no token)", "responses": {
                "200": {"description": "text exposition format"}}}},
            "/v1/pools": {"get": {"summary": "every pool", "security": secured, "responses": {
                "200": {"description": "pools", **_json({"type": "object", "properties": {
                    "pools": {"type": "array", "items": {
                        "$ref": "#/components/schemas/Pool"}}}})},
                **_errors(401, 403)}}},
            "/v1/acquire": {"post": {
                "summary": "claim VMs, all or nothing", "security": secured,
                "requestBody": {"required": True, **_json(
                    {"$ref": "#/components/schemas/AcquireRequest"})},
                "responses": {"200": {"description": "the VMs, now the caller's", **_json(
                    {"type": "object", "properties": {"vms": {"type": "array", "items": {
                        "$ref": "#/components/schemas/VM"}}}})},
                    **_errors(400, 401, 403, 404, 409, 503)}}},
            "/v1/leader": {"get": {"summary": "who holds the build lock", "security": secured,
                                   "responses": {"200": {"description": "holder or null"},
                                                 **_errors(401, 403)}}},
            "/v1/rules": {"get": {"summary": "every build rule", "security": secured,
                                  "responses": {"200": {"description": "rules"},
                                                **_errors(401, 403)}}},
            "/v1/rules/{az}/{flavor}": {
                "parameters": [{"name": n, "in": "path", "required": True,
                                "schema": {"type": "string"}} for n in ("az", "flavor")],
                "get": {"summary": "one build rule", "security": secured, "responses": {
                    "200": {"description": "the rule", **_json(rule_reply)},
                    **_errors(401, 403, 404)}},
                "put": {"summary": "validate and store a rule (admin)", "security": secured,
                        "requestBody": {"required": True, **_json(rule_ref)},
                        "responses": {"200": {"description": "stored", **_json(rule_reply)},
                                      **_errors(400, 401, 403)}},
            },
            "/v1/requests": {
                "get": {"summary": "maker-checker requests", "security": secured,
                        "responses": {"200": {"description": "requests"}, **_errors(401, 403)}},
                "post": {"summary": "ask for a destructive change (admin; runs on approval)",
                         "security": secured, "requestBody": {"required": True, **_json({
                             "type": "object", "required": ["action", "params"],
                             "properties": {"action": {"enum": ["delete_rule", "purge_pool",
                                                                "drain_hypervisor"]},
                                            "params": {"type": "object"}}})},
                         "responses": {"202": {"description": "pending"},
                                       **_errors(400, 401, 403)}},
            },
            "/v1/requests/{request_id}": {
                "parameters": [{"name": "request_id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "get": {"summary": "one request", "security": secured, "responses": {
                    "200": {"description": "the request"}, **_errors(401, 403, 404)}},
            },
            "/v1/requests/{request_id}/approve": {
                "parameters": [{"name": "request_id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "post": {"summary": "approve (another admin) and run", "security": secured,
                         "responses": {"200": {"description": "executed or failed"},
                                       "409": {"description": "expired or not pending"},
                                       **_errors(401, 403, 404)}},
            },
            "/v1/explain/{az}/{flavor}": {
                "parameters": [{"name": n, "in": "path", "required": True,
                                "schema": {"type": "string"}} for n in ("az", "flavor")],
                "get": {"summary": "dry-run placement", "security": secured, "responses": {
                    "200": {"description": "placements and why"}, **_errors(401, 403, 404)}},
            },
        },
    }
