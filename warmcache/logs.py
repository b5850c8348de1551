"""Logs of every warmcache process (``serve``, ``quickstart``, the agent, the
proxy): level and logger names on every line, ``--log-level`` and
``--log-format text|json`` (JSON by python-json-logger, one object a line,
for Elasticsearch or Loki), and the work a line belongs to.

``log_context(cycle=token)`` or ``log_context(claim=claim_id)`` tags every
line logged inside the block, from this thread and from the threads it hands
work to with ``in_context`` (a build cycle's per-AZ and per-VM workers):

    2026-12-03 10:01:02,345 WARNING warmcache.purge cycle=4711: ...
    {"time": "...", "level": "WARNING", "logger": "...", "message": "...", "cycle": 4711}
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, ParamSpec, TypeVar

import click
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"

_context: contextvars.ContextVar[tuple[tuple[str, object], ...]] = contextvars.ContextVar(
    "warmcache_log_context", default=()
)
P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Tag every log line of the block (and of work handed on with
    ``in_context``) with ``fields``."""
    current = dict(_context.get())
    current.update(fields)
    token = _context.set(tuple(current.items()))
    try:
        yield
    finally:
        _context.reset(token)


def in_context(fn: Callable[P, T]) -> Callable[P, T]:
    """``fn`` bound to the caller's log context, for another thread (one
    copy per call: a context cannot be entered by two threads at once)."""
    captured = _context.get()

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        token = _context.set(captured)
        try:
            return fn(*args, **kwargs)
        finally:
            _context.reset(token)

    return run


def current_context() -> dict[str, object]:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Puts the log context on the record: as attributes (JSON fields) and
    as ``%(context)s`` (`` cycle=4711``) for the text format."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _context.get()
        for name, value in fields:
            setattr(record, name, value)
        record.context = "".join(f" {name}={value}" for name, value in fields)
        return True


def setup_logging(level: str = "INFO", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Configure the root logger once for a process (replacing its handlers)."""
    if level.upper() not in LEVELS:
        raise ValueError(f"log level {level!r}: one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, "context"],
            timestamp="time",  # ISO 8601, UTC
        )
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # APScheduler says every run at INFO: only its problems, unless debugging.
    quiet = logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    logging.getLogger("apscheduler").setLevel(quiet)


def log_options(fn: F) -> F:
    """``--log-level`` and ``--log-format`` for a command that runs a
    process (also from ``WARMCACHE_LOG_LEVEL`` and ``WARMCACHE_LOG_FORMAT``);
    the command gets them as ``log_level`` and ``log_format`` and calls
    ``setup_logging`` when it starts its work."""
    fn = click.option(
        "--log-format",
        type=click.Choice(FORMATS),
        default="text",
        show_default=True,
        envvar="WARMCACHE_LOG_FORMAT",
        help="Log lines as text or as JSON objects (env WARMCACHE_LOG_FORMAT).",
    )(fn)
    return click.option(
        "--log-level",
        type=click.Choice(LEVELS, case_sensitive=False),
        default="INFO",
        show_default=True,
        envvar="WARMCACHE_LOG_LEVEL",
        help="Least severe level logged (env WARMCACHE_LOG_LEVEL).",
    )(fn)
