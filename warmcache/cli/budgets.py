"""``warmcache budgets`` and ``warmcache explain``: demand sizing's budgets and its explanations."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from warmcache.cli.base import (
    _client,
    _dump,
    _fail,
    _output_option,
    _print_json,
    _url_option,
    console,
    main,
)


@main.group()
def budgets() -> None:
    """AZ budgets (VMs, vCPUs or cost units) shared by the AZ's demand-sized pools."""


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
