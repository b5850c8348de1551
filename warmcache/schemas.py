"""The HTTP API's bodies: one pydantic model per request and reply, error
bodies included. The Flask views validate requests and build replies with
them, ``/v1/openapi.json`` is generated from them, and ``warmcache.Client``
and ``AsyncClient`` parse replies into them: one definition of the wire.

Requests forbid unknown fields (a typo is a 400, not a silent default);
replies ignore them, so a client keeps working against a newer server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictStr,
    create_model,
)

from warmcache.agent_versions import AgentEntry, DesiredAgent
from warmcache.change_params import PARAMS, QuotaRule
from warmcache.claims.quota_limits import QuotaEntry
from warmcache.demand.budgets import Budget
from warmcache.images import Image
from warmcache.model import (
    CLAIM_ID_PATTERN,
    MAX_LEASE_S,
    NAME_PATTERN,
    BuildRule,
    InstanceState,
    JsonInt,
    Mode,
    PoolInstance,
    PoolSummary,
    whole_number,
)
from warmcache.networks import AddressPool

# A caller's name for its claim (Stripe's idempotency key): what a retry sends
# again; its pattern (model.CLAIM_ID_PATTERN) is the acquirer's too.


Count = JsonInt
# (constraints before the validator: after it they reach the JSON schema as "ge"/"le")
LeaseS = Annotated[int, Field(ge=1, le=MAX_LEASE_S), BeforeValidator(whole_number)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Reply(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# --- errors -------------------------------------------------------------------------------


class ErrorBody(_Reply):
    """Every error reply: a stable code (``warmcache.errors.CODES``) and a
    detail (the message, or an object with the message and the error's
    typed fields)."""

    error: str = Field(description="stable code, e.g. no_capacity")
    detail: Any = Field(description="message, or {message, <typed fields>}")


# --- acquisitions ---------------------------------------------------------------------------


class AcquireRequest(_Request):
    flavor: StrictStr = Field(min_length=1, max_length=63)
    az: StrictStr = Field(min_length=1, max_length=63)
    count: Count = Field(ge=1, le=10_000)
    mode: Mode
    use_reserve: StrictBool = False
    requester: StrictStr = Field(default="anonymous", min_length=1, max_length=200)
    claim_id: StrictStr | None = Field(
        default=None,
        pattern=CLAIM_ID_PATTERN,
        description="the caller's name for this claim: a repeat with the same id returns "
        "the same VMs (the Idempotency-Key header means the same)",
    )
    lease_s: LeaseS | None = Field(
        default=None,
        description="hold the VMs this long (seconds), then they are reclaimed (default: the "
        "pool rule's lease_s, else service.default_lease_s, else until released)",
    )


class DataDiskEntry(_Reply):
    target: str
    size_gib: int
    preallocation: str


class ReleaseEntry(_Reply):
    since: float
    by: str
    reason: str
    action: str = Field(description="delete, or recycle back into its pool")
    tries: int = 0
    last_error: str | None = None


class ReceiptEntry(_Reply):
    """How a handed-out VM was served (kept with it: a repeat of its claim
    answers the same)."""

    tier: str = Field(description="the standby tier it waited in: running, paused or saved")
    waited_s: float | None = Field(default=None, description="from ready to handed out")
    select_ms: float | None = Field(default=None, description="choosing the claim's VMs")


class AcquireLatency(_Reply):
    """Where this acquisition's time went, ms (also the Server-Timing header)."""

    select_ms: float | None = Field(default=None, description="choosing its VMs")
    commit_ms: float | None = Field(default=None, description="the claim transaction")
    wake_ms: float | None = Field(
        default=None,
        description="resuming the VMs not running; their agents probe each guest before "
        "answering, so the probe is inside",
    )
    total_ms: float | None = Field(default=None, description="the whole acquisition")


