"""``warmcache-proxy``: the mTLS HTTPS door to a host agent (DESIGN.md §10).

Not built yet: it is the subject of issue 4. Until then the command refuses
to start, loudly, rather than pretending to guard an agent.
"""

from __future__ import annotations

import sys

import click


@click.command()
def main() -> None:
    """The mTLS proxy in front of warmcache-agent (not available yet)."""
    click.echo(
        "warmcache-proxy is not implemented yet (issue 4); reach agents over their "
        "Unix socket with `[[agents]] endpoint = \"unix:PATH\"`.",
        err=True,
    )
    sys.exit(2)
