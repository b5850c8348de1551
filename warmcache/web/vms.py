"""``/v1/vms``: every tracked VM looked up, and a handed-out VM's day 2:
released (202: it is ``releasing``; its agent deletes or recycles it),
its lease renewed, data disks attached and detached.

Who may: a ``user`` token acts on the VMs it holds (its name is their
requester) and sees only those (another's is 404 ``unknown_vm``; an act on
another's VM it can name is 403 ``forbidden``); an ``admin`` token on any.
With authentication off, every caller is an admin.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, request
from pydantic import ValidationError

from warmcache.errors import Forbidden, InvalidRequest
from warmcache.schemas import DiskBody, ReleaseReply, RenewBody, Vm, VmsQuery, VmsReply
from warmcache.web.api import _body, _reply, _service
from warmcache.web.auth import Authenticator

vms_api = Blueprint("vms", __name__)


def _who() -> tuple[str, bool]:
    """The caller's name and whether it acts as an admin."""
    auth: Authenticator = current_app.extensions["warmcache.auth"]
    if not auth.enabled:
        return "anonymous", True
    return g.identity.name, g.identity.role == "admin"


def _viewer() -> str | None:
    """A user token's name (it sees only its own VMs); None for an admin."""
    name, admin = _who()
    return None if admin else name


@vms_api.get("/v1/vms/<name>")
def get_vm(name: str) -> Any:
    return _reply(Vm.of(_service().lifecycle.vm(name, _viewer()).record))


@vms_api.get("/v1/vms")
def list_vms() -> Any:
    """A page of VMs in name order (``after``: the previous page's ``next``)."""
    try:
        query = VmsQuery.model_validate(dict(request.args), strict=False)
    except ValidationError as exc:
        raise InvalidRequest.from_validation("invalid query", exc) from exc
    requester = query.requester
    viewer = _viewer()
    if viewer is not None:
        if requester not in (None, viewer):
            raise Forbidden(viewer, "admin (to see another requester's VMs)")
        requester = viewer
    vms, after = _service().lifecycle.vms(
        state=query.state.value if query.state else None,
        requester=requester,
        az=query.az,
        flavor=query.flavor,
        limit=query.limit,
        after=query.after,
    )
    return _reply(VmsReply(vms=[Vm.of(vm) for vm in vms], next=after))


@vms_api.delete("/v1/vms/<name>")
def release_vm(name: str) -> Any:
    by, admin = _who()
    released = _service().lifecycle.release(name, by, admin=admin)
    return _reply(ReleaseReply(vms=[Vm.of(released)]), 202)


@vms_api.delete("/v1/claims/<claim_id>")
def release_claim(claim_id: str) -> Any:
    by, admin = _who()
    released = _service().lifecycle.release_claim(claim_id, by, admin=admin)
    return _reply(ReleaseReply(vms=[Vm.of(vm) for vm in released]), 202)


@vms_api.post("/v1/vms/<name>/renew")
def renew(name: str) -> Any:
    body: RenewBody = _body(RenewBody)
    by, admin = _who()
    return _reply(Vm.of(_service().lifecycle.renew(name, body.lease_s, by, admin=admin)))


@vms_api.post("/v1/vms/<name>/disks")
def attach_disk(name: str) -> Any:
    body: DiskBody = _body(DiskBody)
    by, admin = _who()
    vm = _service().lifecycle.attach_disk(name, body.size_gib, body.preallocation, by, admin=admin)
    return _reply(Vm.of(vm), 201)


@vms_api.delete("/v1/vms/<name>/disks/<target>")
def detach_disk(name: str, target: str) -> Any:
    by, admin = _who()
    return _reply(Vm.of(_service().lifecycle.detach_disk(name, target, by, admin=admin)))
