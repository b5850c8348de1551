"""The ``warmcache`` command line (click): its shared parts (the ``main``
group, the exit codes, the helpers every command group uses).

Operator commands call the HTTP API through ``warmcache.Client``: the global
``--url`` and ``--token`` (``WARMCACHE_URL``, ``WARMCACHE_TOKEN``) say where
and as whom; read commands print a table or, with ``-o json``, JSON. Errors
go to stderr as ``error: <code>: <message>``, and the exit code says which
family failed (``EXIT_CODES``, a contract scripts rely on):

    0 ok                    4 not found (unknown_*)
    1 any other error       5 unavailable: store, contention, overloaded,
    2 usage (bad arguments,   unreachable server, claim_outcome_unknown
      invalid_request)      6 authentication or authorization
    3 no capacity, or over a
      quota (quota_exceeded)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table

from warmcache.client import Client
from warmcache.errors import (
    ApprovalRefused,
    ClaimContention,
    Forbidden,
    InvalidRequest,
    LeadershipLost,
    NoCapacity,
    NotFound,
    Overloaded,
    QuotaExceeded,
    ResumeFailed,
    ServerUnreachable,
    StoreError,
    Unauthorized,
    WarmCacheError,
)

console = Console()
errors = Console(stderr=True)
DEFAULT_URL = "http://127.0.0.1:8080"

# Error family -> exit code, most specific first (the module docstring).
EXIT_CODES: list[tuple[tuple[type[WarmCacheError], ...], int]] = [
    ((NoCapacity, QuotaExceeded), 3),
    ((NotFound,), 4),
    ((StoreError, ClaimContention, ResumeFailed, Overloaded, ServerUnreachable, LeadershipLost), 5),
    ((Unauthorized, Forbidden, ApprovalRefused), 6),
    ((InvalidRequest,), 2),
]


def exit_code(exc: WarmCacheError) -> int:
    return next((code for classes, code in EXIT_CODES if isinstance(exc, classes)), 1)


def _fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _fail_with(exc: WarmCacheError) -> NoReturn:
    detail = exc.detail()
    extra = ""
    if isinstance(exc, InvalidRequest) and exc.errors:
        extra = "\n" + json.dumps(detail, indent=2)
    _fail(f"{exc.code}: {exc}{extra}", exit_code(exc))


class _Commands(click.Group):
    """Every subcommand's ``WarmCacheError`` -> stderr and its family's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WarmCacheError as exc:
            _fail_with(exc)


@dataclass
class _Target:
    url: str
    token: str | None
    timeout_s: float

    def client(self) -> Client:
        return Client(self.url, token=self.token, timeout_s=self.timeout_s)


@click.group(cls=_Commands)
@click.version_option(package_name="warmcache")
@click.option(
    "--url",
    default=DEFAULT_URL,
    show_default=True,
    envvar="WARMCACHE_URL",
    help="The API of any instance (env WARMCACHE_URL).",
)
@click.option(
    "--token",
    default=None,
    envvar="WARMCACHE_TOKEN",
    help="Bearer token (env WARMCACHE_TOKEN; prefer the variable: a flag shows "
    "in the process list).",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="Seconds per HTTP request.",
)
@click.pass_context
def main(ctx: click.Context, url: str, token: str | None, timeout_s: float) -> None:
    """warmcache: pools of ready VMs, acquired rack-aware in milliseconds.

    Shell completion: eval "$(_WARMCACHE_COMPLETE=bash_source warmcache)"
    (zsh_source, fish_source for the other shells)."""
    ctx.obj = _Target(url, token, timeout_s)


F = TypeVar("F", bound=Callable[..., Any])


def _url_option(fn: F) -> F:
    """The old per-command ``--url`` (hidden; the global one is the documented way)."""

    def keep(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value:
            ctx.ensure_object(_Target).url = value

    return click.option("--url", hidden=True, expose_value=False, callback=keep, is_eager=True)(fn)


def _output_option(default: str = "table") -> Callable[[F], F]:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json"]),
        default=default,
        show_default=True,
        help="Output format.",
    )


def _client() -> Client:
    target: _Target = click.get_current_context().find_object(_Target)  # type: ignore[assignment]
    return target.client()


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _dump(models: Any) -> Any:
    if isinstance(models, list):
        return [m.model_dump(mode="json") for m in models]
    return None if models is None else models.model_dump(mode="json")


def _pools_table(pools: list[dict[str, Any]]) -> Table:
    table = Table(title="pools")
    # The tiers column only when some pool keeps VMs not running.
    tiered = any(
        t != "running" and (n or p.get("tier_targets", {}).get(t))
        for p in pools
        for t, n in {**p.get("tier_targets", {}), **p.get("standby", {})}.items()
    )
    columns = ["az", "flavor", "target", "ready", "reserved", "building", "stale"]
    columns += ["tiers held/target"] if tiered else []
    for col in [*columns, "ready by rack"]:
        table.add_column(col)
    for p in pools:
        held, wanted = p.get("standby", {}), p.get("tier_targets", {})
        tiers = ", ".join(
            f"{t} {held.get(t, 0)}/{wanted.get(t, 0)}"
            for t in ("running", "paused", "saved")
            if held.get(t) or wanted.get(t)
        )
        table.add_row(
            p["az"],
            p["flavor"],
            str(p["target"]),
            str(p["ready"]),
            str(p["reserved"]),
            str(p["building"]),
            str(p.get("stale", 0)),
            *([tiers] if tiered else []),
            ", ".join(f"{r}:{n}" for r, n in p["ready_by_rack"].items()),
        )
    return table


def _vms_table(vms: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("name", "rack", "hypervisor", "server id", "addresses"):
        table.add_column(col)
    for vm in vms:
        table.add_row(
            vm["name"], vm["rack"], vm["hypervisor"], vm["server_id"], ", ".join(vm["addresses"])
        )
    return table