class Vm(_Reply):
    """A VM handed out: where it runs and how to reach it."""

    name: str
    az: str
    flavor: str
    rack: str
    hypervisor: str
    server_id: str = ""
    addresses: list[str] = []
    ready_at: float | None = None
    acquired_at: float | None = None
    claim_id: str | None = None
    generation: str = Field(default="", description="the pool generation it was built with")
    stale: bool = Field(
        default=False,
        description="built from an older generation: handed out because current VMs could not "
        "satisfy the request",
    )

    standby: str = Field(
        default="running", description="how it was kept: running (resumed first if it was not)"
    )
    state: str = Field(default="acquired", description="building ... acquired, releasing...")
    holder: str | None = Field(default=None, description="who holds it (its requester)")
    expires_at: float | None = Field(
        default=None, description="its lease: reclaimed after this (renew to keep it)"
    )
    image: str = ""
    data_disks: list[DataDiskEntry] = Field(
        default=[], description="disks attached for its holder (vdb...)"
    )
    release: ReleaseEntry | None = None
    receipt: ReceiptEntry | None = Field(
        default=None, description="how it was served (set once it was handed out)"
    )

    @classmethod
    def of(cls, vm: PoolInstance) -> Vm:
        r = vm.release
        return cls(
            receipt=(
                ReceiptEntry(
                    tier=vm.receipt.tier,
                    waited_s=vm.receipt.waited_s,
                    select_ms=vm.receipt.select_ms,
                )
                if vm.receipt
                else None
            ),
            state=vm.state.value,
            holder=vm.acquired_by,
            expires_at=vm.expires_at,
            image=vm.image,
            data_disks=[DataDiskEntry(**d.model_dump()) for d in vm.data_disks],
            release=(
                ReleaseEntry(
                    since=r.since,
                    by=r.by,
                    reason=r.reason,
                    action=r.action,
                    tries=r.tries,
                    last_error=r.last_error,
                )
                if r
                else None
            ),
            name=vm.name,
            az=vm.az,
            flavor=vm.flavor,
            rack=vm.rack,
            hypervisor=vm.hypervisor,
            server_id=vm.server_id,
            addresses=list(vm.addresses),
            ready_at=vm.ready_at,
            acquired_at=vm.acquired_at,
            claim_id=vm.claim_id,
            generation=vm.generation,
            stale=vm.stale,
            standby=vm.standby,
        )


class AcquireReply(_Reply):
    claim_id: str
    vms: list[Vm]
    latency: AcquireLatency | None = Field(
        default=None, description="this call's latency split (none for a repeated claim)"
    )


class VmsReply(_Reply):
    vms: list[Vm]
    next: str | None = Field(
        default=None, description="more VMs follow: ask again with after=<next>"
    )


class ReleaseReply(_Reply):
    """The VMs given back: releasing now (deleted or recycled by their agents)."""

    vms: list[Vm]


class RenewBody(_Request):
    lease_s: LeaseS = Field(description="seconds from now")


class VmsQuery(_Request):
    """``GET /v1/vms``'s query."""

    state: InstanceState | None = None
    requester: StrictStr | None = Field(default=None, min_length=1, max_length=200)
    az: StrictStr | None = Field(default=None, pattern=NAME_PATTERN)
    flavor: StrictStr | None = Field(default=None, pattern=NAME_PATTERN)
    limit: int = Field(default=100, ge=1, le=1000)
    after: StrictStr | None = Field(default=None, pattern=NAME_PATTERN)


class DiskBody(_Request):
    size_gib: Count = Field(ge=1, le=65_536)
    preallocation: Literal["off", "metadata", "falloc", "full"] = "off"


class Claim(_Reply):
    """A claim that landed (``GET /v1/claims/<claim_id>``)."""

    claim_id: str
    state: Literal["acquired"] = "acquired"
    requester: str
    acquired_at: float
    vms: list[Vm]


# --- pools, rules, leader, explain --------------------------------------------------------


class PoolsReply(_Reply):
    pools: list[PoolSummary]


# --- hosts and capacity -------------------------------------------------------------------

