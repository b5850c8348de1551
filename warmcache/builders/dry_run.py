"""A pool's dry run (``warmcache pools plan``, ``GET /v1/pools/<az>/<flavor>/plan``):
what the next cycle would build for it, where and why. Nothing is created
or written."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from warmcache.builders.gather import live_hosts
from warmcache.builders.plan import plan_az
from warmcache.builders.rollover import retirable, surge
from warmcache.builders.upkeep import away
from warmcache.demand.sizing import Sizer
from warmcache.drains import Drains
from warmcache.inventory import HostView
from warmcache.layout import Keys, PoolRecords, RuleRecords
from warmcache.model import BuildRule, Flavor
from warmcache.placement.pipeline import PlacementPipeline
from warmcache.ports import CoordinationStore, HostAgent


def dry_run(
    az: str,
    flavor: str,
    rule: BuildRule,
    *,
    store: CoordinationStore,
    keys: Keys,
    hosts: HostView,
    agent_for: Callable[[str], HostAgent],
    flavors: Mapping[str, Flavor],
    pipeline: PlacementPipeline,
    sizer: Sizer | None,
    now: float,
) -> dict[str, object]:
    drains = Drains.read(store, keys)
    facts, _ = live_hosts(hosts, drains, agent_for)
    in_az = [h for h in facts.values() if h.az == az]
    records = PoolRecords(store, keys).by_az().get(az, [])
    gone = away(records, facts, drains)
    records = [r for r in records if r.name not in gone]
    counter = iter(range(1, 1_000_000))
    sizing: dict[str, object] | None = None
    if sizer is not None:
        rules = {**RuleRecords(store, keys).by_az().get(az, {}), flavor: rule}
        sizing = sizer.explain(az, flavor, rules, flavors, records)
        target = sizing.get("target")
        if rule.sizing == "demand" and isinstance(target, int):
            rule = rule.sized(target)
    retiring = len(retirable(records, flavor, rule, now))
    plan = plan_az(
        az,
        {flavor: rule},
        flavors,
        in_az,
        records,
        pipeline,
        lambda _az, _f: f"next-{next(counter)}",
        {flavor: surge(rule, retiring)},
    )
    return {
        "az": az,
        "flavor": flavor,
        "hosts": len(in_az),
        "to_build": plan.deficits.get(flavor, 0),
        "to_replace": retiring,
        "problem": plan.problems.get(flavor),
        "sizing": sizing,
        "placements": [
            {
                "vm": vm.name,
                "hypervisor": vm.host.hypervisor,
                "rack": vm.host.rack,
                "removed": vm.decision.removed,
                "tied": vm.decision.tied,
                "explanation": vm.decision.explain(),
            }
            for vm in plan.builds
        ],
    }
