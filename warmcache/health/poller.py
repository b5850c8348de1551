"""Health polling (DESIGN.md §9): one poller at a time, under its own TTL'd
lock (independent of build cycles), asks each heartbeating agent for the
state of its pooled VMs (libvirt state plus the guest's own answer).

* A failed check is written to the VM's record at once (``health_failures``);
  acquisition never hands out a VM with failures, so a VM is never handed
  out after the poll that caught it.
* ``failures_to_purge`` consecutive failures purge it: state ``purging``,
  destroyed through its agent, record removed, ``vm.purged`` event, alert.
* A VM that answers again has its count reset.
* A record left ``purging`` (its agent could not destroy the VM then, or a
  failed build's cleanup was cut short) is purged again at every poll until
  the VM is gone.
* VMs on a host whose heartbeat is gone are already out of the acquirable
  set (acquisition only takes VMs on live hosts); the poller reports the
  host once (``agent.heartbeat_lost``) and leaves the VMs for reconciliation
  or the host's return.

Every write is fenced by the poller lock and conditional on the record's
revision: a concurrent acquisition wins over a poll, never the reverse.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from warmcache.context import ServiceContext
from warmcache.errors import AgentError, LeadershipLost
from warmcache.layout import PoolRecords, Stored
from warmcache.leader.election import FencedWriter, LeaderElection
from warmcache.model import InstanceState, PoolInstance
from warmcache.ports import (
    Compare,
    Event,
    HostAgent,
    Put,
    VmStatus,
)
from warmcache.purge import purge_vm

log = logging.getLogger(__name__)
POLLED = (InstanceState.READY, InstanceState.RESERVED, InstanceState.PURGING)


@dataclass
class PollReport:
    checked: int = 0
    failed: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    hosts_lost: list[str] = field(default_factory=list)


class HealthPoller:
    """Polls every pooled VM's health through its agent, under a lock of its
    own (one poller at a time), ``service.health_interval_s`` apart."""

    def __init__(self, ctx: ServiceContext) -> None:
        config = ctx.config
        if config.health_failures_to_purge < 1:
            raise ValueError("failures_to_purge must be at least 1")
        self._store = ctx.store
        self._records = PoolRecords(ctx.store, ctx.keys)
        self._hosts = ctx.hosts
        self._agent_for = ctx.agent_for
        self._events = ctx.events
        self._alerts = ctx.alerts
        self._clock = ctx.clock
        self._limit = config.health_failures_to_purge
        self._release = ctx.addresses
        self.interval_s = config.health_interval_s
        self.election = LeaderElection(
            ctx.store,
            ctx.keys.health_lock(),
            config.node,
            ttl_s=config.leader_ttl_s,
            clock=ctx.clock,
        )
        self._lost_reported: set[str] = set()

    def job(self) -> float:
        """The scheduler's job: one poll, then wait ``interval_s``."""
        self.poll()
        return self.interval_s

    def poll(self) -> PollReport | None:
        """One poll, if this instance gets the poller lock (else ``None``)."""
        with self.election.lead() as leadership:
            if leadership is None:
                return None
            report = PollReport()
            try:
                self._poll(self.election.writer(leadership), report)
            except LeadershipLost:
                log.warning("health poller lost its lock mid-poll")
            return report

    def _poll(self, writer: FencedWriter, report: PollReport) -> None:
        self._hosts.catch_up()
        live = {h.hypervisor: h for h in self._hosts.hosts()}
        by_host: dict[str, list[Stored[PoolInstance]]] = defaultdict(list)
        for item in self._records.read()[0]:
            if item.record.state in POLLED:
                by_host[item.record.hypervisor].append(item)
        for hv, recs in sorted(by_host.items()):
            host = live.get(hv)
            if host is None:
                if hv not in self._lost_reported:
                    self._lost_reported.add(hv)
                    report.hosts_lost.append(hv)
                    self._emit("agent.heartbeat_lost", hypervisor=hv, vms=len(recs))
                continue
            self._lost_reported.discard(hv)
            agent = self._agent_for(host.endpoint)
            try:
                statuses = {s.name: s for s in agent.list()}
            except AgentError as exc:
                # It heartbeats but does not answer: no verdict on its VMs this
                # time (a dead agent's heartbeat expires and settles it).
                log.warning("health poll of %s failed: %s", hv, exc)
                continue
            for item in recs:
                rec = item.record
                if rec.state is InstanceState.PURGING:
                    self._purge(item, agent, writer, report, "finishing an interrupted purge")
                    continue
                report.checked += 1
                self._judge(item, statuses.get(rec.name), agent, writer, report)

    def _judge(
        self,
        item: Stored[PoolInstance],
        status: VmStatus | None,
        agent: HostAgent,
        writer: FencedWriter,
        report: PollReport,
    ) -> None:
        rec = item.record
        healthy = status is not None and status.healthy
        why = "missing on its host" if status is None else f"state {status.state}, no answer"
        if healthy and status is not None and not _has_its_address(rec, status):
            # A guest that reports its addresses and lacks the one on its
            # record would be handed out unreachable: not healthy.
            healthy = False
            why = f"its guest has {', '.join(status.addresses)}, not {rec.addresses[0]}"
        if healthy:
            if rec.health_failures:
                self._write(writer, item, rec.model_copy(update={"health_failures": 0}))
                report.recovered.append(rec.name)
                self._emit("health.recovered", name=rec.name, az=rec.az, hypervisor=rec.hypervisor)
            return
        failures = rec.health_failures + 1
        report.failed.append(rec.name)
        if failures < self._limit:
            if self._write(writer, item, rec.model_copy(update={"health_failures": failures})):
                self._emit(
                    "health.failed",
                    name=rec.name,
                    az=rec.az,
                    hypervisor=rec.hypervisor,
                    failures=failures,
                    reason=why,
                )
            return
        self._purge(
            item, agent, writer, report, f"failed {self._limit} health poll(s) in a row ({why})"
        )

    def _purge(
        self,
        item: Stored[PoolInstance],
        agent: HostAgent,
        writer: FencedWriter,
        report: PollReport,
        why: str,
    ) -> None:
        rec = item.record
        if not purge_vm(
            writer.txn,
            item.key,
            item.mod_revision,
            rec,
            agent,
            self._release,
            health_failures=rec.health_failures + 1,
        ):
            return
        report.purged.append(rec.name)
        self._emit(
            "vm.purged",
            name=rec.name,
            az=rec.az,
            flavor=rec.flavor,
            hypervisor=rec.hypervisor,
            reason=why,
        )
        self._alerts.alert(
            f"warmcache purged {rec.name}",
            f"{rec.name} ({rec.flavor}, {rec.az}, {rec.hypervisor}) {why}; "
            "it was destroyed and its record removed.",
        )

    def _write(self, writer: FencedWriter, item: Stored[PoolInstance], rec: PoolInstance) -> bool:
        return writer.txn(
            [Compare.mod_revision(item.key, item.mod_revision)],
            [Put(item.key, rec.model_dump_json())],
        ).succeeded

    def _emit(self, type_: str, **fields: object) -> None:
        self._events.emit(Event(type_, self._clock.now(), fields))


def _has_its_address(rec: PoolInstance, status: VmStatus) -> bool:
    """True unless the guest reports addresses and its recorded one is not
    among them (no report, as from libvirt's test driver: nothing to check)."""
    if not rec.addresses or not status.addresses:
        return True
    return rec.addresses[0] in {a.split("/", 1)[0] for a in status.addresses}