# A page's end in GET /v1/hosts: "<az>/<hypervisor>".
AFTER_HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}/[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class Resource(_Reply):
    total: int = Field(description="what VMs may use (net of the agent's buffer)")
    booked: int = Field(description="held by VMs: total - free")
    free: int


class Resources(_Reply):
    vcpus: Resource
    memory_mib: Resource
    disk_gib: Resource
    nvme: Resource = Field(description="NVMe devices VMs may be given")


class Heartbeat(_Reply):
    alive: bool = Field(description="the agent's TTL'd session is live (its host key exists)")
    ttl_s: float | None = Field(description="the heartbeat's TTL: a dead agent goes within it")
    facts_age_s: float | None = Field(description="since the agent last published its facts")
    gone_for_s: float | None = Field(description="since the heartbeat expired (unreachable)")


class HostDrain(_Reply):
    scope: Literal["host", "rack"] = Field(description="the host's own drain, or its rack's")
    evacuate: Literal["now", "as_acquired"]
    at: float
    by: str


class HostEntry(_Reply):
    hypervisor: str
    rack: str
    az: str
    status: Literal["up", "drained", "unhealthy", "unreachable"]
    capacity: Resources
    vms: dict[str, int] = Field(
        description="VMs on it by state (handed_out: VMs its agent runs that are in no pool)"
    )
    heartbeat: Heartbeat
    drain: HostDrain | None
    agent_version: str
    images: list[str] = Field(description="sha256 of every image in its agent's cache")
    numa_free: list[int] = Field(description="free CPUs per NUMA node ([]: not pinned)")


class HostsQuery(_Request):
    """``GET /v1/hosts``'s query."""

    az: StrictStr | None = Field(default=None, pattern=NAME_PATTERN)
    rack: StrictStr | None = Field(default=None, pattern=NAME_PATTERN)
    limit: int = Field(default=100, ge=1, le=1000)
    after: StrictStr | None = Field(default=None, pattern=AFTER_HOST_PATTERN)


class HostsReply(_Reply):
    hosts: list[HostEntry]
    next: str | None = Field(description="after= of the next page (null: the last page)")


class RackCapacity(_Reply):
    rack: str
    hosts: int = Field(description="heartbeating hosts")
    drained: int = Field(description="of those, drained (their own drain or the rack's)")
    unreachable: int = Field(description="hosts whose heartbeat expired, with VMs on them")
    capacity: Resources


class AzCapacity(_Reply):
    az: str
    hosts: int
    drained: int
    unreachable: int
    capacity: Resources
    racks: list[RackCapacity]


class CapacityQuery(_Request):
    az: StrictStr | None = Field(default=None, pattern=NAME_PATTERN)


class CapacityReply(_Reply):
    azs: list[AzCapacity]


# --- quotas -------------------------------------------------------------------------------


class QuotaBody(_Request):
    """``PUT /v1/quotas/<requester>``: the requester's limits, all of them
    (they replace what it had)."""

    limits: list[QuotaRule] = Field(min_length=1, max_length=32)


class QuotasReply(_Reply):
    quotas: list[QuotaEntry]


class RuleEntry(_Reply):
    az: str
    flavor: str
    rule: BuildRule


class RulesReply(_Reply):
    rules: list[RuleEntry]


class NetworkEntry(_Reply):
    az: str
    name: str
    pool: AddressPool
    size: int = Field(description="addresses it may hand out (gateway and exclusions taken off)")
    held: int = Field(description="addresses held now (VMs, and quarantined)")


class NetworksReply(_Reply):
    networks: list[NetworkEntry]


class ImageEntry(_Reply):
    image: Image
    flavors: list[str] = Field(description="the flavors whose VMs boot it")


class ImagesReply(_Reply):
    images: list[ImageEntry]


class AgentsReply(_Reply):
    desired: DesiredAgent | None
    agents: list[AgentEntry]


class Leader(_Reply):
    node: str
    since: float
    token: int = Field(description="fencing token: grows with every new holder")


class LeaderReply(_Reply):
    leader: Leader | None


class Placement(_Reply):
    vm: str
    hypervisor: str
    rack: str
    removed: dict[str, int] = Field(description="hosts each validator removed, in order")
    tied: int
    explanation: str


class DemandHistory(_Reply):
    bin_s: float
    since: float | None = Field(description="start of the oldest hour of history kept")
    hours: int = Field(description="hours with demand recorded")
    recent_vms: int = Field(description="VMs asked over the recent lookback (demand.lookback_s)")
    recent_bins: list[int] = Field(description="VMs asked per bin, the last few bins")


class DemandForecast(_Reply):
    windows: int = Field(description="windows of one horizon sampled")
    seasonal: bool = Field(description="earlier days' same time of day are sampled too")
    rate_per_h: float = Field(description="VMs asked per hour, recently")
    window_p50: int = Field(description="median demand over one horizon")
    window_at_quantile: int = Field(description="demand over one horizon at the rule's quantile")
    requests: int = Field(description="requests sampled")
    request_hours: float = Field(description="hours those requests came from")
    need_shift: int = Field(description="VMs others take while one builds, added to each need")
    need_at_quantile: int = Field(description="a request's need at the rule's quantile")
    misses_per_h_at_target: float = Field(description="requests per hour the target would miss")


class BudgetShare(_Reply):
    unit: Literal["vms", "vcpus", "cost"]
    total: int | float = Field(description="whole VMs or vCPUs; cost units")
    share: int | float = Field(description="budget units this pool's target takes")


class TierMix(_Reply):
    running: int
    paused: int
    saved: int


class MixOutlook(_Reply):
    """One tier mix the objective sizer weighed, and what it expects of it."""

    mix: TierMix
    served_at_once: float = Field(description="expected share of requests served at once")
    p99_acquire_ms: float | None = Field(
        description="expected 99th percentile of acquisition latency (null: beyond the pool)"
    )
    cost_per_h: float = Field(description="weighted cost units per hour while its VMs wait")
    meets_objective: bool


class ObjectiveChoice(_Reply):
    """An objective pool's sizing: the objective, the chosen mix, what else
    was weighed (cheapest first)."""

    served_at_once: float
    p99_acquire_ms: int | None
    chosen: MixOutlook
    objective_reachable: bool = Field(
        description="false: nothing within the ceiling or budget meets it (the mix "
        "serving the most within the latency asked was chosen)"
    )
    alternatives: list[MixOutlook]


class Sizing(_Reply):
    """How the pool's target was set (``sizing``: static or demand)."""

    sizing: Literal["static", "demand"]
    target: int
    held: int = Field(description="VMs the pool holds now (ready, reserved, building)")
    floor: int | None = None
    ceiling: int | None = None
    own_target: int | None = Field(
        default=None, description="what the forecast asks for, before the AZ budget"
    )
    quantile: float | None = None
    margin: int | None = None
    horizon_s: float | None = Field(default=None, description="build time plus one cycle")
    build_s: float | None = None
    history: DemandHistory | None = None
    forecast: DemandForecast | None = None
    budget: BudgetShare | None = None
    objective: ObjectiveChoice | None = None
    scheduled_floor: int | None = Field(
        default=None, description="running VMs a due [[schedules]] window holds at least"
    )


class Explain(_Reply):
    az: str
    flavor: str
    hosts: int
    to_build: int
    to_replace: int = Field(
        default=0, description="ready VMs a rollover replaces (stale, or past max_age_s)"
    )
    problem: str | None = None
    sizing: Sizing | None = None
    placements: list[Placement]


class BudgetEntry(_Reply):
    az: str
    budget: Budget


class BudgetsReply(_Reply):
    budgets: list[BudgetEntry]


# --- maker-checker --------------------------------------------------------------------------


def _ask(action: str, params: type[BaseModel], summary: str) -> type[_Request]:
    name = "".join(part.title() for part in action.split("_")) + "Ask"
    tag: Any = Literal.__getitem__(action)
    model: type[_Request] = create_model(
        name, __base__=_Request, __doc__=summary, action=(tag, ...), params=(params, ...)
    )
    return model


class _AskShape(_Request):
    action: str
    params: BaseModel


if TYPE_CHECKING:
    _AnyAsk = _AskShape
else:  # one body per entry of the registry, told apart by ``action``
    _AnyAsk = Annotated[
        Union[tuple(_ask(a, params, summary) for a, (params, summary) in PARAMS.items())],  # noqa: UP007
        Field(discriminator="action"),
    ]


class ChangeAsk(RootModel[_AnyAsk]):
    """A destructive change to ask for: its action (``warmcache.change_params``)
    and what it acts on."""

    @property
    def action(self) -> str:
        return self.root.action

    @property
    def params(self) -> dict[str, Any]:
        return self.root.params.model_dump()


class ChangeRequest(_Reply):
    id: str
    action: str
    params: dict[str, Any]
    asked_by: str
    asked_at: float
    expires_at: float
    state: Literal["pending", "approved", "executed", "failed", "expired"]
    approved_by: str | None = None
    result: dict[str, Any] | None = None
    runner: str | None = Field(default=None, description="the instance running it (approved)")
    lease_until: float | None = Field(
        default=None, description="its runner's lease: past it, another instance takes over"
    )
    attempts: int = Field(default=0, description="runs started (a takeover is one more)")


class ChangeReply(_Reply):
    request: ChangeRequest


class ChangesReply(_Reply):
    requests: list[ChangeRequest]


# --- probes -----------------------------------------------------------------------------------


class Health(_Reply):
    status: Literal["ok"]
    node: str


class Check(_Reply):
    ok: bool
    ms: float | None = None
    detail: str | None = None


class Ready(_Reply):
    ready: bool
    checks: dict[str, Check]
