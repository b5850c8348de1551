"""The ``warmcache`` command line (click)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from rich.table import Table

from warmcache.errors import WarmCacheError

console = Console()
DEFAULT_URL = "http://127.0.0.1:8080"


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


@click.group()
@click.version_option(package_name="warmcache")
def main() -> None:
    """warmcache: pools of ready VMs, acquired rack-aware in milliseconds."""


# --- serve --------------------------------------------------------------------------


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Service TOML (see config/service.example.toml).")
@click.option("--server", type=click.Choice(["waitress", "gunicorn", "granian", "werkzeug"]),
              default="waitress", show_default=True,
              help="HTTP server (the others are for bench/acquire.py's comparison; "
                   "werkzeug is the development server).")
def serve(config_path: str, server: str) -> None:
    """Run one service instance: HTTP API, leader election, build cycles."""
    from warmcache.web.server import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        run_server(config_path, server)
    except WarmCacheError as exc:
        _fail(str(exc), 2)


# --- quickstart -----------------------------------------------------------------------


def _default_state_dir() -> str:
    from platformdirs import user_data_dir

    return str(Path(user_data_dir("warmcache")) / "quickstart")


@main.command()
@click.option("--state-dir", default=_default_state_dir, show_default="user data dir",
              type=click.Path(file_okay=False), help="Where configs, store and logs go.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65534),
              help="API port of the first instance; the others use the next ports.")
@click.option("--instances", default=2, show_default=True, type=click.IntRange(1, 9),
              help="Service instances (they elect a leader among themselves).")
@click.option("--exit-after", type=click.FloatRange(min=0), default=None,
              help="Stop everything after this many seconds (default: run until Ctrl-C).")
@click.option("--config-dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Where flavors.toml and rules.toml are (default: the checkout's config/).")
@click.option("--create-delay", default=0.2, show_default=True, type=click.FloatRange(0, 60),
              help="Simulated seconds each VM takes to boot on test:///default.")
@click.option("--real-vms", is_flag=True,
              help="Boot real QEMU guests under libvirtd (root; one hypervisor, small pools).")
def quickstart(state_dir: str, port: int, instances: int, exit_after: float | None,
               config_dir: str | None, create_delay: float, real_vms: bool) -> None:
    """Run the whole system on the embedded stack and fill the pools."""
    from warmcache.quickstart import CHECKOUT_CONFIG, QuickstartError, QuickstartStack, Topology

    stack = QuickstartStack(
        Path(state_dir), port=port, instances=instances, create_delay_s=create_delay,
        config_dir=Path(config_dir) if config_dir else CHECKOUT_CONFIG, real_vms=real_vms,
        topology=Topology(azs=("az1",), racks_per_az=1, hypervisors_per_rack=1)
        if real_vms else Topology(),
    )
    started = time.monotonic()
    stopping = threading.Event()

    def _interrupt(_sig: int, _frame: object) -> None:
        stopping.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with console.status("starting agents and service instances..."):
            stack.start()
        hosts = stack.topology.hosts()
        console.print(
            f"[green]up:[/green] {len(hosts)} agents ({len(stack.topology.azs)} AZs x "
            f"{stack.topology.racks_per_az} racks x {stack.topology.hypervisors_per_rack} "
            f"hypervisors), {instances} instances: {', '.join(stack.urls)}"
        )
        _fill_with_progress(stack)
        console.print(f"pools full in {time.monotonic() - started:.1f} s")
        console.print(_pools_table(stack.pools()))
        leader = httpx.get(f"{stack.urls[0]}/v1/leader", timeout=5).json()["leader"]
        console.print(f"leader of the last cycle: {leader['node'] if leader else 'none (idle)'}")
        example = json.dumps({"flavor": "tiny", "az": "az1", "count": 2, "mode": "best-effort"}
                             if real_vms else
                             {"flavor": "small", "az": "az1", "count": 3, "mode": "rack-aware"})
        console.print("\nAcquire 2 real guests:" if real_vms
                      else "\nAcquire 3 VMs on 3 different racks:")
        print(f"  curl -s -X POST {stack.urls[0]}/v1/acquire "
              f"-H 'Content-Type: application/json' -d '{example}'")
        print(f"  curl -s {stack.urls[0]}/v1/pools")
        console.print(f"\ndashboard: {stack.urls[0]}/   metrics: {stack.urls[0]}/metrics   "
                      f"API: {stack.urls[0]}/v1/openapi.json", highlight=False, soft_wrap=True)
        console.print(f"\nstate and logs: {state_dir}")
        if exit_after is None:
            console.print("running; Ctrl-C stops every process started here")
            while True:
                time.sleep(3600)
        remaining = exit_after - (time.monotonic() - started)
        if remaining > 0:
            stopping.wait(remaining)
    except KeyboardInterrupt:
        pass
    except (QuickstartError, httpx.HTTPError) as exc:
        stack.stop()
        _fail(str(exc))
    finally:
        with console.status("stopping every process started by quickstart..."):
            stack.stop()
        signal.signal(signal.SIGTERM, previous)
    console.print("stopped")


def _fill_with_progress(stack: Any) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), console=console) as progress:
        tasks: dict[str, Any] = {}

        def update(pools: list[dict[str, Any]]) -> None:
            for p in pools:
                key = f"{p['az']}/{p['flavor']}"
                if key not in tasks:
                    tasks[key] = progress.add_task(key, total=p["target"], detail="")
                racks = len(p["ready_by_rack"])
                progress.update(
                    tasks[key], completed=p["ready"] + p["reserved"],
                    detail=f"building {p['building']}, reserved {p['reserved']}, "
                           f"on {racks} rack(s)",
                )

        stack.wait_full(on_update=update)


def _pools_table(pools: list[dict[str, Any]]) -> Table:
    table = Table(title="pools")
    for col in ("az", "flavor", "target", "ready", "reserved", "building", "ready by rack"):
        table.add_column(col)
    for p in pools:
        table.add_row(p["az"], p["flavor"], str(p["target"]), str(p["ready"]),
                      str(p["reserved"]), str(p["building"]),
                      ", ".join(f"{r}:{n}" for r, n in p["ready_by_rack"].items()))
    return table


# --- operator commands over HTTP ---------------------------------------------------------


def _request(method: str, url: str, **kwargs: Any) -> Any:
    """Operator commands call the HTTP API; ``WARMCACHE_TOKEN`` is their bearer token."""
    import os

    token = os.environ.get("WARMCACHE_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        reply = httpx.request(method, url, timeout=30, headers=headers, **kwargs)
    except httpx.HTTPError as exc:
        _fail(f"{url}: {exc}")
    body = reply.json()
    if reply.status_code >= 400:
        _fail(f"{body.get('error')}: {json.dumps(body.get('detail'))}")
    return body


@main.command()
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="WARMCACHE_URL")
def pools(url: str) -> None:
    """Show every pool: target, ready, reserved, building, spread."""
    console.print(_pools_table(_request("GET", f"{url}/v1/pools")["pools"]))


@main.command()
@click.argument("flavor")
@click.argument("az")
@click.argument("count", type=click.IntRange(min=1))
@click.option("--mode", type=click.Choice(["rack-aware", "hypervisor-aware", "best-effort"]),
              default="rack-aware", show_default=True)
@click.option("--use-reserve", is_flag=True, help="May take VMs held back by reserve_cap.")
@click.option("--requester", default="cli", show_default=True)
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="WARMCACHE_URL")
def acquire(flavor: str, az: str, count: int, mode: str, use_reserve: bool, requester: str,
            url: str) -> None:
    """Acquire COUNT VMs of FLAVOR in AZ; prints them as JSON."""
    body = _request("POST", f"{url}/v1/acquire", json={
        "flavor": flavor, "az": az, "count": count, "mode": mode,
        "use_reserve": use_reserve, "requester": requester,
    })
    print(json.dumps(body, indent=2))


@main.command()
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="WARMCACHE_URL")
def leader(url: str) -> None:
    """Who holds the leader lock now (none between cycles)."""
    print(json.dumps(_request("GET", f"{url}/v1/leader"), indent=2))


# --- build rules ---------------------------------------------------------------------------


@main.group()
def rules() -> None:
    """Read, write and validate build rules (one per AZ and flavor)."""


def _read_rule_source(source: str) -> Any:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # maybe TOML; the caller decides


@rules.command("list")
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="WARMCACHE_URL")
def rules_list(url: str) -> None:
    """Every rule in the store."""
    body = _request("GET", f"{url}/v1/rules")
    table = Table(title="build rules")
    for col in ("az", "flavor", "total", "per cycle", "racks", "reserve", "group", "enabled"):
        table.add_column(col)
    for item in body["rules"]:
        r = item["rule"]
        table.add_row(item["az"], item["flavor"], str(r["total_instances"]),
                      str(r["max_instance_per_cycle"]), str(r["min_fault_domain"]),
                      str(r["reserve_cap"]), r["group_hint"] or "", str(r["enabled"]))
    console.print(table)


@rules.command("get")
@click.argument("az")
@click.argument("flavor")
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="WARMCACHE_URL")
def rules_get(az: str, flavor: str, url: str) -> None:
    """Print the rule of FLAVOR in AZ as JSON (ready to edit and `set` back)."""
    print(json.dumps(_request("GET", f"{url}/v1/rules/{az}/{flavor}")["rule"], indent=2))


@rules.command("set")
@click.argument("az")
@click.argument("flavor")
@click.argument("source", default="-")
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="WARMCACHE_URL")
def rules_set(az: str, flavor: str, source: str, url: str) -> None:
    """Store the rule in SOURCE (a JSON file, or - for stdin) for FLAVOR in AZ.

    It is validated first; an invalid rule is refused and the old one stays."""
    rule = _read_rule_source(source)
    if not isinstance(rule, dict):
        _fail(f"{source}: a rule is a JSON object")
    body = _request("PUT", f"{url}/v1/rules/{az}/{flavor}", json=rule)
    print(json.dumps(body["rule"], indent=2))


@rules.command("validate")
@click.argument("source", default="-")
def rules_validate(source: str) -> None:
    """Check a rule (JSON object) or a rules file (TOML, [rules.AZ.FLAVOR]) offline."""
    from warmcache.rules import parse_rule, read_rules_file

    data = _read_rule_source(source)
    try:
        found = ({("-", "-"): data} if isinstance(data, dict)
                 else read_rules_file(str(data)))
        if not found:
            _fail(f"{source}: no rule found (want a JSON object or [rules.AZ.FLAVOR] tables)")
        for (az, flavor), fields in found.items():
            parse_rule(fields)
            console.print(f"[green]ok[/green] {az}/{flavor}" if az != "-" else "[green]ok[/green]")
    except WarmCacheError as exc:
        _fail(json.dumps(exc.detail(), indent=2))


@main.command()
@click.argument("az")
@click.argument("flavor")
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="WARMCACHE_URL")
def explain(az: str, flavor: str, url: str) -> None:
    """Where the next cycle would build FLAVOR in AZ, and why (nothing is built)."""
    body = _request("GET", f"{url}/v1/explain/{az}/{flavor}")
    console.print(f"{az}/{flavor}: {body['to_build']} to build on {body['hosts']} host(s)")
    for p in body["placements"]:
        console.print(f"  {p['vm']}: {p['hypervisor']} ({p['rack']}) - {p['explanation']}",
                      highlight=False, soft_wrap=True)
    if body["problem"]:
        console.print(f"[yellow]problem:[/yellow] {body['problem']}", highlight=False,
                      soft_wrap=True)


# --- maker-checker -------------------------------------------------------------------------


@main.group()
def requests() -> None:
    """Destructive changes: one admin asks, another approves (maker-checker)."""


@requests.command("ask")
@click.argument("action", type=click.Choice(["delete_rule", "purge_pool", "drain_hypervisor"]))
@click.argument("params", nargs=-1, required=True)
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="WARMCACHE_URL")
def requests_ask(action: str, params: tuple[str, ...], url: str) -> None:
    """Ask for ACTION with PARAMS as key=value (az=, flavor=, hypervisor=)."""
    try:
        fields = dict(p.split("=", 1) for p in params)
    except ValueError:
        _fail("parameters are key=value pairs, e.g. az=az1 flavor=small")
    body = _request("POST", f"{url}/v1/requests", json={"action": action, "params": fields})
    print(json.dumps(body["request"], indent=2))


@requests.command("list")
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="WARMCACHE_URL")
def requests_list(url: str) -> None:
    """Every request and its state (pending, expired, executed, failed)."""
    print(json.dumps(_request("GET", f"{url}/v1/requests")["requests"], indent=2))


@requests.command("approve")
@click.argument("request_id")
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="WARMCACHE_URL")
def requests_approve(request_id: str, url: str) -> None:
    """Approve (as a different admin than the asker) and run REQUEST_ID."""
    print(json.dumps(_request("POST", f"{url}/v1/requests/{request_id}/approve")["request"],
                     indent=2))


# --- flavor catalog -------------------------------------------------------------------------


@main.group()
def flavors() -> None:
    """Read and write the flavor catalog (file or MongoDB) named in a config."""


def _catalog(config_path: str) -> Any:
    from warmcache.bootstrap import build_catalog
    from warmcache.config import load_config

    try:
        return build_catalog(load_config(config_path))
    except WarmCacheError as exc:
        _fail(str(exc), 2)


@flavors.command("list")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
def flavors_list(config_path: str) -> None:
    """Every flavor in the catalog."""
    table = Table(title="flavors")
    for col in ("name", "vCPUs", "memory MiB", "disk GiB", "image", "provider flavor"):
        table.add_column(col)
    for f in _catalog(config_path).list():
        table.add_row(f.name, str(f.vcpus), str(f.memory_mib), str(f.disk_gib), f.image_id,
                      f.provider_flavor_id)
    console.print(table)


@flavors.command("set")
@click.argument("name")
@click.argument("fields", nargs=-1, required=True)
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
def flavors_set(name: str, fields: tuple[str, ...], config_path: str) -> None:
    """Add or replace flavor NAME from key=value FIELDS (vcpus=2 memory_mib=4096 ...)."""
    from warmcache.adapters.mongo_catalog import parse_flavor

    values: dict[str, Any] = {}
    for item in fields:
        key, sep, raw = item.partition("=")
        if not sep:
            _fail(f"{item!r}: fields are key=value")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    try:
        flavor = parse_flavor(name, values)
    except WarmCacheError as exc:
        _fail(json.dumps(exc.detail(), indent=2))
    _catalog(config_path).put(flavor)
    console.print(f"[green]stored[/green] {flavor.name}")


# --- Kibana dashboards -----------------------------------------------------------------------

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"


@main.group()
def dashboards() -> None:
    """Kibana saved objects and the Grafana dashboard in dashboards/."""


@dashboards.command("import")
@click.option("--kibana", required=True, help="Kibana URL, e.g. https://kibana:5601")
@click.option("--space", default="", help="Kibana space id (default space if empty).")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False),
              default=str(DASHBOARDS / "kibana.ndjson"), show_default=True)
def dashboards_import(kibana: str, space: str, path: str) -> None:
    """Import (overwrite) the saved objects into Kibana.

    Credentials: WARMCACHE_KIBANA_API_KEY (an API key), or
    WARMCACHE_KIBANA_USER and WARMCACHE_KIBANA_PASSWORD."""
    import os

    base = kibana.rstrip("/") + (f"/s/{space}" if space else "")
    headers = {"kbn-xsrf": "true"}
    auth = None
    if os.environ.get("WARMCACHE_KIBANA_API_KEY"):
        headers["Authorization"] = f"ApiKey {os.environ['WARMCACHE_KIBANA_API_KEY']}"
    elif os.environ.get("WARMCACHE_KIBANA_USER"):
        auth = (os.environ["WARMCACHE_KIBANA_USER"],
                os.environ.get("WARMCACHE_KIBANA_PASSWORD", ""))
    try:
        with open(path, "rb") as fh:
            reply = httpx.post(f"{base}/api/saved_objects/_import",
                               params={"overwrite": "true"}, headers=headers, auth=auth,
                               files={"file": ("kibana.ndjson", fh, "application/ndjson")},
                               timeout=60)
    except httpx.HTTPError as exc:
        _fail(f"{kibana}: {exc}")
    try:
        body = reply.json()
    except ValueError:
        _fail(f"Kibana answered HTTP {reply.status_code} without JSON")
    if reply.status_code >= 400 or not body.get("success"):
        _fail(f"import failed (HTTP {reply.status_code}): {json.dumps(body)[:2000]}")
    console.print(f"[green]imported[/green] {body.get('successCount')} saved object(s)")
