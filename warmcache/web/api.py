"""The ``/v1`` HTTP API. Bodies are validated strictly (unknown fields,
wrong types: 400 ``invalid_request``); errors share one shape:
``{"error": "<stable code>", "detail": ...}``."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from warmcache.errors import InvalidRequest
from warmcache.model import Mode, PoolInstance
from warmcache.service import WarmCache

api = Blueprint("api", __name__)


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


def _body(model: type[BaseModel]) -> Any:
    raw = request.get_data(cache=False)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("body must be a JSON object")
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
    }


@api.get("/healthz")
def healthz() -> Any:
    service = _service()
    service.store.get(service.keys.leader())  # the store answers
    return jsonify({"status": "ok", "node": service.config.node})


@api.get("/v1/pools")
def pools() -> Any:
    return jsonify({"pools": [p.model_dump(mode="json") for p in _service().pools()]})


@api.post("/v1/acquire")
def acquire() -> Any:
    body: AcquireBody = _body(AcquireBody)
    vms = _service().acquire(body.flavor, body.az, body.count, body.mode,
                             use_reserve=body.use_reserve, requester=body.requester)
    return jsonify({"vms": [vm_json(vm) for vm in vms]})


@api.get("/v1/leader")
def leader() -> Any:
    holder = _service().leader()
    return jsonify({"leader": holder})
