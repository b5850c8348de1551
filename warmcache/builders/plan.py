"""Plan one cycle's builds for one AZ: which flavor, how many, on which host.

Pure: rules, host facts and pool records in; a ``Plan`` out. Hosts are
updated in the plan's own copies as VMs are placed, so two VMs of one cycle
never count the same free capacity twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from warmcache.builders.deficits import racks_required, state_counts, to_build
from warmcache.model import POOLED_STATES, BuildRule, Flavor, HostFacts, PoolInstance
from warmcache.placement.pipeline import Decision, PlacementPipeline
from warmcache.placement.request import PlacementRequest


@dataclass(frozen=True)
class PlannedVm:
    name: str
    flavor: Flavor
    rule: BuildRule
    host: HostFacts
    decision: Decision


@dataclass
class Plan:
    az: str
    builds: list[PlannedVm] = field(default_factory=list)
    # flavor -> why it builds fewer than its deficit (or nothing)
    problems: dict[str, str] = field(default_factory=dict)
    deficits: dict[str, int] = field(default_factory=dict)


def plan_az(
    az: str,
    rules: Mapping[str, BuildRule],
    flavors: Mapping[str, Flavor],
    hosts: Sequence[HostFacts],
    records: Sequence[PoolInstance],
    pipeline: PlacementPipeline,
    new_name: Callable[[str, str], str],
    surges: Mapping[str, int] | None = None,
) -> Plan:
    """``surges``: flavor -> VMs to build beyond its target (a rollover's
    replacements, built before the VMs they replace are retired)."""
    plan = Plan(az)
    live = {h.hypervisor: h for h in hosts}
    for flavor_name in sorted(rules):
        rule = rules[flavor_name]
        flavor = flavors.get(flavor_name)
        if flavor is None:
            plan.problems[flavor_name] = "flavor is not in the catalog"
            continue
        wanted = to_build(
            rule, state_counts(records, flavor_name), (surges or {}).get(flavor_name, 0)
        )
        plan.deficits[flavor_name] = wanted
        if wanted == 0:
            continue
        pooled = [r for r in records if r.flavor == flavor_name and r.state in POOLED_STATES]
        per_rack = Counter(r.rack for r in pooled)
        per_hv = Counter(r.hypervisor for r in pooled)
        picked: list[PlannedVm] = []
        trial = dict(live)
        # The request's counters are the ones updated below: the session
        # re-scores the chosen host's rack after each placement.
        request = PlacementRequest(flavor, rule.group_hint, per_rack, per_hv)
        session = pipeline.session(list(trial.values()), request)
        for _ in range(wanted):
            decision = session.pick()
            if decision.host is None:
                plan.problems[flavor_name] = (
                    f"placed {len(picked)} of {wanted}: {decision.explain()}"
                )
                break
            name = new_name(az, flavor_name)
            host = decision.host
            picked.append(PlannedVm(name, flavor, rule, host, decision))
            trial[host.hypervisor] = host.minus(flavor, name, rule.group_hint)
            per_rack[host.rack] += 1
            per_hv[host.hypervisor] += 1
            session.placed(trial[host.hypervisor])
        needed = racks_required(rule, len(picked))
        spanned = len({p.host.rack for p in picked})
        if spanned < needed:
            plan.problems[flavor_name] = (
                f"min_fault_domain={rule.min_fault_domain} not met: the {len(picked)} VM(s) "
                f"would span {spanned} rack(s); nothing built for this flavor"
            )
            continue
        plan.builds += picked
        live = trial
    return plan
