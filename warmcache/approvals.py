"""Maker-checker for destructive operations (deleting a pool's rule, purging
a pool, draining a hypervisor): the first call only records a pending
request; a different identity must approve it before it runs; requests
expire. Every step is an event. Requests live in the store at
``<prefix>/requests/<id>``, so any instance can take the approval.

An approved request runs under a lease: its record names the instance
running it and when its lease ends, renewed while the action runs. If that
instance dies mid-action (a purge half done), every instance's
``resume_job`` finds the lease past its time, takes the request over
(compare-and-set: one wins) and runs the action again from the start;
actions are idempotent (a second purge deletes what the first left). A
request ends ``executed`` or ``failed`` with why, never stays ``approved``:
after ``MAX_ATTEMPTS`` runs that never finished, it is ``failed``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from warmcache.actions import ACTIONS
from warmcache.context import ServiceContext
from warmcache.errors import (
    ApprovalRefused,
    InvalidRequest,
    RequestConflict,
    StoreError,
    UnknownRequest,
)
from warmcache.ports import Compare, KeyValue, Put

log = logging.getLogger(__name__)

LEASE_S = 30.0  # an approved request's runner renews this every LEASE_S / 3
MAX_ATTEMPTS = 3  # runs of one request (the first and two takeovers)
RESUME_EVERY_S = 10.0


class ChangeRequest(BaseModel):
    # "ignore": a newer instance's fields do not stop an older one reading it
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    action: str
    params: dict[str, Any]
    asked_by: str
    asked_at: float
    expires_at: float
    state: Literal["pending", "approved", "executed", "failed"] = "pending"
    approved_by: str | None = None
    result: dict[str, Any] | None = None
    runner: str | None = None  # the instance running it (approved)
    lease_until: float | None = None  # its lease ends then, unless renewed
    attempts: int = 0  # runs started

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
        self._node = context.config.node

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
        approved = request.model_copy(
            update={
                "state": "approved",
                "approved_by": by,
                "runner": self._node,
                "lease_until": self._clock.now() + LEASE_S,
                "attempts": 1,
            }
        )
        key = self._keys.request(request_id)
        # Only one approval can win, even from two instances at once.
        result = self._store.txn(
            [Compare.mod_revision(key, kv.mod_revision)], [Put(key, approved.model_dump_json())]
        )
        if not result.succeeded:
            raise RequestConflict(request_id, self.get(request_id).state)
        self._emit("request.approved", id=request_id, action=request.action, by=by)
        return self._run(approved, result.revision)

    def _run(self, approved: ChangeRequest, revision: int) -> ChangeRequest:
        """Run an approved request's action under its lease (renewed from a
        thread meanwhile), then record how it ended."""
        key = self._keys.request(approved.id)
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(key, approved, revision, stop), daemon=True
        )
        renewer.start()
        try:
            result = ACTIONS[approved.action].execute(self._context, approved.params)
            done = approved.model_copy(update={"state": "executed", "result": result})
        except Exception as exc:
            done = approved.model_copy(update={"state": "failed", "result": {"error": str(exc)}})
        finally:
            stop.set()
            renewer.join()
        done = done.model_copy(update={"lease_until": None})
        self._store.put(key, done.model_dump_json())
        self._emit(
            f"request.{done.state}", id=approved.id, action=approved.action, result=done.result
        )
        return done

    def _renew(
        self, key: str, approved: ChangeRequest, revision: int, stop: threading.Event
    ) -> None:
        """Push the lease on while the action runs; stop if another
        instance took the request over (it runs the action itself)."""
        while not stop.wait(LEASE_S / 3):
            renewed = approved.model_copy(update={"lease_until": self._clock.now() + LEASE_S})
            try:
                result = self._store.txn(
                    [Compare.mod_revision(key, revision)], [Put(key, renewed.model_dump_json())]
                )
            except StoreError as exc:
                log.warning("request %s: lease not renewed: %s", approved.id, exc)
                continue
            if not result.succeeded:
                return
            revision = result.revision

    def resume_job(self) -> float:
        """Take over approved requests whose runner's lease ran out (the
        instance died mid-action) and run them again; one past its
        ``MAX_ATTEMPTS`` runs is ``failed``. Returns when to look again."""
        kvs, _ = self._store.range(self._keys.requests_dir())
        now = self._clock.now()
        for kv in kvs:
            try:
                request = ChangeRequest.model_validate_json(kv.value)
            except ValueError:
                continue
            if request.state != "approved":
                continue
            if request.lease_until is not None and request.lease_until > now:
                continue
            self._take_over(kv, request, now)
        return RESUME_EVERY_S

    def _take_over(self, kv: KeyValue, request: ChangeRequest, now: float) -> None:
        if request.attempts >= MAX_ATTEMPTS:
            why = f"{request.attempts} run(s) never finished (their instances stopped)"
            ended = request.model_copy(
                update={"state": "failed", "result": {"error": why}, "lease_until": None}
            )
            if self._store.txn(
                [Compare.mod_revision(kv.key, kv.mod_revision)],
                [Put(kv.key, ended.model_dump_json())],
            ).succeeded:
                self._emit(
                    "request.failed", id=request.id, action=request.action, result=ended.result
                )
            return
        taken = request.model_copy(
            update={
                "runner": self._node,
                "lease_until": now + LEASE_S,
                "attempts": request.attempts + 1,
            }
        )
        result = self._store.txn(
            [Compare.mod_revision(kv.key, kv.mod_revision)], [Put(kv.key, taken.model_dump_json())]
        )
        if not result.succeeded:
            return  # another instance took it, or its runner renewed
        self._emit(
            "request.resumed",
            id=request.id,
            action=request.action,
            previous=request.runner,
            attempt=taken.attempts,
        )
        self._run(taken, result.revision)
