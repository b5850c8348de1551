"""Pools and hand-outs: ``pools``, ``acquire``, ``claims``, ``leader``, ``vms``."""

from __future__ import annotations

import time

import click
from rich.table import Table

from warmcache.cli.base import (
    _client,
    _dump,
    _output_option,
    _pools_table,
    _print_json,
    _url_option,
    _vms_table,
    console,
    main,
)

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
