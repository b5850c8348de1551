"""``warmcache serve``: one service instance."""

from __future__ import annotations

import click

from warmcache.cli.base import _fail, main
from warmcache.errors import (
    WarmCacheError,
)
from warmcache.logs import log_options, setup_logging


@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Service TOML (see config/service.example.toml).",
)
@click.option(
    "--server",
    type=click.Choice(["waitress", "gunicorn", "granian", "werkzeug"]),
    default="waitress",
    show_default=True,
    help="HTTP server (the others are for bench/acquire.py's comparison; "
    "werkzeug is the development server).",
)
@log_options
def serve(config_path: str, server: str, log_level: str, log_format: str) -> None:
    """Run one service instance: HTTP API, leader election, build cycles."""
    from warmcache.web.server import serve as run_server

    setup_logging(log_level, log_format)
    try:
        run_server(config_path, server)
    except WarmCacheError as exc:
        _fail(str(exc), 2)
