"""The placement pipeline: validators, then preferences, then a random pick
among the top few equally good hosts (Protean-style, DESIGN.md §7).

Pure: hosts in, a decision with its explanation out. ``Decision.removed``
says how many hosts each validator removed, in order, so ``warmcache
explain`` and the build events can say why a VM went where it went, or why
it could not be placed.

A cycle places many VMs of one request over one AZ's hosts. ``session``
evaluates every host once, keeps the verdicts and scores (candidates in
buckets by score), and after each placement re-evaluates only what that
placement can have changed: the chosen host and the hosts of its rack
(DESIGN §7: never recomputed over the whole fleet per VM). That is exact
for validators and preferences that read only the host itself and the
request's counters for the host's rack and hypervisor, as all of these do,
and for the one thing a batch changes for every host at once: the moment
it spans the racks its rule asks (``span_met``), when the caller calls
``rescore`` (once per batch: every host re-scored).
"""

from __future__ import annotations

import itertools
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from warmcache.model import HostFacts
from warmcache.placement.preferences.fault_domains import SpanFaultDomains
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
        self.top_k = top_k
        self._rng = rng or random.Random()

    def choose(self, hosts: Sequence[HostFacts], request: PlacementRequest) -> Decision:
        """One placement (``session`` for several in a row)."""
        return self.session(hosts, request).pick()

    def session(self, hosts: Sequence[HostFacts], request: PlacementRequest) -> PlacementSession:
        return PlacementSession(self, hosts, request)

    def verdict(self, host: HostFacts, request: PlacementRequest) -> str | None:
        """The name of the first validator that removes ``host``, or ``None``."""
        for validator in self.validators:
            if not validator.keep(host, request):
                return validator.name
        return None

    def scores(self, host: HostFacts, request: PlacementRequest) -> tuple[float, ...]:
        # Tuples compare element by element: a higher-weight preference
        # outranks every lower one combined.
        return tuple(p.score(host, request) for p in self.preferences)

    def pick_among(self, tied: list[HostFacts]) -> HostFacts:
        """A random one of the first ``top_k`` equally good hosts."""
        return self._rng.choice(tied[: self.top_k])


class PlacementSession:
    """Placements in a row of one request over one host set (see the module
    doc). After placing a VM, the caller updates the request's counters and
    calls ``placed`` with the host's new facts."""

    def __init__(
        self, pipeline: PlacementPipeline, hosts: Sequence[HostFacts], request: PlacementRequest
    ) -> None:
        self._pipeline = pipeline
        self._request = request
        self._considered = len(hosts)
        self._hosts: dict[str, HostFacts] = {}
        self._rack: dict[str, list[str]] = defaultdict(list)
        self._removed_by: dict[str, str] = {}  # hypervisor -> validator
        self._removed: Counter[str] = Counter()
        self._key: dict[str, tuple[float, ...]] = {}  # candidates' scores
        self._buckets: dict[tuple[float, ...], dict[str, None]] = {}
        for host in hosts:
            self._hosts[host.hypervisor] = host
            self._rack[host.rack].append(host.hypervisor)
            self._evaluate(host.hypervisor)

    def pick(self) -> Decision:
        removed = {v.name: self._removed[v.name] for v in self._pipeline.validators}
        if not self._buckets:
            return Decision(None, self._considered, removed)
        best = self._buckets[max(self._buckets)]
        top = [self._hosts[name] for name in itertools.islice(best, self._pipeline.top_k)]
        return Decision(self._pipeline.pick_among(top), self._considered, removed, len(best))

    def placed(self, host: HostFacts) -> None:
        """``host`` (its facts after the placement) took a VM: re-evaluate it
        and its rack's hosts, whose counters moved."""
        self._hosts[host.hypervisor] = host
        for name in self._rack[host.rack]:
            self._evaluate(name)

    def rescore(self) -> None:
        """Re-evaluate every host: the request changed for all of them (the
        batch's rack span was met)."""
        for name in self._hosts:
            self._evaluate(name)

    def _evaluate(self, name: str) -> None:
        old_validator = self._removed_by.pop(name, None)
        if old_validator is not None:
            self._removed[old_validator] -= 1
        old_key = self._key.pop(name, None)
        if old_key is not None:
            bucket = self._buckets[old_key]
            del bucket[name]
            if not bucket:
                del self._buckets[old_key]
        host = self._hosts[name]
        validator = self._pipeline.verdict(host, self._request)
        if validator is not None:
            self._removed_by[name] = validator
            self._removed[validator] += 1
            return
        key = self._pipeline.scores(host, self._request)
        self._key[name] = key
        self._buckets.setdefault(key, {})[name] = None


def default_pipeline(rng: random.Random | None = None) -> PlacementPipeline:
    return PlacementPipeline(
        [HostHealthy(), HasCapacity(), NumaFit(), GroupAntiAffinity()],
        [SpanFaultDomains(), SpreadRacks(), SpreadHypervisors(), PackTightly()],
        rng=rng,
    )
