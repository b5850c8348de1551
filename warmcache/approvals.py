"""Maker-checker for destructive operations (deleting a pool's rule, purging
a pool, draining a hypervisor): the first call only records a pending
request; a different identity must approve it before it runs; requests
expire. Every step is an event. Requests live in the store at
``<prefix>/requests/<id>``, so any instance can take the approval.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from warmcache.actions import ACTIONS
from warmcache.context import ServiceContext
from warmcache.errors import ApprovalRefused, InvalidRequest, RequestConflict, UnknownRequest
from warmcache.ports import Compare, Put


class ChangeRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    action: str
    params: dict[str, Any]
    asked_by: str
    asked_at: float
    expires_at: float
    state: Literal["pending", "approved", "executed", "failed"] = "pending"
    approved_by: str | None = None
    result: dict[str, Any] | None = None

    def shown(self, now: float) -> dict[str, Any]:
        """As listed: a pending request past its time shows as ``expired``."""
        data = self.model_dump(mode="json")
        if self.state == "pending" and now >= self.expires_at:
            data["state"] = "expired"
        return data


class Approvals:
    def __init__(self, context: ServiceContext, *, ttl_s: float) -> None:
        self._context = context
        self._store = context.store
        self._keys = context.keys
        self._clock = context.clock
        self._ttl_s = ttl_s
        self._emit = context.emit

    def ask(self, action: str, params: Mapping[str, Any], by: str) -> ChangeRequest:
        """Record a pending request; nothing is changed yet."""
        if action not in ACTIONS:
            raise InvalidRequest(f"unknown action {action!r}; one of: {', '.join(ACTIONS)}")
        try:
            checked = ACTIONS[action].params.model_validate(dict(params))
        except ValidationError as exc:
            raise InvalidRequest.from_validation(f"invalid parameters for {action}", exc) from exc
        ACTIONS[action].precheck(self._context, checked)  # an unknown target: nothing recorded
        now = self._clock.now()
        request = ChangeRequest(
            id=uuid.uuid4().hex[:12],
            action=action,
            params=checked.model_dump(mode="json"),
            asked_by=by,
            asked_at=now,
            expires_at=now + self._ttl_s,
        )
        key = self._keys.request(request.id)
        self._store.txn([Compare.absent(key)], [Put(key, request.model_dump_json())])
        self._emit(
            "request.created", id=request.id, action=action, params=request.params, asked_by=by
        )
        return request

    def get(self, request_id: str) -> ChangeRequest:
        kv = self._store.get(self._keys.request(request_id)) if request_id.isalnum() else None
        if kv is None:
            raise UnknownRequest(request_id)
        return ChangeRequest.model_validate_json(kv.value)

    def list(self) -> list[dict[str, Any]]:
        kvs, _ = self._store.range(self._keys.requests_dir())
        now = self._clock.now()
        reqs = [ChangeRequest.model_validate_json(kv.value) for kv in kvs]
        return [r.shown(now) for r in sorted(reqs, key=lambda r: r.asked_at)]

    def approve(self, request_id: str, by: str) -> ChangeRequest:
        """Approve and run a pending request (by someone other than the asker)."""
        kv = self._store.get(self._keys.request(request_id)) if request_id.isalnum() else None
        if kv is None:
            raise UnknownRequest(request_id)
        request = ChangeRequest.model_validate_json(kv.value)
        if request.state != "pending":
            raise RequestConflict(request_id, request.state)
        if self._clock.now() >= request.expires_at:
            self._emit("request.expired", id=request_id, action=request.action)
            raise RequestConflict(request_id, "expired")
        if by == request.asked_by:
            self._emit("request.refused", id=request_id, by=by, reason="same identity")
            raise ApprovalRefused(
                f"{by} asked for request {request_id}; a different identity must approve it"
            )
        approved = request.model_copy(update={"state": "approved", "approved_by": by})
        key = self._keys.request(request_id)
        # Only one approval can win, even from two instances at once.
        if not self._store.txn(
            [Compare.mod_revision(key, kv.mod_revision)], [Put(key, approved.model_dump_json())]
        ).succeeded:
            raise RequestConflict(request_id, self.get(request_id).state)
        self._emit("request.approved", id=request_id, action=request.action, by=by)
        try:
            result = ACTIONS[request.action].execute(self._context, request.params)
            done = approved.model_copy(update={"state": "executed", "result": result})
        except Exception as exc:
            done = approved.model_copy(update={"state": "failed", "result": {"error": str(exc)}})
        self._store.put(key, done.model_dump_json())
        self._emit(
            f"request.{done.state}", id=request_id, action=request.action, result=done.result
        )
        return done
