"""``warmcache dashboards``: Kibana saved objects and the Grafana dashboard."""

from __future__ import annotations

import json
from pathlib import Path

import click
import httpx

from warmcache.cli.base import _fail, console, main
from warmcache.resources import dashboards_dir

# --- Kibana dashboards -----------------------------------------------------------------------

DASHBOARDS = dashboards_dir()  # shipped in the package (warmcache/data/dashboards)


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
