"""SqliteEvents: the embedded event sink (what Elasticsearch holds in production).

Emitting never raises: an event store problem is logged and the event
dropped, because losing an audit line must never fail an acquisition.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path

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
"""


class SqliteEvents:
    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)

    def emit(self, event: Event) -> None:
        try:
            with self._lock:
                self._conn.execute(
                    "INSERT INTO events (at, type, fields) VALUES (?, ?, ?)",
                    (event.at, event.type, json.dumps(dict(event.fields), default=str)),
                )
        except sqlite3.Error as exc:
            log.warning("event %s dropped: %s", event.type, exc)

    def recent(self, limit: int = 100, type_prefix: str = "") -> list[Event]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT at, type, fields FROM events WHERE type >= ? AND type < ? "
                "ORDER BY id DESC LIMIT ?",
                (type_prefix, type_prefix + "\U0010ffff", limit),
            ).fetchall()
        return [Event(r[1], float(r[0]), json.loads(r[2])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class LogEvents:
    """Events to the Python log only (``events.kind = "log"``)."""

    def __init__(self) -> None:
        self._log = logging.getLogger("warmcache.events")

    def emit(self, event: Event) -> None:
        self._log.info("%s %s", event.type, json.dumps(dict(event.fields), default=str))

    def recent(self, limit: int = 100, type_prefix: str = "") -> list[Event]:
        return []
