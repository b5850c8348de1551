"""Which agents run which build, against the build the fleet should run
(PPeC's agent syncer; the agent's half is ``warmcache_agent.syncer``):
every agent publishes its version and the sha256 of its installed code in
its host facts; the desired build (version, sha256 of its artifact, where
to fetch it) is set in the store by maker-checker (``set_agent_version``);
``warmcache agents`` and ``GET /v1/agents`` list every heartbeating agent
and whether it matches; ``pace_rollout`` grants update slots."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from warmcache.inventory import HostView
from warmcache.layout import Keys
from warmcache.model import HostFacts
from warmcache.ports import Compare, CoordinationStore, Delete, Op, Put, TxnResult

Txn = Callable[[Sequence[Compare], Sequence[Op]], TxnResult]

SHA256 = r"^[0-9a-f]{64}$"


class DesiredAgent(BaseModel):
    """The build every agent should run (``<prefix>/agents/desired``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z.+_-]+$")
    sha256: StrictStr = Field(
        pattern=SHA256, description="sha256 of the agent's installed code, as agents report it"
    )
    artifact: StrictStr = Field(
        min_length=1,
        max_length=2048,
        description="where agents fetch the build: a path or an https:// URL the operator controls",
    )
    artifact_sha256: StrictStr = Field(pattern=SHA256, description="sha256 of that artifact file")


class AgentEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    hypervisor: str
    az: str
    rack: str
    version: str
    sha256: str
    matches: bool | None = Field(description="runs the desired build (null: none is set)")
    updating: bool = Field(default=False, description="holds an update slot now")
    last_update: str | None = Field(
        default=None, description="how its last update for the desired build ended, if badly"
    )


class AgentVersions:
    def __init__(self, store: CoordinationStore, keys: Keys, hosts: HostView) -> None:
        self._store = store
        self._keys = keys
        self._hosts = hosts

    def desired(self) -> DesiredAgent | None:
        found = self._store.get(self._keys.agents_desired())
        return DesiredAgent.model_validate_json(found.value) if found else None

    def set_desired(self, desired: DesiredAgent) -> None:
        """An approved ``set_agent_version``."""
        self._store.put(self._keys.agents_desired(), desired.model_dump_json())

    def fleet(self) -> list[AgentEntry]:
        """Every heartbeating agent, from the host view (no store read per host)."""
        want = self.desired()
        updating = {Keys.name(kv.key) for kv in self._store.range(self._keys.agents_updating())[0]}
        statuses = {
            Keys.name(kv.key): UpdateStatus.model_validate_json(kv.value)
            for kv in self._store.range(self._keys.agents_status())[0]
        }
        return [
            AgentEntry(
                hypervisor=h.hypervisor,
                az=h.az,
                rack=h.rack,
                version=h.agent_version,
                sha256=h.agent_sha256,
                matches=None
                if want is None
                else (h.agent_version == want.version and h.agent_sha256 == want.sha256),
                updating=h.hypervisor in updating,
                last_update=_last(statuses.get(h.hypervisor), want),
            )
            for h in self._hosts.hosts()
        ]


def _last(status: UpdateStatus | None, want: DesiredAgent | None) -> str | None:
    """How the update to the desired build ended, when it ended badly."""
    if status is None or want is None or status.sha256 != want.sha256:
        return None
    return status.state


class Slot(BaseModel):
    """``<prefix>/agents/updating/<hv>``: this agent may update now."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str  # the desired build it was granted for
    rack: str
    granted_at: float


class UpdateStatus(BaseModel):
    """``<prefix>/agents/status/<hv>``: the last update that did not end well."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str
    state: Literal["timed_out", "failed", "rolled_back"]
    at: float
    why: str = ""


def pace_rollout(
    store: CoordinationStore,
    keys: Keys,
    txn: Txn,
    hosts: Sequence[HostFacts],
    now: float,
    parallel: int,
    timeout_s: float,
    emit: Callable[..., None],
) -> list[str]:
    """The leader's rollout step after a cycle: free the slots of agents that
    now run the desired build (done) or took longer than ``timeout_s`` (not
    tried again for that build), then grant slots to agents that do not
    match, up to ``parallel`` at once and never two in one rack. Returns
    the hypervisors granted a slot now. An agent that reports its update
    ``failed`` or ``rolled_back`` frees its slot too (an event says why)."""
    found = store.get(keys.agents_desired())
    desired = DesiredAgent.model_validate_json(found.value) if found else None
    by_hv = {h.hypervisor: h for h in hosts}
    slots = {
        Keys.name(kv.key): (kv, Slot.model_validate_json(kv.value))
        for kv in store.range(keys.agents_updating())[0]
    }
    statuses = {
        Keys.name(kv.key): UpdateStatus.model_validate_json(kv.value)
        for kv in store.range(keys.agents_status())[0]
    }
    for hv, (kv, slot) in list(slots.items()):
        host = by_hv.get(hv)
        done = (
            desired is None
            or slot.sha256 != desired.sha256
            or (host is not None and host.agent_sha256 == desired.sha256)
        )
        told = statuses.get(hv)
        refused = told is not None and told.sha256 == slot.sha256 and told.state != "timed_out"
        late = now - slot.granted_at > timeout_s
        if not (done or refused or late):
            continue
        ops: list[Op] = [Delete(kv.key)]
        if late and not (done or refused) and desired is not None:
            late_status = UpdateStatus(
                sha256=desired.sha256,
                state="timed_out",
                at=now,
                why=f"no desired build after {timeout_s:.0f} s",
            )
            ops.append(Put(keys.agents_status(hv), late_status.model_dump_json()))
            statuses[hv] = late_status
        if txn([Compare.mod_revision(kv.key, kv.mod_revision)], ops).succeeded:
            del slots[hv]
            if done:
                emit("agent.update_done", hypervisor=hv)
            elif refused and told is not None:
                emit(f"agent.update_{told.state}", hypervisor=hv, why=told.why)
            else:
                emit("agent.update_timed_out", hypervisor=hv)
    if desired is None or parallel <= 0:
        return []
    busy_racks = {slot.rack for _, slot in slots.values()}
    granted: list[str] = []
    for host in sorted(hosts, key=lambda h: (h.az, h.rack, h.hypervisor)):
        if len(slots) + len(granted) >= parallel:
            break
        tried = statuses.get(host.hypervisor)
        if (
            host.agent_sha256 == desired.sha256
            or host.hypervisor in slots
            or host.rack in busy_racks
            or (tried is not None and tried.sha256 == desired.sha256)
        ):
            continue
        slot = Slot(sha256=desired.sha256, rack=host.rack, granted_at=now)
        key = keys.agents_updating(host.hypervisor)
        if txn([Compare.absent(key)], [Put(key, slot.model_dump_json())]).succeeded:
            granted.append(host.hypervisor)
            busy_racks.add(host.rack)
            emit(
                "agent.update_granted",
                hypervisor=host.hypervisor,
                rack=host.rack,
                version=desired.version,
            )
    return granted
