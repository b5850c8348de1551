"""Batcher: hand items to a slow writer without ever making the caller wait.

Event sinks (SQLite, Elasticsearch) write through one of these. ``put`` only
appends to a bounded in-memory queue; one background thread takes what has
queued (up to ``batch`` items, or whatever arrived within ``flush_s``) and
calls ``write`` with it. A writer that raises gets the same batch again
after ``retry_s``, so a store that is briefly locked or down loses nothing;
past ``max_queue`` waiting items new ones are dropped and counted, and so is
what is still unwritten when ``close`` gives up.

The price: a process killed outright (SIGKILL, power loss) loses what it
had queued, normally the last ``flush_s`` of items.

Why it matters: a sink shared by several processes (the embedded SQLite
events file) can be locked by a process that was paused mid-write. An
instance that emitted synchronously would wait on that lock with its
control path (a standby taking over a dead leader's pool, an acquisition).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(
        self,
        write: Callable[[list[T]], None],
        *,
        name: str,
        max_queue: int = 10_000,
        batch: int = 500,
        flush_s: float = 0.2,
        retry_s: float = 1.0,
    ) -> None:
        self._write = write
        self._queue: queue.Queue[T] = queue.Queue(maxsize=max_queue)
        self._batch = batch
        self._flush_s = flush_s
        self._retry_s = retry_s
        self._pending = 0  # queued or being written
        self._idle = threading.Condition()
        self._stop = threading.Event()
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        """Never blocks: queue the item, or drop and count it when full."""
        with self._idle:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self.dropped += 1
                return
            self._pending += 1

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything put so far is written; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (one attempt per batch after the first
        failure), then stop; whatever is left after ``timeout_s`` is counted
        in ``dropped``."""
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            with self._idle:
                left = self._pending
            log.warning("%s: %d item(s) not written at close", self._thread.name, left)
            self.dropped += left

    def _take(self) -> list[T]:
        items: list[T] = []
        deadline = time.monotonic() + self._flush_s
        while len(items) < self._batch:
            left = deadline - time.monotonic()
            try:
                # Short waits, so that close() is not kept waiting for a batch.
                items.append(self._queue.get(timeout=min(max(left, 0.001), 0.05)))
            except queue.Empty:
                if left <= 0 or self._stop.is_set():
                    break
        return items

    def _run(self) -> None:
        while not self._stop.is_set() or not self._queue.empty():
            items = self._take()
            while True:
                try:
                    self._write(items)
                    break
                except Exception as exc:
                    if self._stop.is_set():
                        log.warning(
                            "%s: %d item(s) dropped at close: %s",
                            self._thread.name,
                            len(items),
                            exc,
                        )
                        with self._idle:
                            self.dropped += len(items)
                        break
                    log.warning(
                        "%s: write failed (%s); retrying %d item(s)",
                        self._thread.name,
                        exc,
                        len(items),
                    )
                    self._stop.wait(self._retry_s)
            with self._idle:
                self._pending -= len(items)
                if self._pending == 0:
                    self._idle.notify_all()
