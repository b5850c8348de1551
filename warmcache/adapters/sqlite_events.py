"""SqliteEvents: the embedded event sink (what Elasticsearch holds in production).

Emitting never raises and never waits: events are queued and written in
batches by a background thread (``warmcache.adapters.batching``), because
the file is shared by every instance on the host and one of them may hold
its lock (paused mid-write, or just busy); an audit line must never fail or
slow an acquisition, a build or a takeover. A locked file delays events, it
does not lose them; ``recent`` first waits briefly for this instance's own.
"""

from __future__ import annotations

import collections
import json
import logging
import sqlite3
import threading
from pathlib import Path

from warmcache.adapters.batching import Batcher
from warmcache.ports import Event

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    type TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_type_at ON events (type, at);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
"""
PRUNE_EVERY = 500  # rows written between two prunes


class SqliteEvents:
    def __init__(
        self,
        path: str | Path,
        busy_timeout_s: float = 5.0,
        max_queue: int = 10_000,
        *,
        retention_s: float = 7 * 86_400.0,
        max_rows: int = 1_000_000,
    ) -> None:
        """``retention_s``, ``max_rows``: events older than the newest
        written less ``retention_s``, and the oldest beyond the cap, are
        deleted as new ones are written (every ``PRUNE_EVERY`` rows, by
        index: the log never grows for ever)."""
        self.path = str(path)
        self._retention_s = retention_s
        self._max_rows = max_rows
        self._since_prune = PRUNE_EVERY  # prune at the first write
        # Two connections: the batcher's thread writes (and may wait for the
        # file's lock); readers never queue behind it (WAL).
        self._writer = self._connect(busy_timeout_s)
        self._writer.execute("PRAGMA journal_mode=WAL")
        self._writer.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._conn = self._connect(busy_timeout_s)
        self._batcher: Batcher[Event] = Batcher(
            self._write, name="sqlite-events", max_queue=max_queue, retry_s=0.1
        )

    def _connect(self, busy_timeout_s: float) -> sqlite3.Connection:
        return sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )

    @property
    def dropped(self) -> int:
        return self._batcher.dropped

    def emit(self, event: Event) -> None:
        self._batcher.put(event)

    def flush(self, timeout_s: float = 10.0) -> bool:
        return self._batcher.flush(timeout_s)

    def _write(self, events: list[Event]) -> None:
        if not events:
            return
        rows = [(e.at, e.type, json.dumps(dict(e.fields), default=str)) for e in events]
        self._writer.execute("BEGIN IMMEDIATE")
        try:
            self._writer.executemany("INSERT INTO events (at, type, fields) VALUES (?, ?, ?)", rows)
            self._since_prune += len(rows)
            if self._since_prune >= PRUNE_EVERY:
                self._prune(max(e.at for e in events))
                self._since_prune = 0
            self._writer.execute("COMMIT")
        except BaseException:
            self._writer.execute("ROLLBACK")
            raise

    def _prune(self, newest: float) -> None:
        self._writer.execute("DELETE FROM events WHERE at < ?", (newest - self._retention_s,))
        self._writer.execute(
            "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (self._max_rows,)
        )

    def recent(self, limit: int = 100, type_prefix: str = "") -> list[Event]:
        self._batcher.flush(0.5)
        with self._lock:
            rows = self._conn.execute(
                "SELECT at, type, fields FROM events WHERE type >= ? AND type < ? "
                "ORDER BY id DESC LIMIT ?",
                (type_prefix, type_prefix + "\U0010ffff", limit),
            ).fetchall()
        return [Event(r[1], float(r[0]), json.loads(r[2])) for r in rows]

    def close(self) -> None:
        self._batcher.close()
        self._writer.close()
        with self._lock:
            self._conn.close()


class LogEvents:
    """Events to the Python log (``events.kind = "log"``), and the last
    ``keep`` of them in memory, so the dashboard of this instance still
    shows recent builds and acquisitions (its own only: nothing is shared)."""

    def __init__(self, keep: int = 2000) -> None:
        self._log = logging.getLogger("warmcache.events")
        self._recent: collections.deque[Event] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        if self._log.isEnabledFor(logging.INFO):
            self._log.info("%s %s", event.type, json.dumps(dict(event.fields), default=str))
        with self._lock:
            self._recent.append(event)

    def recent(self, limit: int = 100, type_prefix: str = "") -> list[Event]:
        """Newest first, like every event sink."""
        with self._lock:
            found = [e for e in reversed(self._recent) if e.type.startswith(type_prefix)]
        return found[:limit]

    @property
    def dropped(self) -> int:
        return 0

    def close(self) -> None:
        pass
