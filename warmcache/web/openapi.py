"""The OpenAPI 3.1 document served at ``/v1/openapi.json``, generated from
the models the API validates requests with and builds replies from
(``warmcache.schemas``): every body, error bodies included, is a schema under
``#/components/schemas`` (pydantic's JSON Schema, its ``$ref``s pointed
there), so the document cannot drift from what is enforced. The error
statuses of each operation list the stable codes they carry, from the one
registry (``warmcache.errors.CODES``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from warmcache.claims.quota_limits import REQUESTER_PATTERN, QuotaEntry
from warmcache.demand.budgets import BudgetBody
from warmcache.errors import CODES
from warmcache.model import CLAIM_ID_PATTERN, NAME_PATTERN, BuildRule, InstanceState
from warmcache.networks import AddressPool
from warmcache.schemas import (
    AFTER_HOST_PATTERN,
    AcquireReply,
    AcquireRequest,
    AgentsReply,
    BudgetEntry,
    BudgetsReply,
    CapacityReply,
    ChangeAsk,
    ChangeReply,
    ChangesReply,
    Claim,
    DiskBody,
    ErrorBody,
    Explain,
    Health,
    HostEntry,
    HostsReply,
    ImageEntry,
    ImagesReply,
    LeaderReply,
    NetworkEntry,
    NetworksReply,
    PoolsReply,
    QuotaBody,
    QuotasReply,
    Ready,
    ReleaseReply,
    RenewBody,
    RuleEntry,
    RulesReply,
    Vm,
    VmsReply,
)
from warmcache.vms.book import MAX_PAGE

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    summary: str
    replies: dict[int, type[BaseModel] | None]
    body: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    secured: bool = True
    params: tuple[tuple[str, str], ...] = ()  # (name, pattern) of path parameters
    headers: tuple[tuple[str, str, str], ...] = ()  # (name, pattern, description)
    query: tuple[tuple[str, dict[str, Any]], ...] = ()  # (name, schema) of query parameters
    text: bool = False  # a text/plain reply
    extra: dict[str, Any] = field(default_factory=dict)


NAME = NAME_PATTERN
READ = (400, 401, 403, 404, 503)  # 400: a malformed request line or query
WRITE = (400, 401, 403, 404, 405, 413, 415, 503)

OPERATIONS = [
    Operation(
        "/healthz",
        "get",
        "liveness: the process answers (asks nothing of the store)",
        {200: Health},
        secured=False,
    ),
    Operation(
        "/readyz",
        "get",
        "readiness: store, catalog and event sink, each with its own "
        "timeout (200 when all answer, else 503; the body says which)",
        {200: Ready, 503: Ready},
        secured=False,
    ),
    Operation("/v1/openapi.json", "get", "this document", {200: None}, secured=False),
    Operation("/metrics", "get", "Prometheus metrics", {200: None}, secured=False, text=True),
    Operation(
        "/v1/pools",
        "get",
        "every pool: target, ready, reserved, building, spread",
        {200: PoolsReply},
        errors=READ,
    ),
    Operation(
        "/v1/acquire",
        "post",
        "claim VMs, all or nothing; idempotent under claim_id",
        {200: AcquireReply},
        body=AcquireRequest,
        errors=(*WRITE, 409, 429),
        headers=(
            (
                "Idempotency-Key",
                CLAIM_ID_PATTERN,
                "the same as claim_id in the body (they must agree)",
            ),
        ),
    ),
    Operation(
        "/v1/claims/{claim_id}",
        "get",
        "a claim that landed under claim_id",
        {200: Claim},
        errors=READ,
        params=(("claim_id", CLAIM_ID_PATTERN),),
    ),
    Operation(
        "/v1/leader",
        "get",
        "who holds the build lock now (null between cycles)",
        {200: LeaderReply},
        errors=READ,
    ),
    Operation("/v1/rules", "get", "every build rule", {200: RulesReply}, errors=READ),
    Operation(
        "/v1/rules/{az}/{flavor}",
        "get",
        "one build rule",
        {200: RuleEntry},
        errors=READ,
        params=(("az", NAME), ("flavor", NAME)),
    ),
    Operation(
        "/v1/rules/{az}/{flavor}",
        "put",
        "validate and store a rule (admin); an invalid rule is refused and the old one stays",
        {200: RuleEntry},
        body=BuildRule,
        errors=WRITE,
        params=(("az", NAME), ("flavor", NAME)),
    ),
    Operation("/v1/networks", "get", "every address pool", {200: NetworksReply}, errors=READ),
    Operation(
        "/v1/agents",
        "get",
        "every heartbeating agent's version and code sha256, and whether it runs the desired "
        "build (set by maker-checker: set_agent_version)",
        {200: AgentsReply},
        errors=READ,
    ),
    Operation(
        "/v1/networks/{az}/{name}",
        "get",
        "one address pool, with how many addresses it holds",
        {200: NetworkEntry},
        errors=READ,
        params=(("az", NAME), ("name", NAME)),
    ),
    Operation(
        "/v1/networks/{az}/{name}",
        "put",
        "create an address pool (admin): validated (a gateway inside a CIDR, no overlap with "
        "another pool of the AZ); an existing one is changed by maker-checker "
        "(update_network), so this is a 409 network_exists then",
        {201: NetworkEntry},
        body=AddressPool,
        errors=(*WRITE, 409),
        params=(("az", NAME), ("name", NAME)),
    ),
    Operation(
        "/v1/images",
        "get",
        "every image of the catalog, with the flavors that boot it (registering or changing "
        "one is maker-checker: set_image, delete_image)",
        {200: ImagesReply},
        errors=READ,
    ),
    Operation(
        "/v1/images/{image_id}",
        "get",
        "one image, with the flavors that boot it",
        {200: ImageEntry},
        errors=READ,
        params=(("image_id", NAME),),
    ),
    Operation(
        "/v1/hosts",
        "get",
        "a page of hypervisors in (AZ, name) order: capacity, booked and free, VMs by state, "
        "heartbeat, drain, agent version, images; next page: after=<next>",
        {200: HostsReply},
        errors=READ,
        query=(
            ("az", {"type": "string", "pattern": NAME}),
            ("rack", {"type": "string", "pattern": NAME}),
            ("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}),
            ("after", {"type": "string", "pattern": AFTER_HOST_PATTERN}),
        ),
    ),
    Operation(
        "/v1/hosts/{hypervisor}",
        "get",
        "one hypervisor (an unreachable one while VMs are recorded on it)",
        {200: HostEntry},
        errors=READ,
        params=(("hypervisor", NAME),),
    ),
    Operation(
        "/v1/capacity",
        "get",
        "free and booked capacity per AZ and rack, with drained and unreachable hosts",
        {200: CapacityReply},
        errors=READ,
        query=(("az", {"type": "string", "pattern": NAME}),),
    ),
    Operation(
        "/v1/quotas", "get", "every requester's quota limits", {200: QuotasReply}, errors=READ
    ),
    Operation(
        "/v1/quotas/{requester}",
        "get",
        "one requester's quota limits",
        {200: QuotaEntry},
        errors=READ,
        params=(("requester", REQUESTER_PATTERN),),
    ),
    Operation(
        "/v1/quotas/{requester}",
        "put",
        "ask to set a requester's limits (maker-checker: 202, a pending request)",
        {202: ChangeReply},
        body=QuotaBody,
        errors=WRITE,
        params=(("requester", REQUESTER_PATTERN),),
    ),
    Operation(
        "/v1/quotas/{requester}",
        "delete",
        "ask to remove a requester's limits (maker-checker: 202; 404 unknown_quota)",
        {202: ChangeReply},
        errors=WRITE,
        params=(("requester", REQUESTER_PATTERN),),
    ),
    Operation(
        "/v1/vms",
        "get",
        "a page of tracked VMs in name order, filtered (a user token: only the VMs it holds); "
        "next page: after=<next>",
        {200: VmsReply},
        errors=READ,
        query=(
            ("state", {"type": "string", "enum": [s.value for s in InstanceState]}),
            ("requester", {"type": "string", "minLength": 1, "maxLength": 200}),
            ("az", {"type": "string", "pattern": NAME}),
            ("flavor", {"type": "string", "pattern": NAME}),
            ("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}),
            ("after", {"type": "string", "pattern": NAME}),
        ),
    ),
    Operation(
        "/v1/vms/{name}",
        "get",
        "one VM in any state: holder, claim, lease, disks, where it runs",
        {200: Vm},
        errors=READ,
        params=(("name", NAME),),
    ),
    Operation(
        "/v1/vms/{name}",
        "delete",
        "give a handed-out VM back (its holder or an admin): it is releasing, then deleted or "
        "recycled by its agent; a repeat is harmless",
        {202: ReleaseReply},
        errors=(*WRITE, 409),
        params=(("name", NAME),),
    ),
    Operation(
        "/v1/claims/{claim_id}",
        "delete",
        "give back every VM of a named claim (its requester or an admin)",
        {202: ReleaseReply},
        errors=(*WRITE, 409),
        params=(("claim_id", CLAIM_ID_PATTERN),),
    ),
    Operation(
        "/v1/vms/{name}/renew",
        "post",
        "renew a handed-out VM's lease: lease_s seconds from now",
        {200: Vm},
        body=RenewBody,
        errors=(*WRITE, 409),
        params=(("name", NAME),),
    ),
    Operation(
        "/v1/vms/{name}/disks",
        "post",
        "attach a new data disk to a handed-out VM (its holder or an admin)",
        {201: Vm},
        body=DiskBody,
        errors=(*WRITE, 409, 502),
        params=(("name", NAME),),
    ),
    Operation(
        "/v1/vms/{name}/disks/{target}",
        "delete",
        "detach and delete one of a handed-out VM's data disks",
        {200: Vm},
        errors=(*WRITE, 409, 502),
        params=(("name", NAME), ("target", r"^vd[b-y]$")),
    ),
    Operation("/v1/budgets", "get", "every AZ budget", {200: BudgetsReply}, errors=READ),
    Operation(
        "/v1/budgets/{az}",
        "get",
        "one AZ's budget for its demand-sized pools",
        {200: BudgetEntry},
        errors=READ,
        params=(("az", NAME),),
    ),
    Operation(
        "/v1/budgets/{az}",
        "put",
        "set an AZ's budget (admin): {vms} or {vcpus}; static pools take their total first, "
        "the rest is split over the demand-sized pools by the requests one more VM saves",
        {200: BudgetEntry},
        body=BudgetBody,
        errors=WRITE,
        params=(("az", NAME),),
    ),
    Operation(
        "/v1/budgets/{az}",
        "delete",
        "remove an AZ's budget (admin); returns what it was",
        {200: BudgetEntry},
        errors=WRITE,
        params=(("az", NAME),),
    ),
    Operation(
        "/v1/explain/{az}/{flavor}",
        "get",
        "where the next cycle would build, and why (nothing is built); how the pool's target "
        "was set (demand sizing: the history, the forecast, the budget share)",
        {200: Explain},
        errors=READ,
        params=(("az", NAME), ("flavor", NAME)),
    ),
    Operation("/v1/requests", "get", "maker-checker requests", {200: ChangesReply}, errors=READ),
    Operation(
        "/v1/requests",
        "post",
        "ask for a destructive change (admin; runs once another admin approves)",
        {202: ChangeReply},
        body=ChangeAsk,
        errors=WRITE,
    ),
    Operation(
        "/v1/requests/{request_id}",
        "get",
        "one request",
        {200: ChangeReply},
        errors=READ,
        params=(("request_id", NAME),),
    ),
    Operation(
        "/v1/requests/{request_id}/approve",
        "post",
        "approve (another admin) and run",
        {200: ChangeReply},
        errors=(*WRITE, 409, 502),
        params=(("request_id", NAME),),
    ),
]


def _codes(status: int) -> str:
    codes = sorted(
        code
        for code, cls in CODES.items()
        if cls.http_status == status
        and not code.startswith("agent_")
        and code not in ("server_unreachable", "unexpected_reply")
    )
    return ", ".join(codes) or "error"


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _schemas() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every model's schema, by model name, and the refs to them."""
    models: list[tuple[type[BaseModel], Any]] = [(ErrorBody, "serialization")]
    for op in OPERATIONS:
        if op.body is not None:
            models.append((op.body, "validation"))
        models += [(m, "serialization") for m in op.replies.values() if m is not None]
    refs, top = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)
    by_name = {model.__name__: ref for (model, _mode), ref in refs.items()}
    return by_name, top.get("$defs", {})


