"""``TargetView``: the targets the leader set for demand-sized pools
(``<prefix>/targets/<az>/<flavor>``), as the change feed brings them.

Every instance follows it: an acquisition's low-water mark and
``GET /v1/pools`` compare a demand-sized pool against its current target,
not its rule's ceiling. A pool without a target (static, or not sized yet)
uses its rule's ``total_instances``.
"""

from __future__ import annotations

import json

from warmcache.layout import Keys
from warmcache.model import BuildRule
from warmcache.ports import CoordinationStore
from warmcache.views import PrefixView


def _target(_key: str, value: str) -> int:
    raw = json.loads(value)
    target = raw.get("target") if isinstance(raw, dict) else None
    if not isinstance(target, int) or isinstance(target, bool) or target < 0:
        raise ValueError("a target is a non-negative integer")
    return target


def target_value(target: int, own: int, share: int | None, at: float) -> str:
    """The stored form: the target, what the pool's forecast asked for on
    its own, the budget share it got (None: no budget), when."""
    return json.dumps({"target": target, "own": own, "share": share, "at": at})


class TargetView(PrefixView[int]):
    def __init__(self, store: CoordinationStore, keys: Keys) -> None:
        self._keys = keys
        super().__init__(store, keys.targets_dir(), _target)

    def get(self, az: str, flavor: str) -> int | None:
        with self._lock:
            item = self._items.get(self._keys.target(az, flavor))
        return item[0] if item else None

    def sized(self, az: str, flavor: str, rule: BuildRule) -> BuildRule:
        """The rule as the pool is sized now (demand: its current target)."""
        if rule.sizing != "demand":
            return rule
        target = self.get(az, flavor)
        return rule if target is None else rule.sized(target)
