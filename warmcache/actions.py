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

from warmcache.health.purge import purge_pool
from warmcache.inventory import HostView
from warmcache.layout import Keys
from warmcache.model import NAME_PATTERN
from warmcache.ports import Clock, CoordinationStore, HostAgent


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PoolTarget(_Params):
    az: StrictStr = Field(pattern=NAME_PATTERN)
    flavor: StrictStr = Field(pattern=NAME_PATTERN)


class HostTarget(_Params):
    hypervisor: StrictStr = Field(pattern=NAME_PATTERN)


@dataclass(frozen=True)
class ChangeContext:
    """What an approved change may act on."""

    store: CoordinationStore
    keys: Keys
    clock: Clock
    hosts: HostView
    agent_for: Callable[[str], HostAgent]
    emit: Callable[..., None]


P = TypeVar("P", bound=_Params)


@dataclass(frozen=True)
class ChangeAction(Generic[P]):
    params: type[P]
    summary: str
    run: Callable[[ChangeContext, P], dict[str, Any]]

    def execute(self, context: ChangeContext, params: dict[str, Any]) -> dict[str, Any]:
        return self.run(context, self.params.model_validate(params))


def _delete_rule(ctx: ChangeContext, target: PoolTarget) -> dict[str, Any]:
    return {"deleted": ctx.store.delete(ctx.keys.rule(target.az, target.flavor))}


def _drain_hypervisor(ctx: ChangeContext, target: HostTarget) -> dict[str, Any]:
    # No new VM is placed there and none of its pooled VMs is handed out.
    ctx.store.put(ctx.keys.drain(target.hypervisor), json.dumps({"at": ctx.clock.now()}))
    return {"drained": target.hypervisor}


def _purge_pool(ctx: ChangeContext, target: PoolTarget) -> dict[str, Any]:
    return purge_pool(ctx.store, ctx.keys, ctx.hosts, ctx.agent_for, ctx.emit,
                      target.az, target.flavor)


ACTIONS: dict[str, ChangeAction[Any]] = {
    "delete_rule": ChangeAction(PoolTarget, "delete a pool's build rule", _delete_rule),
    "purge_pool": ChangeAction(PoolTarget, "destroy a pool's ready and reserved VMs",
                               _purge_pool),
    "drain_hypervisor": ChangeAction(HostTarget, "place nothing on a hypervisor and hand "
                                     "out none of its VMs", _drain_hypervisor),
}
