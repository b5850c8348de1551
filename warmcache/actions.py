"""The destructive changes that go through maker-checker
(``warmcache.approvals``): one registry of ``{action: (params model,
handler)}`` that the approvals, the HTTP API, its OpenAPI document and the
CLI all read. A new action is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from warmcache.agent_versions import AgentVersions, DesiredAgent
from warmcache.change_params import (
    PARAMS,
    AgentBuild,
    HostDrain,
    HostTarget,
    ImageChange,
    ImageTarget,
    NetworkUpdate,
    QuotaChange,
    QuotaTarget,
    RackDrain,
    RackTarget,
    StoredNetwork,
    StoredPool,
    VmTarget,
    _Params,
)
from warmcache.claims.quota_limits import entry as quota_entry
from warmcache.config import QuotaLimit
from warmcache.context import ServiceContext
from warmcache.drains import Drain, Evacuate
from warmcache.errors import (
    ConfigError,
    ImageInUse,
    UnknownHypervisor,
    UnknownQuota,
    UnknownRack,
    UnknownVm,
)
from warmcache.layout import PoolRecords, RuleRecords
from warmcache.model import InstanceState
from warmcache.networks import NetworkBook
from warmcache.purge import purge_pool, purge_vm
from warmcache.vms.book import Found, find_vm

P = TypeVar("P", bound=_Params)


@dataclass(frozen=True)
class ChangeAction(Generic[P]):
    params: type[P]
    summary: str
    run: Callable[[ServiceContext, P], dict[str, Any]]
    # Asked before a request is recorded: a typed error (an unknown host,
    # say) refuses the ask, and nothing is recorded.
    check: Callable[[ServiceContext, P], None] | None = None

    def execute(self, context: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
        return self.run(context, self.params.model_validate(params))

    def precheck(self, context: ServiceContext, params: P) -> None:
        if self.check is not None:
            self.check(context, params)


def _delete_rule(ctx: ServiceContext, target: StoredPool) -> dict[str, Any]:
    """The rule goes, then the pool's ready and reserved VMs (a VM still
    building when the rule went is retired by the next cycle); acquisitions
    of the pool get ``unknown_pool``; handed-out VMs stay with their holders."""
    deleted = ctx.store.delete(ctx.keys.rule(target.az, target.flavor))
    retired = _purge_pool(ctx, target)
    return {"deleted": deleted, **retired}


def _known_host(ctx: ServiceContext, target: HostTarget) -> None:
    """A host that heartbeats, or that holds VMs warmcache tracks (a dead
    host may be drained before it comes back)."""
    ctx.hosts.catch_up()
    if ctx.hosts.get(target.hypervisor) is not None:
        return
    records = PoolRecords(ctx.store, ctx.keys)
    if any(
        item.record.hypervisor == target.hypervisor
        for item in [*records.read()[0], *records.acquired()]
    ):
        return
    raise UnknownHypervisor(target.hypervisor)


def _known_rack(ctx: ServiceContext, target: RackTarget) -> None:
    ctx.hosts.catch_up()
    if not any(h.az == target.az and h.rack == target.rack for h in ctx.hosts.hosts()):
        raise UnknownRack(target.az, target.rack)


def _drain_value(ctx: ServiceContext, evacuate: Evacuate) -> str:
    return Drain(at=ctx.clock.now(), evacuate=evacuate).model_dump_json()


def _drain_hypervisor(ctx: ServiceContext, target: HostDrain) -> dict[str, Any]:
    """No new VM is placed there; its pooled VMs go as ``evacuate`` says
    (``warmcache.drains``)."""
    ctx.store.put(ctx.keys.drain(target.hypervisor), _drain_value(ctx, target.evacuate))
    ctx.emit("host.drained", hypervisor=target.hypervisor, evacuate=target.evacuate)
    return {"drained": target.hypervisor, "evacuate": target.evacuate}


def _undrain_hypervisor(ctx: ServiceContext, target: HostTarget) -> dict[str, Any]:
    was = ctx.store.delete(ctx.keys.drain(target.hypervisor))
    ctx.emit("host.undrained", hypervisor=target.hypervisor, was_drained=was)
    return {"undrained": target.hypervisor, "was_drained": was}


def _drain_rack(ctx: ServiceContext, target: RackDrain) -> dict[str, Any]:
    ctx.store.put(ctx.keys.rack_drain(target.az, target.rack), _drain_value(ctx, target.evacuate))
    ctx.emit("rack.drained", az=target.az, rack=target.rack, evacuate=target.evacuate)
    return {"drained": {"az": target.az, "rack": target.rack}, "evacuate": target.evacuate}


def _undrain_rack(ctx: ServiceContext, target: RackTarget) -> dict[str, Any]:
    was = ctx.store.delete(ctx.keys.rack_drain(target.az, target.rack))
    ctx.emit("rack.undrained", az=target.az, rack=target.rack, was_drained=was)
    return {"undrained": {"az": target.az, "rack": target.rack}, "was_drained": was}


def _find_vm(ctx: ServiceContext, name: str) -> Found:
    azs = {h.az for h in ctx.hosts.hosts()} | {
        az for az, _ in RuleRecords(ctx.store, ctx.keys).all()
    }
    found = find_vm(ctx.store, ctx.keys, azs, name)
    if found is None:
        raise UnknownVm(name)
    return found


def _known_vm(ctx: ServiceContext, target: VmTarget) -> None:
    _find_vm(ctx, target.name)


def _purge_vm(ctx: ServiceContext, target: VmTarget) -> dict[str, Any]:
    """One VM, whatever its state: a pooled one is destroyed through its
    agent and its record removed; a handed-out one is taken back from its
    holder and deleted (never recycled) by the release worker."""
    found = _find_vm(ctx, target.name)
    rec = found.record
    if found.folder == "acquired":
        if ctx.release_vm is None:
            raise ConfigError("this service cannot release VMs (no release worker)")
        releasing = ctx.release_vm(rec.name)
        ctx.emit("vm.purge_asked", name=rec.name, az=rec.az, state="acquired")
        return {"name": rec.name, "was": "acquired", "now": releasing.state.value}
    if found.folder == "releasing":
        return {"name": rec.name, "was": rec.state.value, "now": rec.state.value}
    host = ctx.hosts.get(rec.hypervisor)
    agent = ctx.agent_for(host.endpoint) if host and host.endpoint else None
    purged = purge_vm(ctx.store.txn, found.key, found.revision, rec, agent, ctx.addresses)
    ctx.emit(
        "vm.purged",
        name=rec.name,
        az=rec.az,
        flavor=rec.flavor,
        hypervisor=rec.hypervisor,
        reason="operator",
        done=purged,
    )
    return {
        "name": rec.name,
        "was": rec.state.value,
        # not purged: acquired meanwhile, or its agent could not destroy it
        # (the record stays purging and the health poller tries again)
        "now": "purged" if purged else "purging",
    }


def _purge_pool(ctx: ServiceContext, target: StoredPool) -> dict[str, Any]:
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


def _delete_network(ctx: ServiceContext, target: StoredNetwork) -> dict[str, Any]:
    deleted = NetworkBook(ctx.store, ctx.keys).delete(target.az, target.name)
    ctx.emit("network.deleted", az=target.az, name=target.name)
    return {"deleted": deleted}


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


def _set_quota(ctx: ServiceContext, change: QuotaChange) -> dict[str, Any]:
    """Every instance applies it from its next acquisition (``acquire.quota_limits``)."""
    limits = [
        QuotaLimit.model_validate({**q.model_dump(), "requester": change.requester})
        for q in change.limits
    ]
    value = quota_entry(change.requester, limits, ctx.clock.now(), "operator")
    ctx.store.put(ctx.keys.quota_limit(change.requester), value.model_dump_json())
    ctx.emit("quota.set", requester=change.requester, limits=len(limits))
    return {"requester": change.requester, "limits": len(limits)}


def _known_quota(ctx: ServiceContext, target: QuotaTarget) -> None:
    if ctx.store.get(ctx.keys.quota_limit(target.requester)) is None:
        raise UnknownQuota(target.requester)


def _delete_quota(ctx: ServiceContext, target: QuotaTarget) -> dict[str, Any]:
    """The requester's limits go (its counters stay, unused, until they expire)."""
    deleted = ctx.store.delete(ctx.keys.quota_limit(target.requester))
    ctx.emit("quota.deleted", requester=target.requester, was_set=deleted)
    return {"requester": target.requester, "deleted": deleted}


