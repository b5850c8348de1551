"""Reconcile findings that agents publish (``<prefix>/findings/<az>/<hv>``)
become events and one alert, once: the leader remembers (fenced) up to
which store revision it has reported."""

from __future__ import annotations

import json
from collections.abc import Callable

from warmcache.layout import Keys
from warmcache.leader.election import FencedWriter
from warmcache.ports import AlertSink, CoordinationStore


def report_findings(
    store: CoordinationStore,
    keys: Keys,
    writer: FencedWriter,
    emit: Callable[..., None],
    alerts: AlertSink,
) -> int:
    """Emit ``reconcile.finding`` events for findings not reported yet;
    returns how many were new."""
    mark_key = keys.findings_reported()
    mark = store.get(mark_key)
    seen = int(mark.value) if mark else 0
    kvs, revision = store.range(keys.findings_dir())
    lines: list[str] = []
    for kv in kvs:
        if kv.mod_revision <= seen:
            continue
        doc = json.loads(kv.value)
        for finding in doc.get("findings", []):
            emit("reconcile.finding", hypervisor=doc.get("hypervisor"), **finding)
            lines.append(
                f"  {doc.get('hypervisor')}: {finding['kind']} {finding['vm']}: {finding['detail']}"
            )
    if lines:
        alerts.alert(
            f"warmcache reconcile: {len(lines)} finding(s)",
            "Reported, not repaired: an operator decides.\n\n" + "\n".join(lines),
        )
    if revision > seen:
        writer.put(mark_key, str(revision))
    return len(lines)
