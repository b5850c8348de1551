"""The Kibana saved objects of ``dashboards/kibana.ndjson``, built here (Lens
visualizations, Kibana 8.8 and later) so that every field they use can be
checked against the event mapping. Regenerate the file with

    .venv/bin/python scripts/kibana_objects.py > dashboards/kibana.ndjson

(a test fails when the file and this module disagree).

What eBay's provisioning dashboards showed, over warmcache's events: VMs
created over time, errors, provisioning time, ready VMs per pool, VMs built
per rack and hypervisor, the leadership timeline, acquisitions by requester,
and a table of acquisitions."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

DATA_VIEW = "warmcache-events"
CORE_MIGRATION = "8.8.0"
# The newest migration of each type in Kibana 8.8: Kibana migrates them on
# import to its own version (a newer one than it knows is refused).
TYPE_MIGRATION = {
    "index-pattern": "8.0.0",
    "search": "8.0.0",
    "lens": "8.6.0",
    "dashboard": "8.7.0",
}
LAYER = "layer1"


@dataclass(frozen=True)
class Column:
    id: str
    operation: str  # date_histogram, count, terms, sum, max, percentile
    source: str = ""  # the event field
    label: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def state(self, order_by: str = "") -> dict[str, Any]:
        bucketed = self.operation in ("date_histogram", "terms")
        column: dict[str, Any] = {
            "label": self.label or self.operation,
            "customLabel": bool(self.label),
            "operationType": self.operation,
            "isBucketed": bucketed,
        }
        if self.operation == "date_histogram":
            column |= {
                "dataType": "date",
                "sourceField": "@timestamp",
                "scale": "interval",
                "params": {"interval": "auto", "includeEmptyRows": True, "dropPartials": False},
            }
        elif self.operation == "count":
            column |= {
                "dataType": "number",
                "sourceField": "___records___",
                "scale": "ratio",
                "params": {"emptyAsNull": True},
            }
        elif self.operation == "terms":
            column |= {
                "dataType": "string",
                "sourceField": self.source,
                "scale": "ordinal",
                "params": {
                    "size": self.params.get("size", 10),
                    "orderBy": {"type": "column", "columnId": order_by},
                    "orderDirection": "desc",
                    "otherBucket": True,
                    "missingBucket": False,
                    "parentFormat": {"id": "terms"},
                },
            }
        else:  # a metric of a number field
            column |= {
                "dataType": "number",
                "sourceField": self.source,
                "scale": "ratio",
                "params": {"emptyAsNull": True, **self.params},
            }
        return column


@dataclass(frozen=True)
class Lens:
    id: str
    title: str
    query: str  # KQL over the events
    columns: tuple[Column, ...]
    chart: str = "bar_stacked"  # bar_stacked, line, bar_horizontal, or "table"
    description: str = ""

    def fields(self) -> set[str]:
        used = {c.source for c in self.columns if c.source}
        return (
            used | {"@timestamp"}
            if any(c.operation == "date_histogram" for c in self.columns)
            else used
        )

    def saved_object(self) -> dict[str, Any]:
        buckets = [c for c in self.columns if c.operation in ("date_histogram", "terms")]
        metrics = [c for c in self.columns if c not in buckets]
        first_metric = metrics[0].id if metrics else ""
        columns = {c.id: c.state(order_by=first_metric) for c in self.columns}
        if self.chart == "table":
            visualization: dict[str, Any] = {
                "layerId": LAYER,
                "layerType": "data",
                "columns": [{"columnId": c.id} for c in self.columns],
            }
            kind = "lnsDatatable"
        else:
            x = next(
                c
                for c in buckets
                if c.operation == "date_histogram" or self.chart == "bar_horizontal"
            )
            split = [c.id for c in buckets if c.id != x.id]
            layer: dict[str, Any] = {
                "layerId": LAYER,
                "layerType": "data",
                "seriesType": self.chart,
                "xAccessor": x.id,
                "accessors": [m.id for m in metrics],
            }
            if split:
                layer["splitAccessor"] = split[0]
            visualization = {
                "preferredSeriesType": self.chart,
                "layers": [layer],
                "legend": {"isVisible": True, "position": "right"},
                "valueLabels": "hide",
            }
            kind = "lnsXY"
        return _object(
            "lens",
            self.id,
            {
                "title": self.title,
                "description": self.description,
                "visualizationType": kind,
                "state": {
                    "datasourceStates": {
                        "formBased": {
                            "layers": {
                                LAYER: {
                                    "columns": columns,
                                    "columnOrder": [c.id for c in buckets + metrics],
                                    "incompleteColumns": {},
                                }
                            }
                        }
                    },
                    "visualization": visualization,
                    "query": {"query": self.query, "language": "kuery"},
                    "filters": [],
                    "internalReferences": [],
                    "adHocDataViews": {},
                },
            },
            [
                {
                    "type": "index-pattern",
                    "id": DATA_VIEW,
                    "name": f"indexpattern-datasource-layer-{LAYER}",
                }
            ],
        )


def _object(
    kind: str, id_: str, attributes: dict[str, Any], references: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "type": kind,
        "id": id_,
        "attributes": attributes,
        "references": references,
        "managed": False,
        "coreMigrationVersion": CORE_MIGRATION,
        "typeMigrationVersion": TYPE_MIGRATION[kind],
    }


TIME = Column("t", "date_histogram", label="@timestamp")
COUNT = Column("n", "count", label="Events")

LENSES = (
    Lens(
        "wc-vms-created",
        "warmcache: VMs created over time",
        'type : "vm.build_finished"',
        (TIME, Column("flavor", "terms", "flavor", "Flavor"), Column("n", "count", label="VMs")),
    ),
    Lens(
        "wc-errors",
        "warmcache: errors over time (failed builds, failed acquisitions)",
        'type : ("vm.build_failed" or "acquisition.failed" or "vm.purged")',
        (TIME, Column("what", "terms", "type", "Event"), COUNT),
    ),
    Lens(
        "wc-failed-acquisitions",
        "warmcache: failed acquisitions by error code",
        'type : "acquisition.failed"',
        (Column("error", "terms", "error", "Error code"), Column("n", "count", label="Requests")),
        chart="bar_horizontal",
    ),
    Lens(
        "wc-provisioning-time",
        "warmcache: provisioning time (record to ready), p50 / p95",
        'type : "vm.build_finished"',
        (
            TIME,
            Column("p50", "percentile", "duration_s", "p50 s", {"percentile": 50}),
            Column("p95", "percentile", "duration_s", "p95 s", {"percentile": 95}),
        ),
        chart="line",
    ),
    Lens(
        "wc-ready-per-pool",
        "warmcache: ready VMs per pool (after each cycle)",
        'type : "pool.state"',
        (
            TIME,
            Column("pool", "terms", "flavor", "Flavor", {"size": 20}),
            Column("ready", "max", "ready", "Ready VMs"),
        ),
        chart="line",
    ),
    Lens(
        "wc-rollover",
        "warmcache: rollover progress (stale VMs left per pool, after each cycle)",
        'type : "pool.rollout"',
        (
            TIME,
            Column("pool", "terms", "flavor", "Flavor", {"size": 20}),
            Column("stale", "max", "stale_left", "Stale VMs left"),
        ),
        chart="line",
    ),
    Lens(
        "wc-built-per-rack",
        "warmcache: VMs built per rack and hypervisor",
        'type : "vm.build_finished"',
        (
            Column("rack", "terms", "rack", "Rack", {"size": 50}),
            Column("hv", "terms", "hypervisor", "Hypervisor", {"size": 500}),
            Column("n", "count", label="VMs built"),
        ),
        chart="table",
    ),
    Lens(
        "wc-leadership",
        "warmcache: leadership over time (elected, lost, takeover, released)",
        "type : leader.*",
        (TIME, Column("what", "terms", "type", "Event"), COUNT),
    ),
    Lens(
        "wc-leaders",
        "warmcache: cycles led per instance",
        'type : "leader.elected"',
        (TIME, Column("node", "terms", "node", "Instance"), Column("n", "count", label="Cycles")),
    ),
    Lens(
        "wc-acquisitions-by-requester",
        "warmcache: VMs acquired by requester",
        'type : "acquisition"',
        (
            TIME,
            Column("who", "terms", "requester", "Requester", {"size": 20}),
            Column("vms", "sum", "count", "VMs"),
        ),
    ),
    Lens(
        "wc-acquire-latency",
        "warmcache: acquisition latency p50 / p99 (ms)",
        'type : "acquisition"',
        (
            TIME,
            Column("p50", "percentile", "latency_ms", "p50 ms", {"percentile": 50}),
            Column("p99", "percentile", "latency_ms", "p99 ms", {"percentile": 99}),
        ),
        chart="line",
    ),
    Lens(
        "wc-acquisitions-by-tier",
        "warmcache: acquisitions by the standby tier they were served from",
        'type : "acquisition"',
        (TIME, Column("tier", "terms", "tier", "Slowest tier"), COUNT),
    ),
    Lens(
        "wc-latency-split",
        "warmcache: acquisition latency split, p99 (select, commit, wake ms)",
        'type : "acquisition"',
        (
            TIME,
            Column("select", "percentile", "select_ms", "select ms", {"percentile": 99}),
            Column("commit", "percentile", "commit_ms", "commit ms", {"percentile": 99}),
            Column("wake", "percentile", "wake_ms", "wake ms", {"percentile": 99}),
        ),
        chart="line",
    ),
)

SEARCH_COLUMNS = ("requester", "az", "flavor", "count", "mode", "latency_ms", "vms")


def saved_objects() -> list[dict[str, Any]]:
    data_view = _object(
        "index-pattern",
        DATA_VIEW,
        {
            "title": f"{DATA_VIEW}*",
            "timeFieldName": "@timestamp",
            "name": "warmcache events",
        },
        [],
    )
    search = _object(
        "search",
        "wc-acquisitions",
        {
            "title": "warmcache: acquisitions",
            "columns": list(SEARCH_COLUMNS),
            "sort": [["@timestamp", "desc"]],
            "kibanaSavedObjectMeta": {
                "searchSourceJSON": json.dumps(
                    {
                        "query": {"query": 'type : "acquisition"', "language": "kuery"},
                        "filter": [],
                        "indexRefName": "kibanaSavedObjectMeta.searchSourceJSON.index",
                    }
                )
            },
        },
        [
            {
                "type": "index-pattern",
                "id": DATA_VIEW,
                "name": "kibanaSavedObjectMeta.searchSourceJSON.index",
            }
        ],
    )
    panels, references = [], []
    for i, lens in enumerate(LENSES):
        index = str(i + 1)
        panels.append(
            {
                "version": CORE_MIGRATION,
                "type": "lens",
                "panelIndex": index,
                "gridData": {"x": (i % 2) * 24, "y": (i // 2) * 15, "w": 24, "h": 15, "i": index},
                "embeddableConfig": {"enhancements": {}},
                "panelRefName": f"panel_{index}",
            }
        )
        references.append({"type": "lens", "id": lens.id, "name": f"{index}:panel_{index}"})
    index = str(len(LENSES) + 1)
    panels.append(
        {
            "version": CORE_MIGRATION,
            "type": "search",
            "panelIndex": index,
            "gridData": {"x": 0, "y": (len(LENSES) + 1) // 2 * 15, "w": 48, "h": 15, "i": index},
            "embeddableConfig": {"enhancements": {}},
            "panelRefName": f"panel_{index}",
        }
    )
    references.append({"type": "search", "id": "wc-acquisitions", "name": f"{index}:panel_{index}"})
    dashboard = _object(
        "dashboard",
        "warmcache-overview",
        {
            "title": "warmcache: pools, builds, leadership, acquisitions",
            "description": "From the warmcache-events data stream (events.kind = elasticsearch).",
            "panelsJSON": json.dumps(panels),
            "optionsJSON": json.dumps(
                {
                    "useMargins": True,
                    "syncColors": False,
                    "syncCursor": True,
                    "syncTooltips": False,
                    "hidePanelTitles": False,
                }
            ),
            "timeRestore": True,
            "timeFrom": "now-24h",
            "timeTo": "now",
            "refreshInterval": {"pause": False, "value": 60000},
            "kibanaSavedObjectMeta": {
                "searchSourceJSON": json.dumps(
                    {"query": {"query": "", "language": "kuery"}, "filter": []}
                )
            },
        },
        references,
    )
    return [data_view, *(lens.saved_object() for lens in LENSES), search, dashboard]


def ndjson() -> str:
    """The export file: one object a line, then Kibana's export summary."""
    objects = saved_objects()
    lines = [json.dumps(o, sort_keys=True) for o in objects]
    lines.append(
        json.dumps(
            {
                "excludedObjects": [],
                "excludedObjectsCount": 0,
                "exportedCount": len(objects),
                "missingRefCount": 0,
                "missingReferences": [],
            },
            sort_keys=True,
        )
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(ndjson())
