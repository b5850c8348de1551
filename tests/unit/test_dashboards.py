"""The dashboards only use what exists: every Kibana field is in the event
mapping, every Grafana metric is exported; and the import command speaks
Kibana's saved-objects API (checked against a stand-in server: no Kibana
can be installed here)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from warmcache.adapters.elasticsearch_events import MAPPINGS
from warmcache.cli import main
from warmcache.model import Mode
from warmcache.service import WarmCache
from warmcache.web import create_app

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"


def _script(name: str) -> Any:
    """A build step's module (scripts/ is not a package: not shipped)."""
    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


kibana = _script("kibana_objects")


def kibana_lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DASHBOARDS / "kibana.ndjson").read_text().splitlines()]


def kibana_objects() -> list[dict[str, Any]]:
    return [o for o in kibana_lines() if "exportedCount" not in o]


def kql_fields(query: str) -> set[str]:
    return set(re.findall(r"([\w@.]+)\s*:", query))


def test_the_file_is_what_warmcache_kibana_builds() -> None:
    assert (DASHBOARDS / "kibana.ndjson").read_text() == kibana.ndjson(), (
        "regenerate: .venv/bin/python scripts/kibana_objects.py > dashboards/kibana.ndjson"
    )


def test_every_kibana_field_is_in_the_event_mapping() -> None:
    known = set(MAPPINGS["properties"])
    used: set[str] = set()
    for obj in kibana_objects():
        attrs = obj["attributes"]
        if obj["type"] == "lens":
            state = attrs["state"]
            for layer in state["datasourceStates"]["formBased"]["layers"].values():
                used |= {c["sourceField"] for c in layer["columns"].values()} - {"___records___"}
            used |= kql_fields(state["query"]["query"])
        if obj["type"] == "search":
            used |= set(attrs["columns"])
        source = attrs.get("kibanaSavedObjectMeta", {}).get("searchSourceJSON")
        if source:
            used |= kql_fields(json.loads(source)["query"]["query"])
    assert used and used <= known, used - known


def test_the_objects_are_in_kibanas_current_export_format() -> None:
    """Lens, not legacy visState visualizations; every object says which
    migrations it has had (Kibana migrates it on import, and refuses one
    newer than itself); the export ends with Kibana's summary line."""
    lines = kibana_lines()
    assert lines[-1]["exportedCount"] == len(lines) - 1 and lines[-1]["missingRefCount"] == 0
    kinds = {o["type"] for o in kibana_objects()}
    assert kinds == {"index-pattern", "lens", "search", "dashboard"}
    for obj in kibana_objects():
        assert re.fullmatch(r"8\.\d+\.\d+", obj["coreMigrationVersion"]), obj["id"]
        assert re.fullmatch(r"\d+\.\d+\.\d+", obj["typeMigrationVersion"]), obj["id"]
        assert "visState" not in obj["attributes"] and obj["managed"] is False
        if obj["type"] == "lens":
            assert obj["attributes"]["visualizationType"] in ("lnsXY", "lnsDatatable")
            layers = obj["attributes"]["state"]["datasourceStates"]["formBased"]["layers"]
            names = {r["name"] for r in obj["references"]}
            assert {f"indexpattern-datasource-layer-{layer}" for layer in layers} <= names
            for layer in layers.values():
                assert set(layer["columnOrder"]) == set(layer["columns"])
    [dashboard] = [o for o in kibana_objects() if o["type"] == "dashboard"]
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    names = {r["name"] for r in dashboard["references"]}
    assert {f"{p['panelIndex']}:{p['panelRefName']}" for p in panels} == names


def test_the_dashboard_shows_what_ebays_did() -> None:
    titles = " | ".join(o["attributes"]["title"] for o in kibana_objects() if o["type"] == "lens")
    for shown in (
        "VMs created over time",
        "errors",
        "provisioning time",
        "ready VMs per pool",
        "per rack and hypervisor",
        "leadership over time",
        "by requester",
    ):
        assert shown in titles, shown


def test_the_dashboard_references_resolve() -> None:
    objects = kibana_objects()
    ids = {(o["type"], o["id"]) for o in objects}
    for obj in objects:
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in ids, ref


