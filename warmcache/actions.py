"""The destructive changes that go through maker-checker
(``warmcache.approvals``): one registry of ``{action: (params model,
handler)}`` that the approvals, the HTTP API, its OpenAPI document and the
CLI all read. A new action is one entry here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from warmcache.agent_versions import AgentVersions, DesiredAgent
from warmcache.context import ServiceContext
from warmcache.errors import ImageInUse
from warmcache.health.purge import purge_pool
from warmcache.images import Image
from warmcache.layout import PoolRecords
from warmcache.model import NAME_PATTERN, InstanceState
from warmcache.networks import AddressPool, NetworkBook


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PoolTarget(_Params):
    az: StrictStr = Field(pattern=NAME_PATTERN)
    flavor: StrictStr = Field(pattern=NAME_PATTERN)


class HostTarget(_Params):
    hypervisor: StrictStr = Field(pattern=NAME_PATTERN)


class NetworkTarget(_Params):
    az: StrictStr = Field(pattern=NAME_PATTERN)
    name: StrictStr = Field(pattern=NAME_PATTERN)


class NetworkUpdate(NetworkTarget):
    pool: AddressPool


P = TypeVar("P", bound=_Params)


@dataclass(frozen=True)
class ChangeAction(Generic[P]):
    params: type[P]
    summary: str
    run: Callable[[ServiceContext, P], dict[str, Any]]

    def execute(self, context: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
        return self.run(context, self.params.model_validate(params))


def _delete_rule(ctx: ServiceContext, target: PoolTarget) -> dict[str, Any]:
    return {"deleted": ctx.store.delete(ctx.keys.rule(target.az, target.flavor))}


def _drain_hypervisor(ctx: ServiceContext, target: HostTarget) -> dict[str, Any]:
    # No new VM is placed there and none of its pooled VMs is handed out.
    ctx.store.put(ctx.keys.drain(target.hypervisor), json.dumps({"at": ctx.clock.now()}))
    return {"drained": target.hypervisor}


def _purge_pool(ctx: ServiceContext, target: PoolTarget) -> dict[str, Any]:
    return purge_pool(
        ctx.store,
        ctx.keys,
        ctx.hosts,
        ctx.agent_for,
        ctx.emit,
        target.az,
        target.flavor,
        ctx.addresses,
    )


def _update_network(ctx: ServiceContext, change: NetworkUpdate) -> dict[str, Any]:
    NetworkBook(ctx.store, ctx.keys).replace(change.az, change.name, change.pool)
    ctx.emit("network.updated", az=change.az, name=change.name)
    return {"updated": True, "size": change.pool.size()}


def _delete_network(ctx: ServiceContext, target: NetworkTarget) -> dict[str, Any]:
    deleted = NetworkBook(ctx.store, ctx.keys).delete(target.az, target.name)
    ctx.emit("network.deleted", az=target.az, name=target.name)
    return {"deleted": deleted}


class AgentBuild(DesiredAgent, _Params):
    pass


class ImageTarget(_Params):
    id: StrictStr = Field(pattern=NAME_PATTERN)


class ImageChange(_Params):
    image: Image


def _set_image(ctx: ServiceContext, change: ImageChange) -> dict[str, Any]:
    """Register an image or point its id at new bytes: pools whose flavor
    names it roll over to the new bytes (their generation includes the
    image's sha256); the catalog refuses a change that would leave a
    flavor's disk below the image's minimum."""
    before = ctx.catalog.image(change.image.id)
    image = ctx.catalog.put_image(change.image)
    ctx.emit(
        "image.updated",
        image=image.id,
        sha256=image.sha256,
        previous_sha256=before.sha256 if before else None,
    )
    return {"image": image.id, "sha256": image.sha256, "changed": before != image}


def image_users(ctx: ServiceContext, image_id: str) -> int:
    """VMs warmcache tracks that boot ``image_id`` (pooled or handed out;
    a record from before images were recorded counts when its flavor names
    the image now)."""
    flavors = {f.name for f in ctx.catalog.list() if f.image_id == image_id}
    records = PoolRecords(ctx.store, ctx.keys)
    tracked = [item.record for item in records.read()[0]]
    tracked += [item.record for item in records.acquired()]
    return sum(
        1
        for r in tracked
        if r.state is not InstanceState.PURGED
        and (r.image == image_id or (not r.image and r.flavor in flavors))
    )


def _delete_image(ctx: ServiceContext, target: ImageTarget) -> dict[str, Any]:
    """Refused (``image_in_use``) while a flavor names the image or a VM
    warmcache tracks boots it; the catalog keeps it then."""
    flavors = sorted(f.name for f in ctx.catalog.list() if f.image_id == target.id)
    vms = image_users(ctx, target.id)
    if flavors or vms:
        raise ImageInUse(target.id, flavors, vms)
    deleted = ctx.catalog.delete_image(target.id)
    ctx.emit("image.deleted", image=target.id, deleted=deleted)
    return {"deleted": deleted}


def _set_agent_version(ctx: ServiceContext, build: AgentBuild) -> dict[str, Any]:
    desired = DesiredAgent.model_validate(build.model_dump())
    AgentVersions(ctx.store, ctx.keys, ctx.hosts).set_desired(desired)
    ctx.emit("agents.desired", version=desired.version, sha256=desired.sha256)
    return {"desired": desired.version}


ACTIONS: dict[str, ChangeAction[Any]] = {
    "delete_rule": ChangeAction(PoolTarget, "delete a pool's build rule", _delete_rule),
    "purge_pool": ChangeAction(PoolTarget, "destroy a pool's ready and reserved VMs", _purge_pool),
    "drain_hypervisor": ChangeAction(
        HostTarget, "place nothing on a hypervisor and hand out none of its VMs", _drain_hypervisor
    ),
    "update_network": ChangeAction(
        NetworkUpdate, "change an address pool (held addresses stay held)", _update_network
    ),
    "set_agent_version": ChangeAction(
        AgentBuild, "set the agent build every hypervisor should run", _set_agent_version
    ),
    "delete_network": ChangeAction(
        NetworkTarget, "delete an address pool (its VMs keep their addresses)", _delete_network
    ),
    "set_image": ChangeAction(
        ImageChange,
        "register an image, or point its id at new bytes (its pools roll over)",
        _set_image,
    ),
    "delete_image": ChangeAction(
        ImageTarget, "remove an image no flavor names and no VM boots", _delete_image
    ),
}
