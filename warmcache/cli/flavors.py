"""``warmcache flavors``: the flavor catalog."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from warmcache.cli.base import _fail, console, main
from warmcache.errors import (
    WarmCacheError,
)

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
