"""Which agents run which build: agents publish their version and code
sha256; the desired build is set by maker-checker; the fleet listing says
who matches."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.fakes import FakeAgent
from warmcache.agent_versions import DesiredAgent
from warmcache.layout import Keys
from warmcache.service import WarmCache
from warmcache.web import create_app
from warmcache_agent import identity

SHA = "ab" * 32


def test_an_agent_publishes_its_version_and_the_sha256_of_its_code(tmp_path: Path) -> None:
    from warmcache_agent.config import AgentConfig, DiskConfig, Resources
    from warmcache_agent.libvirt_driver import LibvirtDriver
    from warmcache_agent.operations import HostAgentService

    cfg = AgentConfig(
        # a pretend host, larger than this machine's disk: no filesystem check
        disks=DiskConfig(check_filesystem=False),
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


def desire(service: WarmCache) -> DesiredAgent:
    build = DesiredAgent(
        version="0.2.0", sha256=SHA, artifact="/srv/a.whl", artifact_sha256="cd" * 32
    )
    service.agent_versions.set_desired(build)
    return build


def slots(service: WarmCache) -> dict[str, str]:
    """hypervisor -> rack of every granted update slot."""
    return {
        Keys.name(kv.key): json.loads(kv.value)["rack"]
        for kv in service.store.range(service.keys.agents_updating())[0]
    }


def report_build(service: WarmCache, agents: dict[str, FakeAgent], hv: str) -> None:
    agent = next(a for a in agents.values() if a.current_facts().hypervisor == hv)
    facts = agent.current_facts().model_copy(update={"agent_version": "0.2.0", "agent_sha256": SHA})
    service.store.put(service.keys.host(facts.az, hv), facts.model_dump_json())
    service.hosts.catch_up()


def test_a_rollout_goes_a_few_agents_at_a_time_never_two_in_a_rack(
    make_service: Any, agents: dict[str, FakeAgent]
) -> None:
    service = make_service(agent_update_parallel=3)
    service.run_cycle()
    assert slots(service) == {}  # no desired build: nothing to roll out
    desire(service)
    updated: set[str] = set()
    rng = random.Random(3)
    for _ in range(20):  # one agent reports the build per cycle
        service.run_cycle()
        granted = slots(service)
        assert len(granted) <= 3 and len(set(granted.values())) == len(granted)  # a rack each
        assert not set(granted) & updated  # never an agent that matches
        if not granted:
            break
        done = rng.choice(sorted(granted))
        report_build(service, agents, done)
        updated.add(done)
    assert len(updated) == len(agents)  # the whole fleet, 12 agents in 6 racks
    kinds = Counter(e.type for e in service.events.recent(100, "agent.update_"))
    assert kinds["agent.update_granted"] == len(agents) == kinds["agent.update_done"]


def test_an_agent_that_takes_too_long_loses_its_slot_and_is_not_retried(
    make_service: Any, clock: Any
) -> None:
    service = make_service(agent_update_parallel=1, agent_update_timeout_s=60)
    desire(service)
    service.run_cycle()
    [first] = slots(service)
    clock.advance(61)
    service.run_cycle()
    [second] = slots(service)
    assert second != first
    fleet = {a.hypervisor: a for a in service.agent_versions.fleet()}
    assert fleet[first].last_update == "timed_out" and fleet[second].updating
    assert not fleet[first].updating
