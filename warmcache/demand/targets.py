"""``TargetView``: the targets the leader set for demand-sized pools
(``<prefix>/targets/<az>/<flavor>``), as the change feed brings them.

Every instance follows it: an acquisition's low-water mark and
``GET /v1/pools`` compare a demand-sized pool against its current target,
not its rule's ceiling. A pool without a target (static, or not sized yet)
uses its rule's ``total_instances``.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from warmcache.layout import Keys
from warmcache.model import BuildRule, Tiers
from warmcache.ports import CoordinationStore
from warmcache.views import PrefixView


class Target(NamedTuple):
    total: int
    tiers: Tiers | None  # an objective pool's mix


def _target(_key: str, value: str) -> Target:
    raw = json.loads(value)
    target = raw.get("target") if isinstance(raw, dict) else None
    if not isinstance(target, int) or isinstance(target, bool) or target < 0:
        raise ValueError("a target is a non-negative integer")
    tiers = raw.get("tiers")
    return Target(target, None if tiers is None else Tiers.model_validate(tiers))


def target_value(
    target: int, own: int, share: int | None, at: float, tiers: Tiers | None = None
) -> str:
    """The stored form: the target, what the pool's forecast asked for on
    its own, the budget share it got (None: no budget), when; and an
    objective pool's tier mix."""
    out: dict[str, object] = {"target": target, "own": own, "share": share, "at": at}
    if tiers is not None:
        out["tiers"] = tiers.as_dict()
    return json.dumps(out)


class TargetView(PrefixView[Target]):
    def __init__(self, store: CoordinationStore, keys: Keys) -> None:
        self._keys = keys
        super().__init__(store, keys.targets_dir(), _target)

    def target(self, az: str, flavor: str) -> Target | None:
        with self._lock:
            item = self._items.get(self._keys.target(az, flavor))
        return item[0] if item else None

    def get(self, az: str, flavor: str) -> int | None:
        found = self.target(az, flavor)
        return None if found is None else found.total

    def sized(self, az: str, flavor: str, rule: BuildRule) -> BuildRule:
        """The rule as the pool is sized now (demand: its current target,
        and an objective pool's mix)."""
        if rule.sizing != "demand":
            return rule
        found = self.target(az, flavor)
        return rule if found is None else rule.sized(found.total, found.tiers)
