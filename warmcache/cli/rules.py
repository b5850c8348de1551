"""``warmcache rules``: build rules."""

from __future__ import annotations

import json
import sys
from pathlib import Path
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