def _set_agent_version(ctx: ServiceContext, build: AgentBuild) -> dict[str, Any]:
    desired = DesiredAgent.model_validate(build.model_dump())
    AgentVersions(ctx.store, ctx.keys, ctx.hosts).set_desired(desired)
    ctx.emit("agents.desired", version=desired.version, sha256=desired.sha256)
    return {"desired": desired.version}


ACTIONS: dict[str, ChangeAction[Any]] = {
    "delete_rule": ChangeAction(*PARAMS["delete_rule"], _delete_rule),
    "purge_pool": ChangeAction(*PARAMS["purge_pool"], _purge_pool),
    "drain_hypervisor": ChangeAction(
        *PARAMS["drain_hypervisor"],
        _drain_hypervisor,
        _known_host,
    ),
    "undrain_hypervisor": ChangeAction(
        *PARAMS["undrain_hypervisor"], _undrain_hypervisor, _known_host
    ),
    "drain_rack": ChangeAction(
        *PARAMS["drain_rack"],
        _drain_rack,
        _known_rack,
    ),
    "undrain_rack": ChangeAction(*PARAMS["undrain_rack"], _undrain_rack, _known_rack),
    "purge_vm": ChangeAction(
        *PARAMS["purge_vm"],
        _purge_vm,
        _known_vm,
    ),
    "update_network": ChangeAction(*PARAMS["update_network"], _update_network),
    "set_agent_version": ChangeAction(*PARAMS["set_agent_version"], _set_agent_version),
    "delete_network": ChangeAction(*PARAMS["delete_network"], _delete_network),
    "set_image": ChangeAction(
        *PARAMS["set_image"],
        _set_image,
    ),
    "set_quota": ChangeAction(*PARAMS["set_quota"], _set_quota),
    "delete_quota": ChangeAction(*PARAMS["delete_quota"], _delete_quota, _known_quota),
    "delete_image": ChangeAction(*PARAMS["delete_image"], _delete_image),
}