def _operation(op: Operation, refs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, model in op.replies.items():
        reply: dict[str, Any] = {"description": "ok" if status < 400 else "not ready"}
        if op.text:
            reply["content"] = {"text/plain": {"schema": {"type": "string"}}}
        elif model is None:
            reply.update(_json({"type": "object"}))
        else:
            reply.update(_json(refs[model.__name__]))
        responses[str(status)] = reply
    for status in op.errors:
        responses[str(status)] = {"description": _codes(status), **_json(refs[ErrorBody.__name__])}
    out: dict[str, Any] = {"summary": op.summary, "operationId": _op_id(op), "responses": responses}
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": pattern},
        }
        for name, pattern in op.params
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in op.query
    ]
    parameters += [
        {
            "name": name,
            "in": "header",
            "required": False,
            "description": text,
            "schema": {"type": "string", "pattern": pattern},
        }
        for name, pattern, text in op.headers
    ]
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {"required": True, **_json(refs[op.body.__name__])}
    out["security"] = [{"bearer": []}] if op.secured else []
    return out


def _op_id(op: Operation) -> str:
    words = [w.strip("{}") for w in op.path.strip("/").replace(".", "_").split("/")]
    return "_".join([op.method, *[w for w in words if w != "v1"]])


def document(version: str, max_count: int | None = None) -> dict[str, Any]:
    """The document of this instance: ``max_count`` is the most VMs one
    acquisition may ask for here (its config and its store's transaction size)."""
    refs, schemas = _schemas()
    if max_count is not None:
        schemas["AcquireRequest"]["properties"]["count"]["maximum"] = max_count
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "warmcache",
            "version": version,
            "description": "Pools of ready VMs, acquired rack-aware in milliseconds. "
            "Every error body is {error: <stable code>, detail}.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "paths": paths,
    }
