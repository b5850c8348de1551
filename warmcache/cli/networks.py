"""``warmcache networks`` and ``warmcache images``: address pools and the image catalog."""

from __future__ import annotations

import json
from pathlib import Path

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
