"""The ``/v1`` HTTP API. Bodies are validated strictly (unknown fields,
wrong types: 400 ``invalid_request``); errors share one shape:
``{"error": "<stable code>", "detail": ...}``."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError

from warmcache.errors import (
    InvalidRequest,
    UnknownClaim,
    UnknownImage,
    UnknownNetwork,
    UnknownRule,
    UnsupportedMediaType,
)
from warmcache.model import BuildRule
from warmcache.networks import AddressPool
from warmcache.schemas import (
    AcquireLatency,
    AcquireReply,
    AcquireRequest,
    AgentsReply,
    BudgetEntry,
    BudgetsReply,
    ChangeAsk,
    ChangeReply,
    ChangeRequest,
    ChangesReply,
    Claim,
    Explain,
    Health,
    ImageEntry,
    ImagesReply,
    LeaderReply,
    NetworkEntry,
    NetworksReply,
    PoolsReply,
    Ready,
    RuleEntry,
    RulesReply,
    Vm,
)
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
    if request.path in OPEN_PATHS or request.blueprint == "dashboard":
        return  # the dashboard signs its browsers in itself (warmcache.web.dashboard)
    auth: Authenticator = current_app.extensions["warmcache.auth"]
    identity = auth.identify(request.headers.get("Authorization"))
    identity.require(_role_for(request.method, request.path))
    g.identity = identity


def _role_for(method: str, path: str) -> str:
    """Reads, acquisitions and a holder's acts on its own VMs (checked per
    VM in ``web.vms``) need ``user``; every other change ``admin``."""
    if method in ("GET", "HEAD") or path == "/v1/acquire" or path.startswith("/v1/vms/"):
        return "user"
    if method == "DELETE" and path.startswith("/v1/claims/"):
        return "user"
    return "admin"


def _service() -> WarmCache:
    service: WarmCache = current_app.extensions["warmcache"]
    return service


class DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object that names a key twice is refused, not read as its last
    value (two parsers of one body must never disagree on what it says)."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(key[:100])
        found[key] = value
    return found


def _json_object() -> dict[str, Any]:
    """The request body as a JSON object, or a typed refusal: 415 unless it
    says it is JSON (a cross-site form or text/plain POST cannot), 413 over
    the body limit (read no further), 400 for anything json cannot make
    sense of, nesting too deep and numbers too long included."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {request.mimetype or 'none'}"
        )
    raw = request.get_data(cache=False)
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except RecursionError as exc:
        raise InvalidRequest("body is nested too deeply") from exc
    except DuplicateKey as exc:
        raise InvalidRequest(f"body names {exc.args[0]!r} twice") from exc
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


def _reply(model: BaseModel, status: int = 200) -> Any:
    """A reply body from its schema model (what /v1/openapi.json documents)."""
    return current_app.response_class(
        model.model_dump_json(), status=status, mimetype="application/json"
    )


@api.get("/healthz")
def healthz() -> Any:
    """Liveness only: the process answers. Asks nothing of the store (with
    etcd stopped it once blocked for 15.7 s); /readyz does."""
    return _reply(Health(status="ok", node=_service().config.node))


@api.get("/readyz")
def readyz() -> Any:
    """Whether this instance can serve: the store, the flavor catalog and
    the event sink, each asked with its own timeout (so the answer comes
    within about a second whatever is down). 200 when all answer, else 503;
    the body says which and how fast."""
    checks = _service().readiness()
    ready = all(c["ok"] for c in checks.values())
    return _reply(Ready.model_validate({"ready": ready, "checks": checks}), 200 if ready else 503)


@api.get("/v1/pools")
def pools() -> Any:
    return _reply(PoolsReply(pools=_service().pools()))


