"""The ``warmcache`` command line (click).

Operator commands call the HTTP API through ``warmcache.Client``: the global
``--url`` and ``--token`` (``WARMCACHE_URL``, ``WARMCACHE_TOKEN``) say where
and as whom; read commands print a table or, with ``-o json``, JSON. Errors
go to stderr as ``error: <code>: <message>``, and the exit code says which
family failed (``EXIT_CODES``, a contract scripts rely on):

    0 ok                    4 not found (unknown_*)
    1 any other error       5 unavailable: store, contention, overloaded,
    2 usage (bad arguments,   unreachable server, claim_outcome_unknown
      invalid_request)      6 authentication or authorization
    3 no capacity, or over a
      quota (quota_exceeded)
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import httpx
from rich.console import Console
from rich.table import Table

from warmcache.actions import ACTIONS
from warmcache.client import Client
from warmcache.errors import (
    ApprovalRefused,
    ClaimContention,
    ConfigError,
    Forbidden,
    InvalidRequest,
    LeadershipLost,
    NoCapacity,
    NotFound,
    Overloaded,
    QuotaExceeded,
    ResumeFailed,
    ServerUnreachable,
    StoreError,
    Unauthorized,
    WarmCacheError,
)
from warmcache.logs import log_options, setup_logging
from warmcache.resources import dashboards_dir

console = Console()
errors = Console(stderr=True)
DEFAULT_URL = "http://127.0.0.1:8080"

# Error family -> exit code, most specific first (the module docstring).
EXIT_CODES: list[tuple[tuple[type[WarmCacheError], ...], int]] = [
    ((NoCapacity, QuotaExceeded), 3),
    ((NotFound,), 4),
    ((StoreError, ClaimContention, ResumeFailed, Overloaded, ServerUnreachable, LeadershipLost), 5),
    ((Unauthorized, Forbidden, ApprovalRefused), 6),
    ((InvalidRequest,), 2),
]


def exit_code(exc: WarmCacheError) -> int:
    return next((code for classes, code in EXIT_CODES if isinstance(exc, classes)), 1)


def _fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _fail_with(exc: WarmCacheError) -> NoReturn:
    detail = exc.detail()
    extra = ""
    if isinstance(exc, InvalidRequest) and exc.errors:
        extra = "\n" + json.dumps(detail, indent=2)
    _fail(f"{exc.code}: {exc}{extra}", exit_code(exc))


class _Commands(click.Group):
    """Every subcommand's ``WarmCacheError`` -> stderr and its family's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WarmCacheError as exc:
            _fail_with(exc)


@dataclass
class _Target:
    url: str
    token: str | None
    timeout_s: float

    def client(self) -> Client:
        return Client(self.url, token=self.token, timeout_s=self.timeout_s)


@click.group(cls=_Commands)
@click.version_option(package_name="warmcache")
@click.option(
    "--url",
    default=DEFAULT_URL,
    show_default=True,
    envvar="WARMCACHE_URL",
    help="The API of any instance (env WARMCACHE_URL).",
)
@click.option(
    "--token",
    default=None,
    envvar="WARMCACHE_TOKEN",
    help="Bearer token (env WARMCACHE_TOKEN; prefer the variable: a flag shows "
    "in the process list).",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="Seconds per HTTP request.",
)
@click.pass_context
def main(ctx: click.Context, url: str, token: str | None, timeout_s: float) -> None:
    """warmcache: pools of ready VMs, acquired rack-aware in milliseconds.

    Shell completion: eval "$(_WARMCACHE_COMPLETE=bash_source warmcache)"
    (zsh_source, fish_source for the other shells)."""
    ctx.obj = _Target(url, token, timeout_s)


F = TypeVar("F", bound=Callable[..., Any])


def _url_option(fn: F) -> F:
    """The old per-command ``--url`` (hidden; the global one is the documented way)."""

    def keep(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value:
            ctx.ensure_object(_Target).url = value

    return click.option("--url", hidden=True, expose_value=False, callback=keep, is_eager=True)(fn)


def _output_option(default: str = "table") -> Callable[[F], F]:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json"]),
        default=default,
        show_default=True,
        help="Output format.",
    )


def _client() -> Client:
    target: _Target = click.get_current_context().find_object(_Target)  # type: ignore[assignment]
    return target.client()


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _dump(models: Any) -> Any:
    if isinstance(models, list):
        return [m.model_dump(mode="json") for m in models]
    return None if models is None else models.model_dump(mode="json")


# --- serve --------------------------------------------------------------------------


@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Service TOML (see config/service.example.toml).",
)
@click.option(
    "--server",
    type=click.Choice(["waitress", "gunicorn", "granian", "werkzeug"]),
    default="waitress",
    show_default=True,
    help="HTTP server (the others are for bench/acquire.py's comparison; "
    "werkzeug is the development server).",
)
@log_options
def serve(config_path: str, server: str, log_level: str, log_format: str) -> None:
    """Run one service instance: HTTP API, leader election, build cycles."""
    from warmcache.web.server import serve as run_server

    setup_logging(log_level, log_format)
    try:
        run_server(config_path, server)
    except WarmCacheError as exc:
        _fail(str(exc), 2)


# --- quickstart -----------------------------------------------------------------------


def _default_state_dir() -> str:
    from platformdirs import user_data_dir

    return str(Path(user_data_dir("warmcache")) / "quickstart")