def test_every_grafana_metric_is_exported(service: WarmCache) -> None:
    service.rules.put(
        "az1", "small", {"max_instance_per_cycle": 3, "total_instances": 3, "min_fault_domain": 3}
    )
    service.run_cycle()
    service.acquire("small", "az1", 1, Mode.BEST_EFFORT)
    scraped = create_app(service).test_client().get("/metrics").get_data(as_text=True)
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in scraped.splitlines()
        if line and not line.startswith("#")
    }
    exported |= {line.split()[2] for line in scraped.splitlines() if line.startswith("# TYPE")}
    used = {
        name
        for expr in grafana_exprs() + alert_exprs()
        for name in re.findall(r"warmcache_[a-z_]+", expr)
    }
    assert used and used <= exported, used - exported


def grafana_exprs() -> list[str]:
    grafana = json.loads((DASHBOARDS / "grafana.json").read_text())
    return [target["expr"] for panel in grafana["panels"] for target in panel["targets"]]


def alert_exprs() -> list[str]:
    import yaml  # PyYAML, which schemathesis brings

    rules = yaml.safe_load((DASHBOARDS / "prometheus-alerts.yml").read_text())
    return [" ".join(rule["expr"].split()) for group in rules["groups"] for rule in group["rules"]]


# Gauges every instance exports whole (the same numbers): summed over
# instances they would be multiplied by the number of instances.
WHOLE_POOL = (
    "warmcache_pool_rack_ready_vms",
    "warmcache_pool_vms",
    "warmcache_pool_target_vms",
    "warmcache_pool_low_water_vms",
    "warmcache_agents_heartbeating",
    "warmcache_last_cycle_finished_timestamp_seconds",
)


def test_no_panel_or_alert_sums_what_every_instance_exports_whole() -> None:
    for expr in grafana_exprs() + alert_exprs():
        for name in WHOLE_POOL:
            assert not re.search(rf"sum\b[^()]*(\([^()]*\))?\s*\(\s*{name}", expr), expr


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.skip("no promtool (apt-get install prometheus)")
    return found


def test_the_alert_rules_are_valid_and_fire_when_they_should() -> None:
    tool = promtool()
    for args in (
        ["check", "rules", "prometheus-alerts.yml"],
        ["test", "rules", "prometheus-alerts.test.yml"],
    ):
        done = subprocess.run(
            [tool, *args], cwd=DASHBOARDS, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_grafana_query_is_valid_promql(tmp_path: Path) -> None:
    rules = "groups:\n  - name: grafana\n    rules:\n" + "".join(
        f"      - record: warmcache:grafana_{i}\n        expr: {json.dumps(expr)}\n"
        for i, expr in enumerate(grafana_exprs())
    )
    (tmp_path / "grafana-rules.yml").write_text(rules)
    done = subprocess.run(
        [promtool(), "check", "rules", "grafana-rules.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_import_speaks_the_saved_objects_api() -> None:
    seen: dict[str, Any] = {}

    class Kibana(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen["path"] = self.path
            seen["xsrf"] = self.headers.get("kbn-xsrf")
            seen["auth"] = self.headers.get("Authorization")
            seen["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            data = json.dumps({"success": True, "successCount": 9}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Kibana)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        result = CliRunner().invoke(
            main,
            [
                "dashboards",
                "import",
                "--kibana",
                f"http://127.0.0.1:{server.server_port}",
                "--space",
                "ops",
            ],
            env={"WARMCACHE_KIBANA_API_KEY": "k3y"},
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert result.exit_code == 0 and "imported 9" in result.output, result.output
    assert seen["path"] == "/s/ops/api/saved_objects/_import?overwrite=true"
    assert seen["xsrf"] == "true" and seen["auth"] == "ApiKey k3y"
    assert b'filename="kibana.ndjson"' in seen["body"] and b"warmcache-overview" in seen["body"]


def test_every_alert_has_a_runbook() -> None:
    rules = (DASHBOARDS / "prometheus-alerts.yml").read_text()
    runbooks = (Path(__file__).resolve().parents[2] / "docs" / "runbooks.md").read_text()
    alerts = re.findall(r"- alert: (\w+)", rules)
    assert alerts and [a for a in alerts if f"\n## {a}\n" not in runbooks] == []
