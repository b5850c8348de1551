"""``warmcache quotas`` and ``warmcache requests`` (maker-checker)."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from warmcache.change_params import PARAMS
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
from warmcache.cli.budgets import _asked
from warmcache.cli.rules import _read_rule_source


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
@click.argument("action", type=click.Choice(list(PARAMS)))
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