@main.command()
@click.option(
    "--state-dir",
    default=_default_state_dir,
    show_default="user data dir",
    type=click.Path(file_okay=False),
    help="Where configs, store and logs go.",
)
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(1, 65534),
    help="API port of the first instance; the others use the next ports.",
)
@click.option(
    "--instances",
    default=2,
    show_default=True,
    type=click.IntRange(1, 9),
    help="Service instances (they elect a leader among themselves).",
)
@click.option(
    "--exit-after",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop everything after this many seconds (default: run until Ctrl-C).",
)
@click.option(
    "--config-dir",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Where flavors.toml and rules.toml are (default: the checkout's config/).",
)
@click.option(
    "--create-delay",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 60),
    help="Simulated seconds each VM takes to boot on test:///default.",
)
@click.option(
    "--real-vms",
    is_flag=True,
    help="Boot real QEMU guests under libvirtd (root; one hypervisor, small pools).",
)
def quickstart(
    state_dir: str,
    port: int,
    instances: int,
    exit_after: float | None,
    config_dir: str | None,
    create_delay: float,
    real_vms: bool,
) -> None:
    """Run the whole system on the embedded stack and fill the pools."""
    from warmcache.quickstart import EXAMPLE_CONFIG, QuickstartError, QuickstartStack, Topology

    stack = QuickstartStack(
        Path(state_dir),
        port=port,
        instances=instances,
        create_delay_s=create_delay,
        config_dir=Path(config_dir) if config_dir else EXAMPLE_CONFIG,
        real_vms=real_vms,
        topology=Topology(azs=("az1",), racks_per_az=1, hypervisors_per_rack=1)
        if real_vms
        else Topology(),
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
        example = json.dumps(
            {"flavor": "tiny", "az": "az1", "count": 2, "mode": "best-effort"}
            if real_vms
            else {"flavor": "small", "az": "az1", "count": 3, "mode": "rack-aware"}
        )
        console.print(
            "\nAcquire 2 real guests:" if real_vms else "\nAcquire 3 VMs on 3 different racks:"
        )
        print(
            f"  curl -s -X POST {stack.urls[0]}/v1/acquire "
            f"-H 'Content-Type: application/json' -d '{example}'"
        )
        print(f"  curl -s {stack.urls[0]}/v1/pools")
        console.print(
            f"\ndashboard: {stack.urls[0]}/   metrics: {stack.urls[0]}/metrics   "
            f"API: {stack.urls[0]}/v1/openapi.json",
            highlight=False,
            soft_wrap=True,
        )
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

    with Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
    ) as progress:
        tasks: dict[str, Any] = {}

        def update(pools: list[dict[str, Any]]) -> None:
            for p in pools:
                key = f"{p['az']}/{p['flavor']}"
                if key not in tasks:
                    tasks[key] = progress.add_task(key, total=p["target"], detail="")
                racks = len(p["ready_by_rack"])
                progress.update(
                    tasks[key],
                    completed=p["ready"] + p["reserved"],
                    detail=f"building {p['building']}, reserved {p['reserved']}, "
                    f"on {racks} rack(s)",
                )

        stack.wait_full(on_update=update)


def _pools_table(pools: list[dict[str, Any]]) -> Table:
    table = Table(title="pools")
    columns = (
        "az",
        "flavor",
        "target",
        "ready",
        "reserved",
        "building",
        "stale",
        "tiers held/target",
        "ready by rack",
    )
    for col in columns:
        table.add_column(col)
    for p in pools:
        held, wanted = p.get("standby", {}), p.get("tier_targets", {})
        tiers = ", ".join(
            f"{t} {held.get(t, 0)}/{wanted.get(t, 0)}"
            for t in ("running", "paused", "saved")
            if held.get(t) or wanted.get(t)
        )
        table.add_row(
            p["az"],
            p["flavor"],
            str(p["target"]),
            str(p["ready"]),
            str(p["reserved"]),
            str(p["building"]),
            str(p.get("stale", 0)),
            tiers,
            ", ".join(f"{r}:{n}" for r, n in p["ready_by_rack"].items()),
        )
    return table


# --- operator commands over HTTP ---------------------------------------------------------


@main.command()
@_output_option()
@_url_option
def pools(output: str) -> None:
    """Show every pool: target, ready, reserved, building, stale (being replaced), the
    standby tiers (held/target), spread."""
    with _client() as wc:
        found = _dump(wc.pools())
    _print_json(found) if output == "json" else console.print(_pools_table(found))


