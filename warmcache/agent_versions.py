"""Which agents run which build, against the build the fleet should run
(PPeC's agent syncer, its first half): every agent publishes its version
and the sha256 of its installed code in its host facts; the desired build
(version, sha256 of its artifact, where to fetch it) is set in the store by
maker-checker (``set_agent_version``); ``warmcache agents`` and
``GET /v1/agents`` list every heartbeating agent and whether it matches."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from warmcache.inventory import HostView
from warmcache.layout import Keys
from warmcache.ports import CoordinationStore

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
            )
            for h in self._hosts.hosts()
        ]
