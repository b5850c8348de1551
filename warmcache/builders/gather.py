"""What a cycle (or a dry run) starts from: the live hosts, each marked
``draining`` when it or its rack is drained, with the agent serving each."""

from __future__ import annotations

from collections.abc import Callable

from warmcache.drains import Drains
from warmcache.inventory import HostView
from warmcache.model import HostFacts
from warmcache.ports import HostAgent


def live_hosts(
    hosts: HostView, drains: Drains, agent_for: Callable[[str], HostAgent]
) -> tuple[dict[str, HostFacts], dict[str, HostAgent]]:
    """The live hosts by hypervisor id (from the host view, brought up to
    date from the change feed), drained ones (their own drain or their
    rack's) marked ``draining``, and the agent serving each; a host with no
    endpoint is left out."""
    hosts.catch_up()
    facts = {
        h.hypervisor: (
            h.model_copy(update={"draining": True}) if drains.of(h.hypervisor, h.az, h.rack) else h
        )
        for h in hosts.hosts()
    }
    agents = {hv: agent_for(h.endpoint) for hv, h in facts.items() if h.endpoint}
    return {hv: h for hv, h in facts.items() if hv in agents}, agents