def _vms_table(vms: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("name", "rack", "hypervisor", "server id", "addresses"):
        table.add_column(col)
    for vm in vms:
        table.add_row(
            vm["name"], vm["rack"], vm["hypervisor"], vm["server_id"], ", ".join(vm["addresses"])
        )
    return table


@main.command()
@click.argument("flavor")
@click.argument("az")
@click.argument("count", type=click.IntRange(min=1))
@click.option(
    "--mode",
    type=click.Choice(["rack-aware", "hypervisor-aware", "best-effort"]),
    default="rack-aware",
    show_default=True,
)
@click.option("--use-reserve", is_flag=True, help="May take VMs held back by reserve_cap.")
@click.option("--requester", default="cli", show_default=True)
@click.option(
    "--claim-id",
    default=None,
    help="Name the claim (1-64 of A-Z a-z 0-9 _ -): running the command again "
    "with it returns the same VMs instead of claiming more.",
)
@click.option(
    "--lease",
    "lease_s",
    type=click.IntRange(min=1),
    default=None,
    help="Hold the VMs this many seconds, then they are reclaimed (`warmcache vms renew`).",
)
@_output_option("json")
@_url_option
def acquire(
    flavor: str,
    az: str,
    count: int,
    mode: str,
    use_reserve: bool,
    requester: str,
    claim_id: str | None,
    lease_s: int | None,
    output: str,
) -> None:
    """Acquire COUNT VMs of FLAVOR in AZ, all or nothing (exit 3: no capacity).
    Give them back with `warmcache vms release NAME` (or `claims release ID`)."""
    with _client() as wc:
        vms = _dump(
            wc.acquire(
                flavor,
                az,
                count,
                mode,
                use_reserve=use_reserve,
                requester=requester,
                claim_id=claim_id,
                lease_s=lease_s,
            )
        )
    if output == "json":
        _print_json({"vms": vms})
    else:
        console.print(_vms_table(vms, f"{count} x {flavor} in {az}"))


@main.group()
def claims() -> None:
    """Look up claims made under a claim id (idempotent acquisitions)."""


@claims.command("get")
@click.argument("claim_id")
@_output_option()
@_url_option
def claims_get(claim_id: str, output: str) -> None:
    """The claim CLAIM_ID and its VMs (exit 4 if no claim landed under it)."""
    with _client() as wc:
        found = wc.claim(claim_id).model_dump(mode="json")
    if output == "json":
        _print_json(found)
    else:
        console.print(
            f"claim {found['claim_id']}: {found['state']} by {found['requester']}", highlight=False
        )
        console.print(_vms_table(found["vms"], "VMs"))


@main.command()
@_output_option()
@_url_option
def leader(output: str) -> None:
    """Who holds the leader lock now (none between cycles)."""
    with _client() as wc:
        holder = _dump(wc.leader())
    if output == "json":
        _print_json({"leader": holder})
    elif holder is None:
        console.print("no leader (between cycles)")
    else:
        console.print(
            f"{holder['node']} since {holder['since']:.0f} (token {holder['token']})",
            highlight=False,
        )


# --- build rules ---------------------------------------------------------------------------


@claims.command("release")
@click.argument("claim_id")
@_url_option
def claims_release(claim_id: str) -> None:
    """Give back every VM of the claim CLAIM_ID (they are releasing)."""
    with _client() as wc:
        _print_json({"vms": _dump(wc.release_claim(claim_id))})


@main.group()
def vms() -> None:
    """Every tracked VM; give back, renew and add disks to the ones you hold."""


@vms.command("list")
@click.option("--state", default=None, help="ready, acquired, releasing, ...")
@click.option("--requester", default=None, help="Only the VMs this requester holds.")
@click.option("--az", default=None)
@click.option("--flavor", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--after", default=None, help="The last name of the page before (paging).")
@_output_option()
@_url_option
def vms_list(
    state: str | None,
    requester: str | None,
    az: str | None,
    flavor: str | None,
    limit: int,
    after: str | None,
    output: str,
) -> None:
    """A page of VMs, by name; the next page: --after <the last name>."""
    with _client() as wc:
        page = wc.vms(
            state=state, requester=requester, az=az, flavor=flavor, limit=limit, after=after
        )
    found = _dump(page.vms)
    if output == "json":
        _print_json({"vms": found, "next": page.next})
        return
    table = Table(title="VMs")
    for col in ("name", "state", "az", "flavor", "hypervisor", "holder", "expires", "disks"):
        table.add_column(col)
    for vm in found:
        expires = vm["expires_at"]
        table.add_row(
            vm["name"],
            vm["state"],
            vm["az"],
            vm["flavor"],
            vm["hypervisor"],
            vm["holder"] or "-",
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(expires)) if expires else "-",
            " ".join(d["target"] for d in vm["data_disks"]) or "-",
        )
    console.print(table)
    if page.next:
        console.print(f"more: --after {page.next}", highlight=False)


@vms.command("get")
@click.argument("name")
@_url_option
def vms_get(name: str) -> None:
    """One VM as JSON (exit 4 if there is none)."""
    with _client() as wc:
        _print_json(wc.vm(name).model_dump(mode="json"))


@vms.command("release")
@click.argument("names", nargs=-1, required=True)
@_url_option
def vms_release(names: tuple[str, ...]) -> None:
    """Give back the VMs NAMES (you hold them, or you are an admin)."""
    with _client() as wc:
        _print_json({"vms": [_dump(wc.release(n))[0] for n in names]})


@vms.command("renew")
@click.argument("name")
@click.argument("lease_s", type=click.IntRange(min=1))
@_url_option
def vms_renew(name: str, lease_s: int) -> None:
    """Hold NAME for LEASE_S more seconds from now."""
    with _client() as wc:
        _print_json(wc.renew(name, lease_s).model_dump(mode="json"))


@vms.command("attach-disk")
@click.argument("name")
@click.argument("size_gib", type=click.IntRange(min=1))
@click.option(
    "--preallocation",
    type=click.Choice(["off", "metadata", "falloc", "full"]),
    default="off",
    show_default=True,
)
@_url_option
def vms_attach_disk(name: str, size_gib: int, preallocation: str) -> None:
    """Attach a new SIZE_GIB data disk to NAME (a VM you hold)."""
    with _client() as wc:
        _print_json(wc.attach_disk(name, size_gib, preallocation).model_dump(mode="json"))


@vms.command("detach-disk")
@click.argument("name")
@click.argument("target")
@_url_option
def vms_detach_disk(name: str, target: str) -> None:
    """Detach and delete NAME's data disk TARGET (vdb, vdc, ...)."""
    with _client() as wc:
        _print_json(wc.detach_disk(name, target).model_dump(mode="json"))


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
@_output_option()
@_url_option
def rules_list(output: str) -> None:
    """Every rule in the store."""
    with _client() as wc:
        found = _dump(wc.rules())
    if output == "json":
        _print_json({"rules": found})
        return
    table = Table(title="build rules")
    for col in ("az", "flavor", "total", "per cycle", "racks", "reserve", "group", "enabled"):
        table.add_column(col)
    for item in found:
        r = item["rule"]
        table.add_row(
            item["az"],
            item["flavor"],
            str(r["total_instances"]),
            str(r["max_instance_per_cycle"]),
            str(r["min_fault_domain"]),
            str(r["reserve_cap"]),
            r["group_hint"] or "",
            str(r["enabled"]),
        )
    console.print(table)


def _rule_table(az: str, flavor: str, rule: dict[str, Any]) -> Table:
    table = Table(title=f"{az}/{flavor}")
    table.add_column("field")
    table.add_column("value")
    for name, value in rule.items():
        table.add_row(name, json.dumps(value))
    return table


@rules.command("get")
@click.argument("az")
@click.argument("flavor")
@_output_option("json")
@_url_option
def rules_get(az: str, flavor: str, output: str) -> None:
    """Print the rule of FLAVOR in AZ (JSON by default: ready to edit and `set` back)."""
    with _client() as wc:
        rule = wc.get_rule(az, flavor).model_dump(mode="json")
    _print_json(rule) if output == "json" else console.print(_rule_table(az, flavor, rule))


@rules.command("set")
@click.argument("az")
@click.argument("flavor")
@click.argument("source", default="-")
@_url_option
def rules_set(az: str, flavor: str, source: str) -> None:
    """Store the rule in SOURCE (a JSON file, or - for stdin) for FLAVOR in AZ.

    It is validated first; an invalid rule is refused and the old one stays."""
    rule = _read_rule_source(source)
    if not isinstance(rule, dict):
        _fail(f"{source}: a rule is a JSON object", 2)
    with _client() as wc:
        _print_json(wc.put_rule(az, flavor, rule).model_dump(mode="json"))


@rules.command("validate")
@click.argument("source", default="-")
def rules_validate(source: str) -> None:
    """Check a rule (JSON object) or a rules file (TOML, [rules.AZ.FLAVOR]) offline."""
    from warmcache.rules import parse_rule, read_rules_file

    data = _read_rule_source(source)
    found = {("-", "-"): data} if isinstance(data, dict) else read_rules_file(str(data))
    if not found:
        _fail(f"{source}: no rule found (want a JSON object or [rules.AZ.FLAVOR] tables)", 2)
    for (az, flavor), fields in found.items():
        parse_rule(fields)
        console.print(f"[green]ok[/green] {az}/{flavor}" if az != "-" else "[green]ok[/green]")


@main.group(invoke_without_command=True)
@_output_option()
@_url_option
@click.pass_context
def agents(ctx: click.Context, output: str) -> None:
    """Every agent's version and code sha256, and whether it runs the desired build."""
    if ctx.invoked_subcommand is not None:
        return
    with _client() as wc:
        reply = wc.agents().model_dump(mode="json")
    if output == "json":
        _print_json(reply)
        return
    desired = reply["desired"]
    title = (
        f"agents (desired: {desired['version']} {desired['sha256'][:12]})"
        if desired
        else "agents (no desired build set)"
    )
    table = Table(title=title)
    for col in ("hypervisor", "az", "rack", "version", "sha256", "matches", "update"):
        table.add_column(col)
    for a in reply["agents"]:
        matches = "" if a["matches"] is None else ("yes" if a["matches"] else "NO")
        update = "updating" if a["updating"] else (a["last_update"] or "")
        table.add_row(
            a["hypervisor"], a["az"], a["rack"], a["version"], a["sha256"][:12], matches, update
        )
    console.print(table)


@agents.command("desired")
@click.argument("version")
@click.argument("sha256")
@click.argument("artifact")
@click.argument("artifact_sha256")
@_url_option
def agents_desired(version: str, sha256: str, artifact: str, artifact_sha256: str) -> None:
    """Ask for VERSION (its code SHA256, as agents report it; fetched from
    ARTIFACT, whose own sha256 is ARTIFACT_SHA256) as the build every agent
    should run: maker-checker, another admin approves."""
    with _client() as wc:
        asked = wc.ask_change(
            "set_agent_version",
            {
                "version": version,
                "sha256": sha256,
                "artifact": artifact,
                "artifact_sha256": artifact_sha256,
            },
        )
    console.print(f"asked as request [bold]{asked.id}[/bold]", highlight=False)


@main.group()
def networks() -> None:
    """Address pools: each VM's IP, per AZ (or rack), held while it lives."""


@networks.command("list")
@_output_option()
@_url_option
def networks_list(output: str) -> None:
    """Every address pool, how many addresses it has and holds."""
    with _client() as wc:
        found = _dump(wc.networks())
    if output == "json":
        _print_json({"networks": found})
        return
    table = Table(title="address pools")
    for col in ("az", "name", "rack", "cidrs", "gateway", "size", "held"):
        table.add_column(col)
    for n in found:
        p = n["pool"]
        table.add_row(
            n["az"],
            n["name"],
            p["rack"] or "(any)",
            " ".join(p["cidrs"]),
            p["gateway"],
            str(n["size"]),
            str(n["held"]),
        )
    console.print(table)


@networks.command("get")
@click.argument("az")
@click.argument("name")
@_url_option
def networks_get(az: str, name: str) -> None:
    """Print one pool (JSON: ready to edit and `set` back)."""
    with _client() as wc:
        _print_json(wc.get_network(az, name).pool.model_dump(mode="json"))


@networks.command("set")
@click.argument("az")
@click.argument("name")
@click.argument("source", default="-")
@_url_option
def networks_set(az: str, name: str, source: str) -> None:
    """Create pool NAME in AZ from SOURCE (JSON, or - for stdin): cidrs,
    gateway, dns, excluded, rack. An existing pool is not changed here: a
    change is asked for (maker-checker) and runs once another admin approves."""
    from warmcache.errors import NetworkExists

    pool = _read_rule_source(source)
    if not isinstance(pool, dict):
        _fail(f"{source}: a pool is a JSON object", 2)
    with _client() as wc:
        try:
            _print_json(wc.create_network(az, name, pool).model_dump(mode="json"))
        except NetworkExists:
            asked = wc.ask_change("update_network", {"az": az, "name": name, "pool": pool})
            console.print(
                f"{az}/{name} exists: change asked for as request [bold]{asked.id}"
                f"[/bold]; another admin approves it with "
                f"`warmcache requests approve {asked.id}`",
                highlight=False,
            )


@networks.command("delete")
@click.argument("az")
@click.argument("name")
@_url_option
def networks_delete(az: str, name: str) -> None:
    """Ask for the pool's deletion (maker-checker); its VMs keep their addresses."""
    with _client() as wc:
        asked = wc.ask_change("delete_network", {"az": az, "name": name})
    console.print(f"asked as request [bold]{asked.id}[/bold]", highlight=False)


@main.group()
def images() -> None:
    """Images in the catalog: what each flavor's VMs boot from."""


@images.command("list")
@_output_option()
@_url_option
def images_list(output: str) -> None:
    """Every image, its format, size and the flavors that boot it."""
    with _client() as wc:
        found = _dump(wc.images())
    if output == "json":
        _print_json({"images": found})
        return
    table = Table(title="images")
    for col in ("id", "format", "size", "min disk", "sha256", "boot", "flavors"):
        table.add_column(col)
    for entry in found:
        i = entry["image"]
        table.add_row(
            i["id"],
            i["format"],
            f"{i['size_bytes'] / 2**20:.1f} MiB",
            f"{i['min_disk_gib']} GiB",
            i["sha256"][:12],
            "kernel" if i.get("boot") else "disk",
            " ".join(entry["flavors"]) or "-",
        )
    console.print(table)


@images.command("get")
@click.argument("image_id")
@_url_option
def images_get(image_id: str) -> None:
    """Print one image record (JSON: ready to edit and `set` back)."""
    with _client() as wc:
        _print_json(wc.get_image(image_id).image.model_dump(mode="json", exclude_none=True))


@images.command("describe")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--id", "image_id", required=True, help="The image's id in the catalog.")
@click.option("--source", default="", help="Where agents fetch it (default: PATH itself).")
@click.option("--min-disk-gib", type=int, default=None, help="Default: its virtual size.")
def images_describe(path: Path, image_id: str, source: str, min_disk_gib: int | None) -> None:
    """Print the record of the image file PATH (sha256, size, format as
    qemu-img reads it), ready for `warmcache images set`."""
    import hashlib
    import subprocess

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    try:
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", str(path)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        _fail(f"qemu-img cannot read {path}: {exc}", 2)
    virtual_gib = -(-int(info.get("virtual-size", 0)) // 2**30)
    _print_json(
        {
            "id": image_id,
            "source": source or str(path.resolve()),
            "sha256": digest.hexdigest(),
            "format": info.get("format"),
            "size_bytes": path.stat().st_size,
            "min_disk_gib": min_disk_gib or max(1, virtual_gib),
        }
    )


@images.command("set")
@click.argument("source", default="-")
@_url_option
def images_set(source: str) -> None:
    """Register an image, or point its id at new bytes, from SOURCE (an
    image record as JSON, or - for stdin): asked for (maker-checker), done
    once another admin approves; the pools of flavors naming it roll over."""
    image = _read_rule_source(source)
    if not isinstance(image, dict):
        _fail(f"{source}: an image is a JSON object", 2)
    with _client() as wc:
        asked = wc.ask_change("set_image", {"image": image})
    console.print(
        f"asked as request [bold]{asked.id}[/bold]; another admin approves it with "
        f"`warmcache requests approve {asked.id}`",
        highlight=False,
    )


@images.command("delete")
@click.argument("image_id")
@_url_option
def images_delete(image_id: str) -> None:
    """Ask for an image's removal (maker-checker; refused while a flavor
    names it or a VM boots it)."""
    with _client() as wc:
        asked = wc.ask_change("delete_image", {"id": image_id})
    console.print(f"asked as request [bold]{asked.id}[/bold]", highlight=False)


@main.group()
def budgets() -> None:
    """AZ budgets (VMs or vCPUs) shared by the AZ's demand-sized pools."""


@budgets.command("list")
@_output_option()
@_url_option
def budgets_list(output: str) -> None:
    """Every AZ budget."""
    with _client() as wc:
        found = _dump(wc.budgets())
    if output == "json":
        _print_json({"budgets": found})
        return
    table = Table(title="AZ budgets")
    for col in ("az", "unit", "amount"):
        table.add_column(col)
    for b in found:
        unit = next(u for u in ("vms", "vcpus", "cost") if u in b["budget"])
        table.add_row(b["az"], unit, str(b["budget"][unit]))
    console.print(table)


@budgets.command("get")
@click.argument("az")
@_url_option
def budgets_get(az: str) -> None:
    """Print AZ's budget (JSON)."""
    with _client() as wc:
        _print_json(wc.get_budget(az).model_dump())


@budgets.command("set")
@click.argument("az")
@click.option("--vms", type=int, help="The AZ's pools hold at most this many VMs.")
@click.option("--vcpus", type=int, help="The AZ's pools hold at most this many vCPUs.")
@click.option(
    "--cost",
    type=float,
    help="The AZ's waiting VMs cost at most this many units per hour ([cost] weights).",
)
@_url_option
def budgets_set(az: str, vms: int | None, vcpus: int | None, cost: float | None) -> None:
    """Set AZ's budget: --vms N, --vcpus N or --cost X (validated; a bad one changes
    nothing)."""
    given = {k: v for k, v in (("vms", vms), ("vcpus", vcpus), ("cost", cost)) if v is not None}
    if len(given) != 1:
        _fail("give exactly one of --vms, --vcpus and --cost", 2)
    body: dict[str, Any] = given
    with _client() as wc:
        _print_json(wc.put_budget(az, body).model_dump())


@budgets.command("delete")
@click.argument("az")
@_url_option
def budgets_delete(az: str) -> None:
    """Remove AZ's budget: its demand pools go back to their own targets."""
    with _client() as wc:
        was = wc.delete_budget(az)
    console.print(f"{az}: budget {was.amount} {was.unit} removed", highlight=False)


def _sizing_lines(s: dict[str, Any]) -> list[str]:
    if s["sizing"] != "demand":
        lines = [f"sizing static: target {s['target']} (total_instances), holds {s['held']}"]
    else:
        fc, h = s["forecast"], s["history"]
        lines = [
            f"sizing demand: target {s['target']} (forecast asks {s['own_target']}, within "
            f"[{s['floor']}, {s['ceiling']}]), holds {s['held']}",
            f"  history: {h['hours']} hour(s) since {h['since']}, {h['recent_vms']} VMs asked "
            f"recently; last bins {h['recent_bins']}",
            f"  forecast over {s['horizon_s']:.0f} s (build {s['build_s']:.0f} s + a cycle): "
            f"p50 {fc['window_p50']}, q{s['quantile']} {fc['window_at_quantile']} from "
            f"{fc['windows']} window(s){' by time of day' if fc['seasonal'] else ''}; "
            f"{fc['requests']} request(s), need at q{s['quantile']} {fc['need_at_quantile']} "
            f"(+{fc['need_shift']} drain); {fc['misses_per_h_at_target']} misses/h at target",
        ]
    if s.get("budget"):
        b = s["budget"]
        lines.append(f"  budget: {b['share']} of {b['total']} {b['unit']}")
    return lines


@main.command()
@click.argument("az")
@click.argument("flavor")
@_output_option()
@_url_option
def explain(az: str, flavor: str, output: str) -> None:
    """Where the next cycle would build FLAVOR in AZ, and why (nothing is
    built); how the pool's target was set (demand: history, forecast, budget)."""
    with _client() as wc:
        body = wc.explain(az, flavor).model_dump(mode="json")
    if output == "json":
        _print_json(body)
        return
    if body.get("sizing"):
        for line in _sizing_lines(body["sizing"]):
            console.print(line, highlight=False, soft_wrap=True)
    console.print(f"{az}/{flavor}: {body['to_build']} to build on {body['hosts']} host(s)")
    for p in body["placements"]:
        console.print(
            f"  {p['vm']}: {p['hypervisor']} ({p['rack']}) - {p['explanation']}",
            highlight=False,
            soft_wrap=True,
        )
    if body["problem"]:
        console.print(
            f"[yellow]problem:[/yellow] {body['problem']}", highlight=False, soft_wrap=True
        )


# --- hosts, capacity, drains, quotas ---------------------------------------------------------


def _asked(asked: Any) -> None:
    console.print(
        f"asked as request [bold]{asked.id}[/bold]: another admin runs "
        f"`warmcache requests approve {asked.id}`",
        highlight=False,
    )


def _amounts(resource: dict[str, int]) -> str:
    return f"{resource['free']}/{resource['total']}"


@main.group()
def hosts() -> None:
    """Hypervisors: capacity, booked and free, VMs, heartbeat, drains."""


@hosts.command("list")
@click.option("--az", default=None)
@click.option("--rack", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--after", default=None, help="The next of the page before (AZ/hypervisor).")
@_output_option()
@_url_option
def hosts_list(
    az: str | None, rack: str | None, limit: int, after: str | None, output: str
) -> None:
    """A page of hypervisors in (AZ, name) order; free/total per resource."""
    with _client() as wc:
        page = wc.hosts(az=az, rack=rack, limit=limit, after=after)
    found = _dump(page.hosts)
    if output == "json":
        _print_json({"hosts": found, "next": page.next})
        return
    table = Table(title="hosts (free/total)")
    for col in ("hypervisor", "az", "rack", "status", "vCPUs", "memory MiB", "disk GiB", "NVMe"):
        table.add_column(col)
    table.add_column("VMs")
    for h in found:
        c = h["capacity"]
        table.add_row(
            h["hypervisor"],
            h["az"],
            h["rack"],
            h["status"],
            _amounts(c["vcpus"]),
            _amounts(c["memory_mib"]),
            _amounts(c["disk_gib"]),
            _amounts(c["nvme"]),
            " ".join(f"{k}={v}" for k, v in sorted(h["vms"].items())) or "-",
        )
    console.print(table)
    if page.next:
        console.print(f"more: --after {page.next}", highlight=False)


@hosts.command("get")
@click.argument("hypervisor")
@_url_option
def hosts_get(hypervisor: str) -> None:
    """One hypervisor as JSON (exit 4 if none heartbeats or holds VMs)."""
    with _client() as wc:
        _print_json(wc.host(hypervisor).model_dump(mode="json"))


@main.command()
@click.option("--az", default=None)
@_output_option()
@_url_option
def capacity(az: str | None, output: str) -> None:
    """Free and booked capacity per AZ and rack (free/total)."""
    with _client() as wc:
        found = wc.capacity(az).model_dump(mode="json")
    if output == "json":
        _print_json(found)
        return
    table = Table(title="capacity (free/total)")
    for col in ("az", "rack", "hosts", "drained", "unreachable", "vCPUs", "memory MiB"):
        table.add_column(col)
    table.add_column("disk GiB")
    table.add_column("NVMe")
    for a in found["azs"]:
        for r in [*a["racks"], {**a, "rack": "(all)"}]:
            c = r["capacity"]
            table.add_row(
                a["az"],
                r["rack"],
                str(r["hosts"]),
                str(r["drained"]),
                str(r["unreachable"]),
                _amounts(c["vcpus"]),
                _amounts(c["memory_mib"]),
                _amounts(c["disk_gib"]),
                _amounts(c["nvme"]),
            )
    console.print(table)


_EVACUATE = click.option(
    "--evacuate",
    type=click.Choice(["now", "as_acquired"]),
    default="now",
    show_default=True,
    help="now: its pooled VMs retire and are replaced elsewhere; as_acquired: "
    "they are handed out as usual and replaced as they go.",
)


@main.group()
def drain() -> None:
    """Take a hypervisor or a rack out of service (maker-checker)."""


@drain.command("hypervisor")
@click.argument("hypervisor")
@_EVACUATE
@_url_option
def drain_hypervisor(hypervisor: str, evacuate: str) -> None:
    """Place nothing on HYPERVISOR; its pooled VMs go as --evacuate says."""
    with _client() as wc:
        _asked(wc.ask_change("drain_hypervisor", {"hypervisor": hypervisor, "evacuate": evacuate}))


@drain.command("rack")
@click.argument("az")
@click.argument("rack")
@_EVACUATE
@_url_option
def drain_rack(az: str, rack: str, evacuate: str) -> None:
    """Drain every hypervisor of RACK in AZ."""
    with _client() as wc:
        _asked(wc.ask_change("drain_rack", {"az": az, "rack": rack, "evacuate": evacuate}))


@main.group()
def undrain() -> None:
    """Put a drained hypervisor or rack back in service (maker-checker)."""


@undrain.command("hypervisor")
@click.argument("hypervisor")
@_url_option
def undrain_hypervisor(hypervisor: str) -> None:
    with _client() as wc:
        _asked(wc.ask_change("undrain_hypervisor", {"hypervisor": hypervisor}))


@undrain.command("rack")
@click.argument("az")
@click.argument("rack")
@_url_option
def undrain_rack(az: str, rack: str) -> None:
    with _client() as wc:
        _asked(wc.ask_change("undrain_rack", {"az": az, "rack": rack}))


@vms.command("purge")
@click.argument("name")
@_url_option
def vms_purge(name: str) -> None:
    """Ask to destroy NAME (maker-checker); a handed-out VM is taken back."""
    with _client() as wc:
        _asked(wc.ask_change("purge_vm", {"name": name}))


@main.group()
def quotas() -> None:
    """Per-requester limits, in the store, followed by every instance."""


@quotas.command("list")
@_output_option()
@_url_option
def quotas_list(output: str) -> None:
    """Every requester's limits."""
    with _client() as wc:
        found = _dump(wc.quotas())
    if output == "json":
        _print_json(found)
        return
    table = Table(title="quotas")
    for col in ("requester", "az", "flavor", "vms/window", "window s", "max share", "max held"):
        table.add_column(col)
    table.add_column("set by")
    for entry in found:
        for q in entry["limits"]:
            table.add_row(
                entry["requester"],
                q["az"],
                q["flavor"],
                *(
                    str(q[k]) if q[k] is not None else "-"
                    for k in ("vms_per_window", "window_s", "max_share", "max_held")
                ),
                entry["by"],
            )
    console.print(table)


@quotas.command("get")
@click.argument("requester")
@_url_option
def quotas_get(requester: str) -> None:
    """One requester's limits as JSON (exit 4 if it has none)."""
    with _client() as wc:
        _print_json(wc.quota(requester).model_dump(mode="json"))


@quotas.command("set")
@click.argument("requester")
@click.argument("source", default="-")
@_url_option
def quotas_set(requester: str, source: str) -> None:
    """Ask to set REQUESTER's limits from SOURCE (a JSON file, - for stdin:
    {"limits": [{"vms_per_window": 10}, ...]}); maker-checker."""
    body = _read_rule_source(source)
    if not isinstance(body, dict) or not isinstance(body.get("limits"), list):
        _fail('expected a JSON object {"limits": [...]}', 2)
    with _client() as wc:
        _asked(wc.set_quota(requester, body["limits"]))


@quotas.command("delete")
@click.argument("requester")
@_url_option
def quotas_delete(requester: str) -> None:
    """Ask to remove REQUESTER's limits (maker-checker)."""
    with _client() as wc:
        _asked(wc.delete_quota(requester))


# --- maker-checker -------------------------------------------------------------------------


@main.group()
def requests() -> None:
    """Destructive changes: one admin asks, another approves (maker-checker)."""


def _requests_table(found: list[dict[str, Any]]) -> Table:
    table = Table(title="change requests")
    for col in ("id", "action", "params", "state", "asked by", "approved by"):
        table.add_column(col)
    for r in found:
        table.add_row(
            r["id"],
            r["action"],
            " ".join(f"{k}={v}" for k, v in r["params"].items()),
            r["state"],
            r["asked_by"],
            r["approved_by"] or "",
        )
    return table


@requests.command("ask")
@click.argument("action", type=click.Choice(list(ACTIONS)))
@click.argument("params", nargs=-1, required=True)
@_url_option
def requests_ask(action: str, params: tuple[str, ...]) -> None:
    """Ask for ACTION with PARAMS as key=value (az=, flavor=, hypervisor=)."""
    try:
        fields = dict(p.split("=", 1) for p in params)
    except ValueError:
        _fail("parameters are key=value pairs, e.g. az=az1 flavor=small", 2)
    with _client() as wc:
        _print_json(wc.ask_change(action, fields).model_dump(mode="json"))


@requests.command("list")
@_output_option()
@_url_option
def requests_list(output: str) -> None:
    """Every request and its state (pending, expired, executed, failed)."""
    with _client() as wc:
        found = _dump(wc.changes())
    _print_json(found) if output == "json" else console.print(_requests_table(found))


@requests.command("get")
@click.argument("request_id")
@_output_option()
@_url_option
def requests_get(request_id: str, output: str) -> None:
    """One request and its state."""
    with _client() as wc:
        found = wc.change(request_id).model_dump(mode="json")
    _print_json(found) if output == "json" else console.print(_requests_table([found]))


@requests.command("approve")
@click.argument("request_id")
@_url_option
def requests_approve(request_id: str) -> None:
    """Approve (as a different admin than the asker) and run REQUEST_ID."""
    with _client() as wc:
        _print_json(wc.approve(request_id).model_dump(mode="json"))


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
        table.add_row(
            f.name,
            str(f.vcpus),
            str(f.memory_mib),
            str(f.disk_gib),
            f.image_id,
            f.provider_flavor_id,
        )
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
        _catalog(config_path).put(flavor)  # refused: unknown image, disk below its minimum
    except WarmCacheError as exc:
        _fail(json.dumps(exc.detail(), indent=2))
    console.print(f"[green]stored[/green] {flavor.name}")


# --- Kibana dashboards -----------------------------------------------------------------------

DASHBOARDS = dashboards_dir()  # shipped in the package (warmcache/data/dashboards)


@main.group("config")
def config_group() -> None:
    """Service configuration files."""


@config_group.command("check")
@click.argument("config_path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds each backend may take to answer.",
)
def config_check(config_path: str, timeout_s: float) -> None:
    """Validate FILE (with the environment and secret files, as `serve` reads
    them) and try each backend: one line each, reachable and authenticated
    or why not. Exit 0 when all are fine, 1 otherwise. Secrets are never
    printed."""
    from warmcache.checks import check_config
    from warmcache.config import load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            console.print(f"[red]FAIL[/red]  config: {problem}", highlight=False, soft_wrap=True)
        sys.exit(1)
    console.print(f"[green]ok[/green]    config: {config_path}", highlight=False, soft_wrap=True)
    results = check_config(config, timeout_s)
    for r in results:
        mark = "[green]ok[/green]  " if r.ok else "[red]FAIL[/red]"
        console.print(f"{mark}  {r.backend}: {r.detail}", highlight=False, soft_wrap=True)
    sys.exit(0 if all(r.ok for r in results) else 1)


@main.group()
def dashboards() -> None:
    """Kibana saved objects and the Grafana dashboard in dashboards/."""


@dashboards.command("import")
@click.option("--kibana", help="Kibana URL, e.g. https://kibana:5601 (not with --dry-run).")
@click.option("--space", default="", help="Kibana space id (default space if empty).")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    default=str(DASHBOARDS / "kibana.ndjson"),
    show_default=True,
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the file and list what would be imported; Kibana is not contacted.",
)
def dashboards_import(kibana: str | None, space: str, path: str, dry_run: bool) -> None:
    """Import (overwrite) the saved objects into Kibana.

    Credentials: WARMCACHE_KIBANA_API_KEY (an API key), or
    WARMCACHE_KIBANA_USER and WARMCACHE_KIBANA_PASSWORD."""
    import os
    from collections import Counter

    objects = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            saved = json.loads(line)
        except ValueError as exc:
            _fail(f"{path}:{number}: not JSON: {exc}")
        if not isinstance(saved, dict) or not {"type", "id", "attributes"} <= saved.keys():
            if isinstance(saved, dict) and "exportedCount" in saved:
                continue  # the export's summary line
            _fail(f"{path}:{number}: not a saved object (type, id, attributes)")
        objects.append(saved)
    if dry_run:
        kinds = Counter(o["type"] for o in objects)
        listed = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        where = kibana or "Kibana"
        console.print(f"would import {len(objects)} saved object(s) into {where}: {listed}")
        return
    if not kibana:
        raise click.UsageError("--kibana is required (or --dry-run)")

    base = kibana.rstrip("/") + (f"/s/{space}" if space else "")
    headers = {"kbn-xsrf": "true"}
    auth = None
    if os.environ.get("WARMCACHE_KIBANA_API_KEY"):
        headers["Authorization"] = f"ApiKey {os.environ['WARMCACHE_KIBANA_API_KEY']}"
    elif os.environ.get("WARMCACHE_KIBANA_USER"):
        auth = (
            os.environ["WARMCACHE_KIBANA_USER"],
            os.environ.get("WARMCACHE_KIBANA_PASSWORD", ""),
        )
    try:
        with open(path, "rb") as fh:
            reply = httpx.post(
                f"{base}/api/saved_objects/_import",
                params={"overwrite": "true"},
                headers=headers,
                auth=auth,
                files={"file": ("kibana.ndjson", fh, "application/ndjson")},
                timeout=60,
            )
    except httpx.HTTPError as exc:
        _fail(f"{kibana}: {exc}")
    try:
        body = reply.json()
    except ValueError:
        _fail(f"Kibana answered HTTP {reply.status_code} without JSON")
    if reply.status_code >= 400 or not body.get("success"):
        _fail(f"import failed (HTTP {reply.status_code}): {json.dumps(body)[:2000]}")
    console.print(f"[green]imported[/green] {body.get('successCount')} saved object(s)")
