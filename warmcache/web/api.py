"""The ``/v1`` HTTP API. Bodies are validated strictly (unknown fields,
wrong types: 400 ``invalid_request``); errors share one shape:
``{"error": "<stable code>", "detail": ...}``."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from werkzeug.exceptions import UnsupportedMediaType

from warmcache.errors import InvalidRequest, UnknownRule
from warmcache.model import BuildRule, Mode, PoolInstance
from warmcache.service import WarmCache
from warmcache.web.auth import Authenticator
from warmcache.web.openapi import document

api = Blueprint("api", __name__)

# Prometheus scrapes /metrics without a token (serve it on an internal
# network); the OpenAPI document is public.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v1/openapi.json", "/metrics"})


@api.before_app_request
def _authenticate() -> None:
    """Every route but OPEN_PATHS needs a token (when tokens are configured):
    reads and acquisitions the ``user`` role, changes the ``admin`` role."""
    if request.path in OPEN_PATHS:
        return
    auth: Authenticator = current_app.extensions["warmcache.auth"]
    identity = auth.identify(request.headers.get("Authorization"))
    identity.require("user" if request.method in ("GET", "HEAD") or
                     request.path == "/v1/acquire" else "admin")
    g.identity = identity


class AcquireBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flavor: StrictStr = Field(min_length=1, max_length=63)
    az: StrictStr = Field(min_length=1, max_length=63)
    count: StrictInt = Field(ge=1)
    mode: Mode
    use_reserve: StrictBool = False
    requester: StrictStr = Field(default="anonymous", min_length=1, max_length=200)


def _service() -> WarmCache:
    service: WarmCache = current_app.extensions["warmcache"]
    return service


def _json_object() -> dict[str, Any]:
    """The request body as a JSON object, or a typed refusal: 415 unless it
    says it is JSON (a cross-site form or text/plain POST cannot), 413 over
    the body limit (read no further), 400 for anything json cannot make
    sense of, nesting too deep and numbers too long included."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {request.mimetype or 'none'}")
    raw = request.get_data(cache=False)
    try:
        data = json.loads(raw)
    except RecursionError as exc:
        raise InvalidRequest("body is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over 4,300 digits
        raise InvalidRequest(f"body is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("body must be a JSON object")
    return data


def _body(model: type[BaseModel]) -> Any:
    data = _json_object()
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest.from_validation("invalid request body", exc) from exc


def vm_json(vm: PoolInstance) -> dict[str, Any]:
    return {
        "name": vm.name,
        "az": vm.az,
        "flavor": vm.flavor,
        "rack": vm.rack,
        "hypervisor": vm.hypervisor,
        "server_id": vm.server_id,
        "addresses": list(vm.addresses),
        "ready_at": vm.ready_at,
        "acquired_at": vm.acquired_at,
        "claim_id": vm.claim_id,
    }


@api.get("/healthz")
def healthz() -> Any:
    """Liveness only: the process answers. Asks nothing of the store (with
    etcd stopped it once blocked for 15.7 s); /readyz does."""
    return jsonify({"status": "ok", "node": _service().config.node})


@api.get("/readyz")
def readyz() -> Any:
    """Whether this instance can serve: the store, the flavor catalog and
    the event sink, each asked with its own timeout (so the answer comes
    within about a second whatever is down). 200 when all answer, else 503;
    the body says which and how fast."""
    checks = _service().readiness()
    ready = all(c["ok"] for c in checks.values())
    return jsonify({"ready": ready, "checks": checks}), (200 if ready else 503)


@api.get("/v1/pools")
def pools() -> Any:
    return jsonify({"pools": [p.model_dump(mode="json") for p in _service().pools()]})


@api.post("/v1/acquire")
def acquire() -> Any:
    body: AcquireBody = _body(AcquireBody)
    auth: Authenticator = current_app.extensions["warmcache.auth"]
    # With authentication on, the requester is who the token says, not the body.
    requester = g.identity.name if auth.enabled else body.requester
    vms = _service().acquire(body.flavor, body.az, body.count, body.mode,
                             use_reserve=body.use_reserve, requester=requester)
    return jsonify({"vms": [vm_json(vm) for vm in vms]})


def _rule_json(az: str, flavor: str, rule: BuildRule) -> dict[str, Any]:
    return {"az": az, "flavor": flavor, "rule": rule.model_dump(mode="json")}


@api.get("/v1/rules")
def rules() -> Any:
    all_rules = _service().rules.all()
    return jsonify({"rules": [_rule_json(az, f, r) for (az, f), r in all_rules.items()]})


@api.get("/v1/rules/<az>/<flavor>")
def get_rule(az: str, flavor: str) -> Any:
    rule = _service().rules.get(az, flavor)
    if rule is None:
        raise UnknownRule(az, flavor)
    return jsonify(_rule_json(az, flavor, rule))


@api.put("/v1/rules/<az>/<flavor>")
def put_rule(az: str, flavor: str) -> Any:
    """Validate, then store; an invalid rule is a 400 and the old rule stays."""
    body = _json_object()
    rule = _service().rules.put(az, flavor, body)
    return jsonify(_rule_json(az, flavor, rule))


@api.get("/v1/explain/<az>/<flavor>")
def explain(az: str, flavor: str) -> Any:
    return jsonify(_service().explain(az, flavor))


class ChangeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: StrictStr
    params: dict[str, StrictStr]


@api.post("/v1/requests")
def ask_change() -> Any:
    """Maker: record a destructive change; it runs only once someone else approves."""
    body: ChangeBody = _body(ChangeBody)
    request_ = _service().approvals.ask(body.action, body.params, g.identity.name)
    return jsonify({"request": request_.model_dump(mode="json")}), 202


@api.get("/v1/requests")
def list_changes() -> Any:
    return jsonify({"requests": _service().approvals.list()})


@api.get("/v1/requests/<request_id>")
def get_change(request_id: str) -> Any:
    service = _service()
    return jsonify({"request": service.approvals.get(request_id).shown(service.clock.now())})


@api.post("/v1/requests/<request_id>/approve")
def approve_change(request_id: str) -> Any:
    """Checker: a different identity approves, and the change runs now."""
    done = _service().approvals.approve(request_id, g.identity.name)
    return jsonify({"request": done.model_dump(mode="json")})


@api.get("/metrics")
def metrics() -> Any:
    return current_app.response_class(_service().metrics.render(),
                                      mimetype="text/plain; version=0.0.4")


@api.get("/v1/openapi.json")
def openapi() -> Any:
    from warmcache import __version__

    return jsonify(document(AcquireBody.model_json_schema(), __version__))


@api.get("/v1/leader")
def leader() -> Any:
    holder = _service().leader()
    return jsonify({"leader": holder})
