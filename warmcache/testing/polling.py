"""Polling with a deadline: how tests wait for real processes and servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_between_polls = threading.Event()  # never set: its wait() spaces the polls


def wait_for(
    what: str, predicate: Callable[[], T | None], timeout_s: float, interval_s: float = 0.05
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        _between_polls.wait(interval_s)
