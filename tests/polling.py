"""Polling with a deadline: how tests wait for real processes and servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_pause = threading.Event()  # never set: .wait(s) pauses between polls


def wait_for(what: str, predicate: Callable[[], T], timeout_s: float,
             interval_s: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        _pause.wait(interval_s)


def pause(seconds: float) -> Any:
    """Let real time pass (a real server's TTL), where no event can be awaited."""
    _pause.wait(seconds)
