"""The placement pipeline: validators, then preferences, then a random pick
among the top few equally good hosts (Protean-style, DESIGN.md §7).

Pure: hosts in, a decision with its explanation out. ``Decision.removed``
says how many hosts each validator removed, in order, so ``warmcache
explain`` and the build events can say why a VM went where it went, or why
it could not be placed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from warmcache.model import HostFacts
from warmcache.placement.preferences.pack import PackTightly
from warmcache.placement.preferences.spread import SpreadHypervisors, SpreadRacks
from warmcache.placement.request import PlacementRequest
from warmcache.placement.validators.capacity import HasCapacity
from warmcache.placement.validators.group_hint import GroupAntiAffinity
from warmcache.placement.validators.host_state import HostHealthy
from warmcache.placement.validators.numa import NumaFit


class Validator(Protocol):
    name: str

    def keep(self, host: HostFacts, request: PlacementRequest) -> bool: ...


class Preference(Protocol):
    name: str
    weight: int

    def score(self, host: HostFacts, request: PlacementRequest) -> float: ...


@dataclass(frozen=True)
class Decision:
    host: HostFacts | None
    considered: int
    removed: dict[str, int] = field(default_factory=dict)
    tied: int = 0

    def explain(self) -> str:
        steps = ", ".join(f"{name} removed {n}" for name, n in self.removed.items())
        where = self.host.hypervisor if self.host else "nowhere"
        return f"{self.considered} host(s); {steps}; chose {where} among {self.tied} tied"


class PlacementPipeline:
    def __init__(
        self,
        validators: Sequence[Validator],
        preferences: Sequence[Preference],
        *,
        top_k: int = 3,
        rng: random.Random | None = None,
    ) -> None:
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        self.validators = list(validators)
        self.preferences = sorted(preferences, key=lambda p: -p.weight)
        self._top_k = top_k
        self._rng = rng or random.Random()

    def choose(self, hosts: Sequence[HostFacts], request: PlacementRequest) -> Decision:
        candidates = list(hosts)
        removed: dict[str, int] = {}
        for validator in self.validators:
            kept = [h for h in candidates if validator.keep(h, request)]
            removed[validator.name] = len(candidates) - len(kept)
            candidates = kept
        if not candidates:
            return Decision(None, len(hosts), removed)
        # Tuples compare element by element: a higher-weight preference
        # outranks every lower one combined.
        scored = sorted(
            candidates,
            key=lambda h: tuple(p.score(h, request) for p in self.preferences),
            reverse=True,
        )
        best = tuple(p.score(scored[0], request) for p in self.preferences)
        tied = [h for h in scored if tuple(p.score(h, request) for p in self.preferences) == best]
        pick = self._rng.choice(tied[: self._top_k])
        return Decision(pick, len(hosts), removed, len(tied))


def default_pipeline(rng: random.Random | None = None) -> PlacementPipeline:
    return PlacementPipeline(
        [HostHealthy(), HasCapacity(), NumaFit(), GroupAntiAffinity()],
        [SpreadRacks(), SpreadHypervisors(), PackTightly()],
        rng=rng,
    )
