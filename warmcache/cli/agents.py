"""``warmcache agents``: the agents' builds and their rollout."""

from __future__ import annotations

import click
from rich.table import Table

from warmcache.cli.base import _client, _output_option, _print_json, _url_option, console, main


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