@api.post("/v1/acquire")
def acquire() -> Any:
    """All or nothing; idempotent under ``claim_id`` (or ``Idempotency-Key``)."""
    body: AcquireRequest = _body(AcquireRequest)
    claim_id = _claim_id(body.claim_id, request.headers.get("Idempotency-Key"))
    auth: Authenticator = current_app.extensions["warmcache.auth"]
    # With authentication on, the requester is who the token says, not the body.
    requester = g.identity.name if auth.enabled else body.requester
    vms = _service().acquire(
        body.flavor,
        body.az,
        body.count,
        body.mode,
        use_reserve=body.use_reserve,
        requester=requester,
        claim_id=claim_id,
        lease_s=body.lease_s,
    )
    timing = vms[0].receipt if vms else None
    latency = (
        AcquireLatency(
            select_ms=timing.select_ms,
            commit_ms=timing.commit_ms,
            wake_ms=timing.wake_ms,
            total_ms=timing.total_ms,
        )
        if timing is not None and timing.total_ms is not None
        else None
    )
    reply = _reply(
        AcquireReply(
            claim_id=claim_id or vms[0].claim_id or "",
            vms=[Vm.of(vm) for vm in vms],
            latency=latency,
        )
    )
    if latency is not None:
        reply.headers["Server-Timing"] = ", ".join(
            f"{name};dur={value}"
            for name, value in (
                ("select", latency.select_ms),
                ("commit", latency.commit_ms),
                ("wake", latency.wake_ms),
                ("total", latency.total_ms),
            )
            if value is not None
        )
    return reply


def _claim_id(in_body: str | None, header: str | None) -> str | None:
    """The claim's id from the body or the header (the acquirer checks its form)."""
    if header is None:
        return in_body
    if in_body is not None and in_body != header:
        raise InvalidRequest("claim_id and the Idempotency-Key header differ")
    return header


@api.get("/v1/claims/<claim_id>")
def claim(claim_id: str) -> Any:
    """A claim that landed under ``claim_id``; 404 ``unknown_claim`` if none
    did. With authentication on, a ``user`` token sees only its own claims."""
    record = _service().claim(claim_id)
    auth: Authenticator = current_app.extensions["warmcache.auth"]
    if auth.enabled and g.identity.role != "admin" and record.requester != g.identity.name:
        raise UnknownClaim(claim_id)  # not yours: as if it did not exist
    return _reply(
        Claim(
            claim_id=record.claim_id,
            requester=record.requester,
            acquired_at=record.acquired_at,
            vms=[Vm.of(vm) for vm in record.vms],
        )
    )


def _rule_json(az: str, flavor: str, rule: BuildRule) -> RuleEntry:
    return RuleEntry(az=az, flavor=flavor, rule=rule)


@api.get("/v1/rules")
def rules() -> Any:
    all_rules = _service().rules.all()
    return _reply(RulesReply(rules=[_rule_json(az, f, r) for (az, f), r in all_rules.items()]))


@api.get("/v1/rules/<az>/<flavor>")
def get_rule(az: str, flavor: str) -> Any:
    rule = _service().rules.get(az, flavor)
    if rule is None:
        raise UnknownRule(az, flavor)
    return _reply(_rule_json(az, flavor, rule))


@api.put("/v1/rules/<az>/<flavor>")
def put_rule(az: str, flavor: str) -> Any:
    """Validate, then store; an invalid rule is a 400 and the old rule stays."""
    body = _json_object()
    rule = _service().rules.put(az, flavor, body)
    return _reply(_rule_json(az, flavor, rule))


def _network_entry(az: str, name: str, pool: AddressPool, held: int) -> NetworkEntry:
    return NetworkEntry(az=az, name=name, pool=pool, size=pool.size(), held=held)


@api.get("/v1/agents")
def agents() -> Any:
    versions = _service().agent_versions
    return _reply(AgentsReply(desired=versions.desired(), agents=versions.fleet()))


@api.get("/v1/networks")
def networks() -> Any:
    book = _service().networks
    pools = book.all()
    held: Counter[tuple[str, str]] = Counter()  # per pool, not per AZ
    for az in {az for az, _ in pools}:
        held.update((az, h.network) for h in book.held(az).values())
    return _reply(
        NetworksReply(
            networks=[
                _network_entry(az, name, pool, held[(az, name)])
                for (az, name), pool in pools.items()
            ]
        )
    )


