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
from warmcache.builders.rollover import surge
from warmcache.builders.run import AzRun
from warmcache.images import Image
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
        # re-scores the chosen host's rack after each placement, and every
        # host once when the batch spans the racks its rule asks.
        batch_racks: Counter[str] = Counter()
        request = PlacementRequest(
            flavor,
            rule.group_hint,
            per_rack,
            per_hv,
            batch_racks,
            racks_required(rule, wanted),
        )
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
            met = request.span_met
            batch_racks[host.rack] += 1
            session.placed(trial[host.hypervisor])
            if request.span_met and not met:
                session.rescore()
        needed = racks_required(rule, len(picked))
        if len(batch_racks) < needed:
            # Fewer racks than that have room for the flavor: one VM per rack
            # that has (a batch of r VMs on r racks spans min(r, m) racks).
            picked = _one_per_rack(picked)
            trial = _placed(live, picked)
            plan.problems[flavor_name] = (
                f"min_fault_domain={rule.min_fault_domain}: only {len(picked)} rack(s) have "
                f"room for {flavor_name}; built {len(picked)} of {wanted}, one per rack"
            )
        plan.builds += picked
        live = trial
    return plan


def _one_per_rack(picked: list[PlannedVm]) -> list[PlannedVm]:
    seen: set[str] = set()
    out = []
    for vm in picked:
        if vm.host.rack not in seen:
            seen.add(vm.host.rack)
            out.append(vm)
    return out


def _placed(live: Mapping[str, HostFacts], picked: Sequence[PlannedVm]) -> dict[str, HostFacts]:
    """``live`` with ``picked`` placed on it (their capacity taken)."""
    trial = dict(live)
    for vm in picked:
        hv = vm.host.hypervisor
        trial[hv] = trial[hv].minus(vm.flavor, vm.name, vm.rule.group_hint)
    return trial


def plan_builds(
    run: AzRun,
    rules: Mapping[str, BuildRule],
    flavors: Mapping[str, Flavor],
    images: Mapping[str, Image],
    hosts: Sequence[HostFacts],
    records: Sequence[PoolInstance],
    pipeline: PlacementPipeline,
    new_name: Callable[[str, str], str],
    retiring: Mapping[str, Sequence[tuple[PoolInstance, str]]],
) -> Plan:
    """The cycle's plan stage for an AZ: ``plan_az`` over its pools as sized
    this cycle, with a rollover's replacements (``retiring``) built first;
    its problems go to the cycle's report. A flavor whose image is not in
    the catalog (a hand-edited MongoDB) gets nothing built, and the report
    says why."""
    missing = {
        f: flavors[f].image_id
        for f in rules
        if f in flavors and flavors[f].image_id and flavors[f].image_id not in images
    }
    plan = plan_az(
        run.az,
        {f: r for f, r in rules.items() if f not in missing},
        flavors,
        hosts,
        records,
        pipeline,
        new_name,
        {f: surge(rules[f], len(vms)) for f, vms in retiring.items()},
    )
    with run.lock:
        run.report.problems += [f"{run.az}/{f}: {why}" for f, why in plan.problems.items()]
        run.report.problems += [
            f"{run.az}/{f}: image {i!r} is not in the catalog: nothing built"
            for f, i in sorted(missing.items())
        ]
    return plan
