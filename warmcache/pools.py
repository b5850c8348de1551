"""Pool summaries for ``GET /v1/pools`` and the CLI: pure arithmetic."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

from warmcache.model import BuildRule, InstanceState, PoolInstance, PoolSummary


def summarize(
    rules: Mapping[tuple[str, str], BuildRule], records: Iterable[PoolInstance]
) -> list[PoolSummary]:
    by_pool: dict[tuple[str, str], list[PoolInstance]] = defaultdict(list)
    for rec in records:
        by_pool[(rec.az, rec.flavor)].append(rec)
    out = []
    for az, flavor in sorted(set(rules) | set(by_pool)):
        recs = by_pool.get((az, flavor), [])
        states = Counter(r.state for r in recs)
        rule = rules.get((az, flavor))
        ready_by_rack = Counter(r.rack for r in recs if r.state == InstanceState.READY)
        out.append(
            PoolSummary(
                az=az,
                flavor=flavor,
                target=rule.total_instances if rule else 0,
                ready=states[InstanceState.READY],
                reserved=states[InstanceState.RESERVED],
                building=states[InstanceState.BUILDING],
                enabled=rule.enabled if rule else False,
                ready_by_rack=dict(sorted(ready_by_rack.items())),
            )
        )
    return out
