"""``warmcache flavors``, ``warmcache config check`` and ``warmcache dashboards``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import httpx
from rich.table import Table

from warmcache.cli.base import _fail, console, main
from warmcache.errors import (
    ConfigError,
    WarmCacheError,
)
from warmcache.resources import dashboards_dir

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


# --- Kibana dashboards -----------------------------------------------------------------------

DASHBOARDS = dashboards_dir()  # shipped in the package (warmcache/data/dashboards)


@main.group("config")
def config_group() -> None:
    """Service configuration files."""


@config_group.command("check")
@click.argument("config_path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds each backend may take to answer.",
)
def config_check(config_path: str, timeout_s: float) -> None:
    """Validate FILE (with the environment and secret files, as `serve` reads
    them) and try each backend: one line each, reachable and authenticated
    or why not. Exit 0 when all are fine, 1 otherwise. Secrets are never
    printed."""
    from warmcache.checks import check_config
    from warmcache.config import load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            console.print(f"[red]FAIL[/red]  config: {problem}", highlight=False, soft_wrap=True)
        sys.exit(1)
    console.print(f"[green]ok[/green]    config: {config_path}", highlight=False, soft_wrap=True)
    results = check_config(config, timeout_s)
    for r in results:
        mark = "[green]ok[/green]  " if r.ok else "[red]FAIL[/red]"
        console.print(f"{mark}  {r.backend}: {r.detail}", highlight=False, soft_wrap=True)
    sys.exit(0 if all(r.ok for r in results) else 1)


@main.group()
def dashboards() -> None:
    """Kibana saved objects and the Grafana dashboard in dashboards/."""


@dashboards.command("import")
@click.option("--kibana", help="Kibana URL, e.g. https://kibana:5601 (not with --dry-run).")
@click.option("--space", default="", help="Kibana space id (default space if empty).")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    default=str(DASHBOARDS / "kibana.ndjson"),
    show_default=True,
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the file and list what would be imported; Kibana is not contacted.",
)
def dashboards_import(kibana: str | None, space: str, path: str, dry_run: bool) -> None:
    """Import (overwrite) the saved objects into Kibana.

    Credentials: WARMCACHE_KIBANA_API_KEY (an API key), or
    WARMCACHE_KIBANA_USER and WARMCACHE_KIBANA_PASSWORD."""
    import os
    from collections import Counter

    objects = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            saved = json.loads(line)
        except ValueError as exc:
            _fail(f"{path}:{number}: not JSON: {exc}")
        if not isinstance(saved, dict) or not {"type", "id", "attributes"} <= saved.keys():
            if isinstance(saved, dict) and "exportedCount" in saved:
                continue  # the export's summary line
            _fail(f"{path}:{number}: not a saved object (type, id, attributes)")
        objects.append(saved)
    if dry_run:
        kinds = Counter(o["type"] for o in objects)
        listed = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        where = kibana or "Kibana"
        console.print(f"would import {len(objects)} saved object(s) into {where}: {listed}")
        return
    if not kibana:
        raise click.UsageError("--kibana is required (or --dry-run)")

    base = kibana.rstrip("/") + (f"/s/{space}" if space else "")
    headers = {"kbn-xsrf": "true"}
    auth = None
    if os.environ.get("WARMCACHE_KIBANA_API_KEY"):
        headers["Authorization"] = f"ApiKey {os.environ['WARMCACHE_KIBANA_API_KEY']}"
    elif os.environ.get("WARMCACHE_KIBANA_USER"):
        auth = (
            os.environ["WARMCACHE_KIBANA_USER"],
            os.environ.get("WARMCACHE_KIBANA_PASSWORD", ""),
        )
    try:
        with open(path, "rb") as fh:
            reply = httpx.post(
                f"{base}/api/saved_objects/_import",
                params={"overwrite": "true"},
                headers=headers,
                auth=auth,
                files={"file": ("kibana.ndjson", fh, "application/ndjson")},
                timeout=60,
            )
    except httpx.HTTPError as exc:
        _fail(f"{kibana}: {exc}")
    try:
        body = reply.json()
    except ValueError:
        _fail(f"Kibana answered HTTP {reply.status_code} without JSON")
    if reply.status_code >= 400 or not body.get("success"):
        _fail(f"import failed (HTTP {reply.status_code}): {json.dumps(body)[:2000]}")
    console.print(f"[green]imported[/green] {body.get('successCount')} saved object(s)")
