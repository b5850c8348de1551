"""Domain model (DESIGN.md §4): flavors, build rules, pool instances, hosts.

Pure data and validation: no I/O, no clock. Records are pydantic models so
that the same schema validates the store's JSON, the HTTP API and the agent
wire format.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import json
import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    field_validator,
    model_validator,
)

# Names end up in store keys, libvirt domain names and file names: keep them
# to a conservative alphabet so no key can escape its prefix.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_NAME_RE = re.compile(NAME_PATTERN)


def is_valid_name(name: str) -> bool:
    # fullmatch: re.match with "$" also matches before a final newline ("az1\n")
    return _NAME_RE.fullmatch(name) is not None


class InstanceState(enum.StrEnum):
    BUILDING = "building"
    READY = "ready"
    RESERVED = "reserved"
    ACQUIRED = "acquired"
    PURGING = "purging"
    PURGED = "purged"
    # the leader is pausing, saving or waking it (rule ``standby``): held by
    # the leader, never acquirable, settled by the next cycle if left
    PARKING = "parking"
    # given back by its holder (or its lease ran out): no longer anyone's, its
    # agent is asked to delete it (``warmcache.vms``); then it is gone
    RELEASING = "releasing"
    # given back to a pool that reuses VMs (rule ``on_release = "recycle"``):
    # its agent remakes its root disk from the image; then ready again
    RECYCLING = "recycling"


# States that count towards a pool's size (DESIGN.md §5 to_build arithmetic).
POOLED_STATES = frozenset(
    {InstanceState.BUILDING, InstanceState.READY, InstanceState.RESERVED, InstanceState.PARKING}
)
# States of a built VM waiting in its pool (what a rollover replaces).
HELD_STATES = frozenset({InstanceState.READY, InstanceState.RESERVED})


class Mode(enum.StrEnum):
    RACK_AWARE = "rack-aware"
    HYPERVISOR_AWARE = "hypervisor-aware"
    BEST_EFFORT = "best-effort"


# A claim's id (``claim_id``, ``Idempotency-Key``): what the API accepts
# and the acquirer checks.
CLAIM_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# Sizes: one definition, used wherever a size is read (the flavor catalog,
# the agent's wire and the proxy through Flavor, the build rules, disk
# requests). Strict integers ("2" and true are not 2), bounded on both
# sides: a negative or absurd size is invalid_request naming the field, and
# never reaches anyone's books. Odd vCPU counts are a pinning rule, refused
# by agents that pin (agent/numa.py), not a size rule.
VCpus = Annotated[int, Field(strict=True, ge=1, le=512)]
MemoryMiB = Annotated[int, Field(strict=True, ge=64, le=16 * 1024 * 1024)]
DiskGiB = Annotated[int, Field(strict=True, ge=1, le=65_536)]
MAX_EXTRA_DISKS = 24  # vdb..vdy: vdz holds the cloud-init seed
MAX_USER_DATA = 64 * 1024  # base64 characters of a rule's first-boot script
MAX_LEASE_S = 366 * 86_400  # the longest lease anyone may ask for
# How a VM's disks are allocated on its host (qemu-img's preallocation):
# "off" makes the root disk a thin overlay of the cached image; anything
# else a full copy, allocated as asked (extra disks the same).
Preallocation = Literal["off", "metadata", "falloc", "full"]


def whole_number(value: object) -> object:
    """JSON's integers: 3 or 3.0 (JSON Schema's integer), never true or "3"."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


# An integer of a request body: what JSON Schema calls one (3.0 too), nothing else.
JsonInt = Annotated[int, BeforeValidator(whole_number)]
# A count of VMs in a rule: a JSON integer (3.0 too, never "3" or true).
Count = Annotated[int, Field(ge=0, le=100_000), BeforeValidator(whole_number)]


class Flavor(_Frozen):
    """A VM shape. ``image_id`` and ``provider_flavor_id`` are catalog-only.

    ``image_id`` names an image of the catalog (``warmcache.images``): every
    VM of the flavor boots from its own root disk of ``disk_gib`` made from
    it; no image: a blank root disk. ``extra_disks_gib`` are made at build,
    each its own disk (vdb, vdc, ...), allocated per ``preallocation``."""

    name: str = Field(pattern=NAME_PATTERN)
    vcpus: VCpus
    memory_mib: MemoryMiB
    disk_gib: DiskGiB
    image_id: str = Field(default="", pattern=r"^(|[A-Za-z0-9][A-Za-z0-9._-]{0,62})$")
    provider_flavor_id: str = Field(default="", max_length=255)
    extra_disks_gib: tuple[DiskGiB, ...] = Field(default=(), max_length=MAX_EXTRA_DISKS)
    preallocation: Preallocation = "off"


