"""Which agents run which build: agents publish their version and code
sha256; the desired build is set by maker-checker; the fleet listing says
who matches."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.fakes import FakeAgent
from warmcache.agent_versions import DesiredAgent
from warmcache.service import WarmCache
from warmcache.web import create_app
from warmcache_agent import identity

SHA = "ab" * 32


def test_an_agent_publishes_its_version_and_the_sha256_of_its_code(tmp_path: Path) -> None:
    from warmcache_agent.config import AgentConfig, Resources
    from warmcache_agent.libvirt_driver import LibvirtDriver
    from warmcache_agent.operations import HostAgentService

    cfg = AgentConfig(
        hypervisor="h1",
        rack="r1",
        az="az1",
        state_dir=str(tmp_path),
        capacity=Resources(vcpus=8, memory_mib=8192, disk_gib=100),
    )
    facts = HostAgentService(cfg, LibvirtDriver("test:///default")).facts()
    assert facts.agent_version == identity.agent_version() and facts.agent_version
    assert facts.agent_sha256 == identity.installed_sha256() and len(facts.agent_sha256) == 64
    # the hash is of the code: a copy hashes the same, a changed file does not
    package = Path(identity.__file__).parent
    copy = tmp_path / "copy"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert identity.code_sha256(copy) == facts.agent_sha256
    (copy / "daemon.py").write_text((copy / "daemon.py").read_text() + "\n# patched\n")
    assert identity.code_sha256(copy) != facts.agent_sha256


def test_the_desired_build_is_maker_checker_and_the_fleet_says_who_matches(
    service: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    client = create_app(service).test_client()
    service.hosts.catch_up()
    reply = client.get("/v1/agents").get_json()
    assert reply["desired"] is None and len(reply["agents"]) == len(agents)
    assert {a["matches"] for a in reply["agents"]} == {None}
    build = {
        "version": "0.2.0",
        "sha256": SHA,
        "artifact": "/srv/agent-0.2.0.whl",
        "artifact_sha256": "cd" * 32,
    }
    request = service.approvals.ask("set_agent_version", build, "alice")
    assert service.agent_versions.desired() is None  # nothing before the approval
    service.approvals.approve(request.id, "bob")
    assert service.agent_versions.desired() == DesiredAgent.model_validate(build)
    # one agent runs the build, the others do not
    first = next(iter(agents.values()))
    facts = first.current_facts().model_copy(update={"agent_version": "0.2.0", "agent_sha256": SHA})
    service.store.put(service.keys.host(facts.az, facts.hypervisor), facts.model_dump_json())
    service.hosts.catch_up()
    reply = client.get("/v1/agents").get_json()
    matching = [a["hypervisor"] for a in reply["agents"] if a["matches"]]
    assert matching == [facts.hypervisor]
    assert sum(a["matches"] is False for a in reply["agents"]) == len(agents) - 1


@pytest.mark.parametrize("bad", [{"sha256": "xyz"}, {"version": "1.0; rm -rf /"}, {"artifact": ""}])
def test_a_malformed_build_is_refused_when_asked(bad: dict[str, str]) -> None:
    build = {"version": "0.2.0", "sha256": SHA, "artifact": "/a.whl", "artifact_sha256": SHA}
    with pytest.raises(ValidationError):
        DesiredAgent.model_validate({**build, **bad})
