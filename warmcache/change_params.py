"""The parameters of the destructive changes an admin asks for and another
approves (maker-checker): what ``POST /v1/requests`` accepts for each
action, and what each does, in one sentence. Wire models only: the
handlers that carry a change out are ``warmcache.actions``'."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from warmcache.agent_versions import DesiredAgent
from warmcache.claims.quota_limits import REQUESTER_PATTERN
from warmcache.config import QuotaLimit
from warmcache.drains import Evacuate
from warmcache.images import Image
from warmcache.model import NAME_PATTERN
from warmcache.networks import AddressPool


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PoolTarget(_Params):
    az: StrictStr = Field(pattern=NAME_PATTERN)
    flavor: StrictStr = Field(pattern=NAME_PATTERN)


# What a delete may name: any name a store key can hold under its folder
# (no "/"), so that a name stored before names were checked in full (one
# ending in a newline) can still be deleted by an admin.
STORED_NAME = r"^[^/]{1,200}$"


class StoredPool(_Params):
    az: StrictStr = Field(pattern=STORED_NAME)
    flavor: StrictStr = Field(pattern=STORED_NAME)


class StoredNetwork(_Params):
    az: StrictStr = Field(pattern=STORED_NAME)
    name: StrictStr = Field(pattern=STORED_NAME)


class HostTarget(_Params):
    hypervisor: StrictStr = Field(pattern=NAME_PATTERN)


class HostDrain(HostTarget):
    # "now": its pooled VMs are handed out no more, retired and replaced
    # elsewhere; "as_acquired": they are handed out as usual and replaced
    # as they go (warmcache.drains).
    evacuate: Evacuate = "now"


class RackTarget(_Params):
    az: StrictStr = Field(pattern=NAME_PATTERN)
    rack: StrictStr = Field(pattern=NAME_PATTERN)


class RackDrain(RackTarget):
    evacuate: Evacuate = "now"


class VmTarget(_Params):
    name: StrictStr = Field(pattern=NAME_PATTERN)


class NetworkTarget(_Params):
    az: StrictStr = Field(pattern=NAME_PATTERN)
    name: StrictStr = Field(pattern=NAME_PATTERN)


class NetworkUpdate(NetworkTarget):
    pool: AddressPool


class QuotaRule(QuotaLimit):
    """One limit of a requester's quota (its requester is the quota's:
    given here, it must be the same)."""

    requester: str | None = None  # type: ignore[assignment]


class QuotaTarget(_Params):
    requester: StrictStr = Field(pattern=REQUESTER_PATTERN)


class QuotaChange(QuotaTarget):
    limits: tuple[QuotaRule, ...] = Field(min_length=1, max_length=32)

    @model_validator(mode="after")
    def _own_limits(self) -> QuotaChange:
        for rule in self.limits:
            if rule.requester not in (None, self.requester):
                raise ValueError(
                    f"a limit of {self.requester!r}'s quota names requester {rule.requester!r}"
                )
        return self


class AgentBuild(DesiredAgent, _Params):
    pass


class ImageTarget(_Params):
    id: StrictStr = Field(pattern=NAME_PATTERN)


class ImageChange(_Params):
    image: Image


# action -> (its parameters, what it does)
PARAMS: dict[str, tuple[type[BaseModel], str]] = {
    "delete_rule": (
        StoredPool,
        "delete a pool's build rule and retire its ready VMs",
    ),
    "purge_pool": (
        StoredPool,
        "destroy a pool's ready and reserved VMs",
    ),
    "drain_hypervisor": (
        HostDrain,
        "place nothing on a hypervisor; its pooled VMs retire now or as they are acquired",
    ),
    "undrain_hypervisor": (
        HostTarget,
        "put a drained hypervisor back in service",
    ),
    "drain_rack": (
        RackDrain,
        "drain every hypervisor of a rack (as drain_hypervisor)",
    ),
    "undrain_rack": (
        RackTarget,
        "put a drained rack back in service",
    ),
    "purge_vm": (
        VmTarget,
        "destroy one VM (a handed-out one is taken back from its holder)",
    ),
    "update_network": (
        NetworkUpdate,
        "change an address pool (held addresses stay held)",
    ),
    "set_agent_version": (
        AgentBuild,
        "set the agent build every hypervisor should run",
    ),
    "delete_network": (
        StoredNetwork,
        "delete an address pool (its VMs keep their addresses)",
    ),
    "set_image": (
        ImageChange,
        "register an image, or point its id at new bytes (its pools roll over)",
    ),
    "set_quota": (
        QuotaChange,
        "set a requester's quota limits (every instance, next acquisition)",
    ),
    "delete_quota": (
        QuotaTarget,
        "remove a requester's quota limits",
    ),
    "delete_image": (
        ImageTarget,
        "remove an image no flavor names and no VM boots",
    ),
}
