"""A ``ChangeStream`` over a store's own ``changes()`` query, for stores
whose change feed is a query rather than a stream: SQLite (a local file:
each poll is one indexed read) and Consul (each poll is a blocking query
that returns as soon as the prefix changes, with the last index)."""

from __future__ import annotations

import threading
import time

from warmcache.ports import Change, CoordinationStore

SLICE_S = 0.25


class PollingChangeStream:
    def __init__(self, store: CoordinationStore, prefix: str, after_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self.position = after_revision
        self._closed = threading.Event()

    def get(self, timeout_s: float) -> list[Change]:
        # Waits in slices, so that close() ends a wait within one slice.
        deadline = time.monotonic() + timeout_s
        while not self._closed.is_set():
            left = deadline - time.monotonic()
            changes = self._store.changes(self._prefix, self.position, max(0.0, min(left, SLICE_S)))
            if changes:
                self.position = max(self.position, changes[-1].revision)
                return changes
            if left <= SLICE_S:
                break
        return []

    def close(self) -> None:
        self._closed.set()
