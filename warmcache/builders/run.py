"""``AzRun``: what every stage of one AZ's part of a build cycle needs,
carried together (the store and its key layout, the leader's fenced
writer, the live agents by hypervisor, the event emitter, the clock, the
cycle's report and the lock that guards it, the agent calls' parallelism),
so that a stage's signature names only what is its own."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from warmcache.builders.report import CycleReport
from warmcache.layout import Keys
from warmcache.leader.election import FencedWriter
from warmcache.ports import Clock, CoordinationStore, HostAgent


@dataclass(frozen=True)
class AzRun:
    az: str
    store: CoordinationStore
    keys: Keys
    writer: FencedWriter
    agents: Mapping[str, HostAgent]  # the live ones, by hypervisor
    emit: Callable[..., None]
    clock: Clock
    report: CycleReport
    concurrency: int = 8
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards the report
