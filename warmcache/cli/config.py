"""``warmcache config check``: a service configuration file and its backends."""

from __future__ import annotations

import sys

import click

from warmcache.cli.base import console, main
from warmcache.errors import (
    ConfigError,
)


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
