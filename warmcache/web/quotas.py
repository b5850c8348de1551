"""``/v1/quotas``: every requester's limits (``warmcache.claims.quotas``),
kept in the store and followed by every instance. Reading needs ``user``;
``PUT`` and ``DELETE`` ask for a maker-checker change (202: a pending
request another admin approves at ``/v1/requests/<id>/approve``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g

from warmcache.errors import UnknownQuota
from warmcache.schemas import ChangeReply, ChangeRequest, QuotaBody, QuotasReply
from warmcache.web.api import _body, _reply, _service

quotas_api = Blueprint("quotas", __name__)


@quotas_api.get("/v1/quotas")
def quotas() -> Any:
    service = _service()
    service.acquirer.catch_up()
    return _reply(QuotasReply(quotas=service.acquirer.quota_limits.entries()))


@quotas_api.get("/v1/quotas/<requester>")
def get_quota(requester: str) -> Any:
    service = _service()
    service.acquirer.catch_up()
    found = service.acquirer.quota_limits.get(requester)
    if found is None:
        raise UnknownQuota(requester)
    return _reply(found)


def _ask(action: str, params: dict[str, Any]) -> Any:
    asked = _service().approvals.ask(action, params, g.identity.name)
    return _reply(ChangeReply(request=ChangeRequest.model_validate(asked.model_dump())), 202)


@quotas_api.put("/v1/quotas/<requester>")
def put_quota(requester: str) -> Any:
    body: QuotaBody = _body(QuotaBody)
    limits = [q.model_dump(exclude_none=False) for q in body.limits]
    return _ask("set_quota", {"requester": requester, "limits": limits})


@quotas_api.delete("/v1/quotas/<requester>")
def delete_quota(requester: str) -> Any:
    return _ask("delete_quota", {"requester": requester})
