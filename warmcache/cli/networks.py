"""``warmcache networks``: address pools."""

from __future__ import annotations

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
from warmcache.cli.rules import _read_rule_source


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
