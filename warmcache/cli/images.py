"""``warmcache images``: the image catalog (what each flavor's VMs boot from)."""

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