STANDBY_TIERS = ("running", "paused", "saved")  # the order acquisitions take them in


class Tiers(_Frozen):
    """How many of a pool's waiting VMs each standby tier holds. Acquisitions
    take running VMs first, then paused, then saved (resumed in the claim)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    running: Count = 0
    paused: Count = 0
    saved: Count = 0

    @property
    def total(self) -> int:
        return self.running + self.paused + self.saved

    def as_dict(self) -> dict[str, int]:
        return {"running": self.running, "paused": self.paused, "saved": self.saved}


class Objective(_Frozen):
    """What a pool must achieve (issue 29): the share of requests served
    from the pool at once, and the latency a request may pay for waking
    the VMs it gets (its 99th percentile). The sizer picks the tier mix
    that meets it at the least weighted cost (``warmcache.objective``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    served_at_once: float = Field(ge=0.5, le=0.9999)
    p99_acquire_ms: JsonInt | None = Field(default=None, ge=1, le=600_000)


class BuildRule(_Frozen):
    """One AZ x flavor build rule (DESIGN.md §6). Strict: ``"2"`` is not 2."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    max_instance_per_cycle: JsonInt = Field(ge=1, le=10_000)
    min_fault_domain: JsonInt = Field(default=1, ge=1, le=10_000)
    reserve_cap: Count = 0
    user_data: str = Field(default="", max_length=MAX_USER_DATA)
    total_instances: Count
    group_hint: str | None = Field(default=None, pattern=NAME_PATTERN)
    enabled: bool = True
    # Rolling replacement (a new generation, or max_age_s): VMs replaced per
    # cycle, new ones built first; the ready count stays at or above
    # total_instances - this. Default: a quarter of max_instance_per_cycle.
    replace_per_cycle: JsonInt | None = Field(default=None, ge=1, le=10_000)
    # Stale VMs (an older generation) are handed out only when current ones
    # cannot satisfy a request ("fallback"), or never.
    stale_handout: Literal["fallback", "never"] = "fallback"
    max_age_s: JsonInt | None = Field(default=None, ge=60, le=10 * 365 * 86400)
    # How a pooled VM waits after its first health probe: running, paused
    # (memory kept, no CPU) or saved (memory on disk, freed on the host).
    # Acquisitions resume the VMs they take before handing them out.
    standby: Literal["running", "paused", "saved"] = "running"
    # Or a mix (issue 29): so many running, paused and saved, adding up to
    # total_instances (a demand- or objective-sized pool's mix is the
    # sizer's). Given, standby stays "running".
    tiers: Tiers | None = None
    # Objective-driven sizing (needs sizing = "demand"): the tier targets
    # that meet it at the least weighted cost ([cost]), within [min_instances,
    # total_instances] and the AZ's budget.
    objective: Objective | None = None
    # A target that falls takes effect once the lower one has held this long
    # (hysteresis after a burst); meanwhile the surplus waits in the cheapest
    # tier the objective allows. None: at once.
    decay_after_s: JsonInt | None = Field(default=None, ge=0, le=7 * 86_400)
    # How the pool's target is set: "static" (total_instances) or "demand"
    # (from its acquisition history, warmcache.demand): the forecast's ask
    # within [min_instances, total_instances], and within the AZ's budget.
    sizing: Literal["static", "demand"] = "static"
    min_instances: Count = 0
    # demand: the target covers this quantile of demand over the build
    # horizon and of request sizes, plus demand_margin VMs.
    demand_quantile: float = Field(default=0.95, ge=0.5, le=1.0)
    demand_margin: JsonInt = Field(default=1, strict=True, ge=0, le=10_000)
    # An acquisition leaving fewer acquirable VMs than this share of the
    # target starts an early cycle (None: service.low_water_ratio).
    low_water_ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    # What becomes of a VM given back (released, or its lease ran out):
    # deleted, or recycled (a fresh root disk from the current image, same
    # host) back into the pool when the pool is below its target and the VM
    # is of the current generation and recycled fewer than
    # recycle_max_uses times; else deleted.
    on_release: Literal["delete", "recycle"] = "delete"
    recycle_max_uses: JsonInt | None = Field(default=None, ge=1, le=1_000_000)
    # Acquisitions of this pool hold their VMs this long unless they ask for
    # another lease (None: service.default_lease_s, if any).
    lease_s: JsonInt | None = Field(default=None, ge=1, le=MAX_LEASE_S)

    @property
    def replace_rate(self) -> int:
        return self.replace_per_cycle or max(1, self.max_instance_per_cycle // 4)

    @field_validator("user_data")
    @classmethod
    def _base64(cls, value: str) -> str:
        if value:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError("user_data must be base64") from exc
        return value

    @model_validator(mode="after")
    def _reserve_within_total(self) -> BuildRule:
        if self.reserve_cap > self.total_instances:
            raise ValueError(
                f"reserve_cap ({self.reserve_cap}) exceeds total_instances ({self.total_instances})"
            )
        if self.tiers is not None:
            if self.standby != "running":
                raise ValueError("give tiers or standby, not both (tiers hold every state)")
            if self.sizing == "static" and self.tiers.total != self.total_instances:
                raise ValueError(
                    f"tiers add up to {self.tiers.total}, not total_instances "
                    f"({self.total_instances})"
                )
        if self.objective is not None and self.sizing != "demand":
            raise ValueError('an objective sizes the pool from its demand: set sizing = "demand"')
        if self.min_instances > self.total_instances:
            raise ValueError(
                f"min_instances ({self.min_instances}) exceeds total_instances "
                f"({self.total_instances}): with sizing = demand, total_instances is the ceiling"
            )
        return self

    def sized(self, target: int, tiers: Tiers | None = None) -> BuildRule:
        """This rule with the target a demand-sized pool has now (never
        below its reserve), and the tier mix the sizer chose for it (VMs
        the reserve adds run): what the cycle and the low-water mark use."""
        total = max(target, self.reserve_cap)
        update: dict[str, object] = {}
        if total != self.total_instances:
            update["total_instances"] = total
        if tiers is not None:
            extra = max(0, total - tiers.total)
            mix = tiers.model_copy(update={"running": tiers.running + extra})
            if mix != self.tiers:
                update["tiers"] = mix
        return self.model_copy(update=update) if update else self

    def tier_targets(self) -> Tiers:
        """How many VMs each tier holds: the mix, else all in ``standby``."""
        if self.tiers is not None and self.tiers.total == self.total_instances:
            return self.tiers
        if self.tiers is not None:  # a ceiling, not yet sized: what is beyond runs
            paused = min(self.tiers.paused, self.total_instances)
            saved = min(self.tiers.saved, self.total_instances - paused)
            return Tiers(running=self.total_instances - paused - saved, paused=paused, saved=saved)
        return Tiers.model_validate({self.standby: self.total_instances})


def pool_generation(flavor: Flavor, rule: BuildRule, image_digest: str = "") -> str:
    """What a pool's VMs are built from, as a short digest: the flavor's
    image (``image_digest``: the sha256 of the bytes it boots, from
    ``warmcache.images.Image.digest``, so an image id pointed at new bytes
    is a new generation) and provider flavor, its sizes, extra disks and
    their allocation, the rule's ``user_data`` and ``group_hint``. Any
    change makes the VMs built before it stale (rolled over by the leader,
    ``replace_per_cycle`` at a time)."""
    import hashlib

    what: dict[str, object] = {
        "image_id": flavor.image_id,
        "provider_flavor_id": flavor.provider_flavor_id,
        "vcpus": flavor.vcpus,
        "memory_mib": flavor.memory_mib,
        "disk_gib": flavor.disk_gib,
        "extra_disks_gib": list(flavor.extra_disks_gib),
        "user_data": rule.user_data,
        "group_hint": rule.group_hint,
    }
    # Only when set: pools of flavors without an image keep their generation.
    if image_digest:
        what["image"] = image_digest
    if flavor.preallocation != "off":
        what["preallocation"] = flavor.preallocation
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


class StaticNetwork(_Frozen):
    """What a VM's first boot configures (NoCloud network-config v2)."""

    address: StrictStr  # 10.20.0.7
    prefix: int = Field(ge=1, le=128)  # 22
    gateway: StrictStr
    dns: tuple[StrictStr, ...] = Field(default=(), max_length=8)

    @model_validator(mode="after")
    def _addresses(self) -> StaticNetwork:
        ip = ipaddress.ip_address(self.address)
        if self.prefix > ip.max_prefixlen:
            raise ValueError(f"prefix /{self.prefix} is too long for {ip}")
        if ipaddress.ip_address(self.gateway).version != ip.version:
            raise ValueError(f"gateway {self.gateway} is not of {ip}'s IP version")
        for server in self.dns:
            ipaddress.ip_address(server)
        return self

    @property
    def gateway_on_link(self) -> bool:
        """The gateway is outside the VM's subnet (a pool's other CIDR): the
        route to it says it is on the link."""
        network = ipaddress.ip_network(f"{self.address}/{self.prefix}", strict=False)
        return ipaddress.ip_address(self.gateway) not in network

    def network_config(self) -> str:
        """cloud-init network-config version 2: the first Ethernet interface,
        static (JSON is YAML, so no YAML writer is needed)."""
        default = "::/0" if ":" in self.address else "0.0.0.0/0"
        ethernet: dict[str, object] = {
            "match": {"name": "e*"},
            "addresses": [f"{self.address}/{self.prefix}"],
            "routes": [
                {"to": default, "via": self.gateway}
                | ({"on-link": True} if self.gateway_on_link else {})
            ],
        }
        if self.dns:
            ethernet["nameservers"] = {"addresses": list(self.dns)}
        return json.dumps({"version": 2, "ethernets": {"primary": ethernet}}, indent=2) + "\n"


class DataDisk(_Frozen):
    """A disk attached to a handed-out VM at its holder's request (day 2)."""

    target: str = Field(pattern=r"^vd[b-y]$")
    size_gib: int = Field(ge=1, le=65_536)
    preallocation: Preallocation = "off"


class Receipt(_Frozen):
    """How a handed-out VM was served (issue 29): the tier it waited in, how
    long it had waited in the pool, and where its acquisition's time went
    (ms: choosing it, the claim transaction, waking it; the agent probes a
    woken guest before it answers, so the probe is inside ``wake_ms``).
    Stored with the VM as the claim wrote it (tier, waited, select); the
    acquisition's own answer adds commit, wake and total."""

    tier: Literal["running", "paused", "saved"]
    waited_s: float | None = None  # from ready to handed out
    select_ms: float | None = None
    commit_ms: float | None = None
    wake_ms: float | None = None
    total_ms: float | None = None


class Release(_Frozen):
    """How a VM given back is on its way out (states releasing, recycling)."""

    since: float
    by: str  # who gave it back (its holder, an admin, or "lease" when it expired)
    reason: Literal["released", "expired", "purged"] = "released"
    action: Literal["delete", "recycle"] = "delete"  # the rule's on_release then
    worker: str | None = None  # the instance working on it now (taken by revision)
    tried_at: float | None = None
    tries: int = 0
    last_error: str | None = None
    stuck_reported: bool = False


class PoolInstance(_Frozen):
    """A VM's record: ``<prefix>/pool/<az>/<name>`` while pooled,
    ``<prefix>/acquired/<az>/<name>`` while handed out,
    ``<prefix>/releasing/<az>/<name>`` once given back, until its agent
    confirms it is gone (or it is back in its pool, recycled)."""

    name: str = Field(pattern=NAME_PATTERN)
    az: str
    flavor: str
    hypervisor: str
    rack: str
    state: InstanceState
    server_id: str = ""
    group: str | None = None
    created_at: float
    ready_at: float | None = None
    addresses: tuple[str, ...] = ()
    network: str | None = None  # the address pool its addresses came from
    fencing_token: int = 0
    # consecutive failed health polls; a VM with any is never handed out
    health_failures: int = 0
    acquired_by: str | None = None
    acquired_at: float | None = None
    claim_id: str | None = None  # the claim that handed it out
    # pool_generation() it was built with ("": before generations existed,
    # never stale by generation); stale: the leader found its pool's
    # generation changed since (handed out only as the rule allows)
    generation: str = ""
    stale: bool = False
    image: str = ""  # the catalog image it boots (its flavor's image_id when built)
    expires_at: float | None = None  # its lease: reclaimed after this (plus a grace)
    uses: int = 0  # times it was recycled into its pool
    data_disks: tuple[DataDisk, ...] = ()  # attached for its holder since it was handed out
    release: Release | None = None  # set while releasing or recycling
    standby: Literal["running", "paused", "saved"] = "running"  # as its agent keeps it
    receipt: Receipt | None = None  # set when it is handed out

    def aged(self, rule: BuildRule, now: float) -> bool:
        """Older than the rule's ``max_age_s`` (counted from when it was ready)."""
        born = self.ready_at if self.ready_at is not None else self.created_at
        return rule.max_age_s is not None and now - born > rule.max_age_s

    def with_state(self, state: InstanceState, **changes: object) -> PoolInstance:
        return self.model_copy(update={"state": state, **changes})


class HostFacts(_Frozen):
    """What an agent reports about its hypervisor (capacity net of its buffer).
    Fields it does not know are ignored: a newer agent's facts still read."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    hypervisor: str = Field(pattern=NAME_PATTERN)
    rack: str = Field(pattern=NAME_PATTERN)
    az: str = Field(pattern=NAME_PATTERN)
    vcpus_total: int = Field(ge=0)
    vcpus_free: int
    memory_mib_total: int = Field(ge=0)
    memory_mib_free: int
    disk_gib_total: int = Field(ge=0)
    disk_gib_free: int
    healthy: bool = True
    draining: bool = False
    vms: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    endpoint: str = ""  # how the service reaches this host's agent (unix:PATH, https://...)
    numa_free: tuple[int, ...] = ()  # free CPUs per NUMA node; () when the agent does not pin
    agent_version: str = ""  # the agent's package version
    agent_sha256: str = ""  # sha256 of its installed code (warmcache_agent.identity)
    images: tuple[str, ...] = ()  # sha256 of every image in its cache (verified there)
    nvme_total: int = Field(default=0, ge=0)  # NVMe devices VMs may be given
    nvme_free: int = Field(default=0, ge=0)  # of those, not booked to a VM
    # When the agent published these facts, and its heartbeat's TTL: the host
    # is heartbeating while its key exists (its session renewed within ttl_s).
    published_at: float | None = None
    ttl_s: float | None = None

    def numa_fits(self, vcpus: int) -> bool:
        """The agent's pinning rules: an even count that fits on one node."""
        if not self.numa_free:
            return True
        return vcpus % 2 == 0 and max(self.numa_free) >= vcpus

    def fits(self, flavor: Flavor) -> bool:
        return (
            self.vcpus_free >= flavor.vcpus
            and self.memory_mib_free >= flavor.memory_mib
            and self.disk_gib_free >= flavor.disk_gib + sum(flavor.extra_disks_gib)
        )

    def minus(self, flavor: Flavor, vm: str, group: str | None) -> HostFacts:
        """This host after ``vm`` of ``flavor`` is placed on it (planning only)."""
        return self.model_copy(
            update={
                "vcpus_free": self.vcpus_free - flavor.vcpus,
                "memory_mib_free": self.memory_mib_free - flavor.memory_mib,
                "disk_gib_free": self.disk_gib_free - flavor.disk_gib - sum(flavor.extra_disks_gib),
                "vms": (*self.vms, vm),
                "groups": (*self.groups, group) if group else self.groups,
                "numa_free": _first_fit(self.numa_free, flavor.vcpus),
            }
        )


def _first_fit(free: tuple[int, ...], vcpus: int) -> tuple[int, ...]:
    """Per-node free CPUs after the agent pins ``vcpus`` on the first node with room."""
    for i, n in enumerate(free):
        if n >= vcpus:
            return (*free[:i], n - vcpus, *free[i + 1 :])
    return free


class PoolSummary(_Frozen):
    az: str
    flavor: str
    target: int
    ready: int
    reserved: int
    building: int
    enabled: bool
    ready_by_rack: dict[str, int]
    stale: int = 0  # ready or reserved VMs of an older generation, being replaced
    # Ready or reserved VMs that cannot be handed out, not counted above:
    # their host's heartbeat is gone, or it is being evacuated (a drain).
    unreachable: int = 0
    drained: int = 0
    # The counted ready and reserved VMs by how they wait (running, paused, saved).
    standby: dict[str, int] = Field(default_factory=dict)
    # What each tier should hold (the rule's tiers, an objective pool's mix,
    # else the whole target in its standby state).
    tier_targets: dict[str, int] = Field(default_factory=dict)


# The name every instance registers under in the store's service registry.
SERVICE_NAME = "warmcache"


def below_low_water(rule: BuildRule, acquirable: int, ratio: float) -> bool:
    """The one low-water mark (``service.low_water_ratio``): fewer VMs left
    to hand out than ``ratio`` of the pool's target asks for an early
    cycle. VMs still building do not count: they cannot be handed out yet.
    The acquirer checks it after each claim; ``bench/replay.py`` models it."""
    if not rule.enabled or rule.total_instances == 0:
        return False
    return acquirable < rule.total_instances * ratio
