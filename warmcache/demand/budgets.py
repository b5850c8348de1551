"""AZ budgets for demand-sized pools, at ``<prefix>/budgets/<az>``.

A budget caps what an AZ's pools hold (ready, reserved and building), in
VMs, in vCPUs, or in cost units (each VM weighted by its standby tier,
``[cost]``): static pools take their ``total_instances`` first, and the
rest is split over the demand-sized pools by what one more VM saves
(``warmcache.demand.split``). Placement capacity stays a hard limit on
top. Every write is validated first; a bad budget raises
``InvalidRequest`` and the stored one is left as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from warmcache.errors import InvalidRequest, NotFound
from warmcache.layout import Keys
from warmcache.model import JsonInt, is_valid_name
from warmcache.ports import CoordinationStore

MAX_BUDGET = 10_000_000


class _Budget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VmBudget(_Budget):
    """At most ``vms`` VMs in the AZ's pools."""

    vms: JsonInt = Field(ge=0, le=MAX_BUDGET)

    @property
    def unit(self) -> Literal["vms", "vcpus", "cost"]:
        return "vms"

    @property
    def amount(self) -> int:
        return self.vms


class VcpuBudget(_Budget):
    """At most ``vcpus`` vCPUs in the AZ's pools."""

    vcpus: JsonInt = Field(ge=0, le=MAX_BUDGET)

    @property
    def unit(self) -> Literal["vms", "vcpus", "cost"]:
        return "vcpus"

    @property
    def amount(self) -> int:
        return self.vcpus


class CostBudget(_Budget):
    """At most ``cost`` cost units per hour of waiting VMs, each VM weighted
    by its tier (``[cost]``: a saved VM costs a fiftieth of a running one by
    default). Amounts are kept in hundredths of a unit."""

    cost: float = Field(ge=0, le=MAX_BUDGET, allow_inf_nan=False)

    @property
    def unit(self) -> Literal["vms", "vcpus", "cost"]:
        return "cost"

    @property
    def amount(self) -> int:
        return round(self.cost * COST_SCALE)


COST_SCALE = 100  # a cost budget's amount: hundredths of a cost unit


# What an AZ's pools may hold: {"vms": N}, {"vcpus": N} or {"cost": X}, exactly one.
Budget = VmBudget | VcpuBudget | CostBudget


class BudgetBody(RootModel[Budget]):
    """A budget as a request body: ``{"vms": N}``, ``{"vcpus": N}`` or ``{"cost": X}``."""


def parse_budget(data: Mapping[str, Any] | str) -> Budget:
    try:
        if isinstance(data, str):
            return BudgetBody.model_validate_json(data).root
        return BudgetBody.model_validate(data).root
    except ValidationError as exc:
        raise InvalidRequest.from_validation(
            'invalid budget: give {"vms": N}, {"vcpus": N} or {"cost": X}', exc
        ) from exc


class BudgetBook:
    def __init__(self, store: CoordinationStore, keys: Keys) -> None:
        self._store = store
        self._keys = keys

    def put(self, az: str, data: Mapping[str, Any] | str) -> Budget:
        if not is_valid_name(az):
            raise InvalidRequest(f"invalid AZ name {az!r}")
        budget = parse_budget(data)
        self._store.put(self._keys.budget(az), budget.model_dump_json())
        return budget

    def get(self, az: str) -> Budget | None:
        if not is_valid_name(az):
            return None
        kv = self._store.get(self._keys.budget(az))
        return parse_budget(kv.value) if kv else None

    def require(self, az: str) -> Budget:
        budget = self.get(az)
        if budget is None:
            raise NotFound(f"no budget for AZ {az!r}")
        return budget

    def delete(self, az: str) -> None:
        if not is_valid_name(az) or not self._store.delete(self._keys.budget(az)):
            raise NotFound(f"no budget for AZ {az!r}")

    def all(self) -> dict[str, Budget]:
        kvs, _ = self._store.range(self._keys.budgets_dir())
        return {Keys.name(kv.key): parse_budget(kv.value) for kv in kvs}
