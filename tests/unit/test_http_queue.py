"""The server's bounded queue speaks up once in a while, not per request:
waitress logs a warning for every request queued behind busy threads
(thousands a second under load), which this dispatcher silences, and its
own refusals are logged at most every 10 s."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from warmcache.web.waitress_glue import _BoundedDispatcher


class _Channel:
    def __init__(self) -> None:
        self.requests = [SimpleNamespace(error=None)]
        self.served = 0

    def service(self) -> None:
        self.served += 1


def test_queued_requests_log_nothing_and_refusals_log_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dispatcher = _BoundedDispatcher(max_queue=2)  # no worker threads: every task queues
    channels: list[Any] = [_Channel() for _ in range(6)]
    with caplog.at_level(logging.INFO):
        for channel in channels:
            dispatcher.add_task(channel)
    assert len(dispatcher.queue) == 2 and dispatcher.refused == 4
    assert all(c.requests[0].error is not None for c in channels[2:])
    assert [r.name for r in caplog.records if r.name.startswith("waitress")] == []
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1  # 4 refusals within 10 s: one line