@api.get("/v1/networks/<az>/<name>")
def get_network(az: str, name: str) -> Any:
    book = _service().networks
    pool = book.get(az, name)
    if pool is None:
        raise UnknownNetwork(az, name)
    held = sum(1 for h in book.held(az).values() if h.network == name)
    return _reply(_network_entry(az, name, pool, held))


@api.put("/v1/networks/<az>/<name>")
def put_network(az: str, name: str) -> Any:
    """Create (validated, refused if it overlaps); a change is maker-checker."""
    pool = _service().networks.create(az, name, _json_object())
    return _reply(_network_entry(az, name, pool, 0), 201)


@api.get("/v1/images")
def images() -> Any:
    catalog = _service().catalog
    flavors = catalog.list()
    return _reply(
        ImagesReply(
            images=[
                ImageEntry(image=i, flavors=[f.name for f in flavors if f.image_id == i.id])
                for i in catalog.images()
            ]
        )
    )


@api.get("/v1/images/<image_id>")
def get_image(image_id: str) -> Any:
    catalog = _service().catalog
    image = catalog.image(image_id)
    if image is None:
        raise UnknownImage(image_id)
    users = [f.name for f in catalog.list() if f.image_id == image_id]
    return _reply(ImageEntry(image=image, flavors=users))


@api.get("/v1/budgets")
def budgets() -> Any:
    return _reply(
        BudgetsReply(
            budgets=[BudgetEntry(az=az, budget=b) for az, b in _service().budgets.all().items()]
        )
    )


@api.get("/v1/budgets/<az>")
def get_budget(az: str) -> Any:
    return _reply(BudgetEntry(az=az, budget=_service().budgets.require(az)))


@api.put("/v1/budgets/<az>")
def put_budget(az: str) -> Any:
    """Validate, then store; an invalid budget is a 400 and the old one stays."""
    budget = _service().budgets.put(az, _json_object())
    return _reply(BudgetEntry(az=az, budget=budget))


@api.delete("/v1/budgets/<az>")
def delete_budget(az: str) -> Any:
    """The AZ's demand pools go back to their own targets (within their ceilings)."""
    book = _service().budgets
    budget = book.require(az)
    book.delete(az)
    return _reply(BudgetEntry(az=az, budget=budget))


@api.get("/v1/explain/<az>/<flavor>")
def explain(az: str, flavor: str) -> Any:
    return _reply(Explain.model_validate(_service().explain(az, flavor)))


@api.post("/v1/requests")
def ask_change() -> Any:
    """Maker: record a destructive change; it runs only once someone else approves."""
    body: ChangeAsk = _body(ChangeAsk)
    request_ = _service().approvals.ask(body.action, body.params, g.identity.name)
    return _reply(ChangeReply(request=ChangeRequest.model_validate(request_.model_dump())), 202)


@api.get("/v1/requests")
def list_changes() -> Any:
    return _reply(ChangesReply.model_validate({"requests": _service().approvals.list()}))


@api.get("/v1/requests/<request_id>")
def get_change(request_id: str) -> Any:
    service = _service()
    shown = service.approvals.get(request_id).shown(service.clock.now())
    return _reply(ChangeReply.model_validate({"request": shown}))


@api.post("/v1/requests/<request_id>/approve")
def approve_change(request_id: str) -> Any:
    """Checker: a different identity approves, and the change runs now."""
    done = _service().approvals.approve(request_id, g.identity.name)
    return _reply(ChangeReply(request=ChangeRequest.model_validate(done.model_dump())))


@api.get("/metrics")
def metrics() -> Any:
    return current_app.response_class(
        _service().metrics.render(), mimetype="text/plain; version=0.0.4"
    )


@api.get("/v1/openapi.json")
def openapi() -> Any:
    from warmcache import __version__

    return jsonify(document(__version__, _service().acquirer.max_count))


@api.get("/v1/leader")
def leader() -> Any:
    return _reply(LeaderReply.model_validate({"leader": _service().leader()}))
