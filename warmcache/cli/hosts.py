"""The fleet: ``hosts``, ``capacity``, ``drain``, ``undrain``, ``vms purge``."""

from __future__ import annotations

import click
from rich.table import Table

from warmcache.cli.base import (
    _client,
    _dump,
    _output_option,
    _print_json,
    _url_option,
    console,
    main,
)
from warmcache.cli.budgets import _amounts, _asked
from warmcache.cli.pools import vms


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
