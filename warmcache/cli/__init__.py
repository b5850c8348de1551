"""The ``warmcache`` command line (click), one module per command group;
``main`` (``warmcache.cli.base``) is the console script's entry point.
Importing a group's module registers its commands on ``main``."""

from warmcache.cli import (  # noqa: F401  (each registers its commands)
    agents,
    budgets,
    config,
    dashboards,
    flavors,
    hosts,
    images,
    networks,
    pools,
    quickstart,
    quotas,
    rules,
    serve,
)
from warmcache.cli.base import main

__all__ = ["main"]
