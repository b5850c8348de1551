"""SqliteStore: the embedded coordination store (one file, many processes).

It gives the semantics the real stores have (etcd's, which Consul can
express): one global revision counter bumped once per write transaction;
all-or-nothing compare-and-swap transactions; sessions with a TTL that own
keys and delete them when they expire (etcd lease semantics, Consul
``behavior=delete``); a change feed; services registered with a TTL.

Several processes on one host may share the file: WAL journal, a busy
timeout, and every write in ``BEGIN IMMEDIATE`` so a transaction takes the
write lock before it reads what it compares (no lost updates, no upgrade
deadlocks). Expired sessions are reaped lazily, inside the next write or read
that would otherwise see their keys, using the injected clock: a test moves a
``ManualClock`` past the TTL instead of sleeping.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from warmcache.adapters.polling_stream import PollingChangeStream
from warmcache.adapters.txn_batches import check_disjoint
from warmcache.clock import SystemClock
from warmcache.errors import SessionExpired, StoreError, WatchCompacted
from warmcache.ports import (
    Change,
    ChangeStream,
    Clock,
    Compare,
    KeyValue,
    Op,
    Put,
    ServiceEntry,
    Txn,
    TxnResult,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL,
    compacted INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO meta (id, revision, compacted) VALUES (1, 0, 0);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL,
    session TEXT
);
CREATE INDEX IF NOT EXISTS kv_session ON kv (session) WHERE session IS NOT NULL;
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    ttl_s REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions (expires_at);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    revision INTEGER NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT
);
CREATE INDEX IF NOT EXISTS changes_revision ON changes (revision);
CREATE TABLE IF NOT EXISTS services (
    name TEXT NOT NULL,
    node TEXT NOT NULL,
    address TEXT NOT NULL,
    registered_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (name, node)
);
"""


def _prefix_bounds(prefix: str) -> tuple[str, str]:
    # Keys are compared as text: every key starting with `prefix` sorts in
    # [prefix, prefix + U+10FFFF). Cheaper than LIKE, and no escaping of % or _.
    return prefix, prefix + "\U0010ffff"


class SqliteStore:
    """Coordination store in one SQLite file (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock | None = None,
        busy_timeout_s: float = 30.0,
        keep_changes: int = 100_000,
        poll_interval_s: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = str(path)
        self._clock = clock or SystemClock()
        self._busy_timeout_s = busy_timeout_s
        self._keep_changes = keep_changes
        self._poll_interval_s = poll_interval_s
        self._sleep = sleep
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        # Processes opening a new file at once race to switch it to WAL and
        # create the schema; SQLite answers the loser "database is locked"
        # at once, without its busy handler: try again within the timeout.
        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                self._conn().executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                self._drop_local()
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StoreError(f"sqlite store {self.path}: {exc}") from exc
                self._sleep(0.02)
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite store {self.path}: {exc}") from exc

    def _drop_local(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            with self._all_lock:
                self._all.remove(conn)
            conn.close()
            self._local.conn = None

    # --- connections -------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreError("store is closed")
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout_s, isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}") from exc
        try:
            self._reap(conn)
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _read_conn(self) -> sqlite3.Connection:
        conn = self._conn()
        expired = conn.execute(
            "SELECT 1 FROM sessions WHERE expires_at <= ? LIMIT 1", (self._clock.now(),)
        ).fetchone()
        if expired:
            with self._write():
                pass  # _write reaps
        return conn

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    # --- revision bookkeeping ------------------------------------------------------

    def _revision(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT revision FROM meta WHERE id = 1").fetchone()[0])

    def _bump(self, conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE meta SET revision = revision + 1 WHERE id = 1")
        revision = self._revision(conn)
        if revision % 1000 == 0:
            self._compact(conn, revision)
        return revision

    def _compact(self, conn: sqlite3.Connection, revision: int) -> None:
        floor = revision - self._keep_changes
        if floor > 0:
            conn.execute("DELETE FROM changes WHERE revision <= ?", (floor,))
            conn.execute("UPDATE meta SET compacted = MAX(compacted, ?) WHERE id = 1", (floor,))

    def _apply_put(
        self, conn: sqlite3.Connection, revision: int, key: str, value: str, session: str | None
    ) -> None:
        if session is not None and not self._session_alive(conn, session):
            raise SessionExpired(session)
        conn.execute(
            "INSERT INTO kv (key, value, create_rev, mod_rev, session) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev, "
            "session = excluded.session",
            (key, value, revision, revision, session),
        )
        conn.execute(
            "INSERT INTO changes (revision, key, kind, value) VALUES (?, ?, 'put', ?)",
            (revision, key, value),
        )

    def _apply_delete(self, conn: sqlite3.Connection, revision: int, key: str) -> bool:
        deleted = conn.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount > 0
        if deleted:
            conn.execute(
                "INSERT INTO changes (revision, key, kind, value) VALUES (?, ?, 'delete', NULL)",
                (revision, key),
            )
        return deleted

    # --- sessions ---------------------------------------------------------------------

    def _session_alive(self, conn: sqlite3.Connection, session: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM sessions WHERE id = ? AND expires_at > ?", (session, self._clock.now())
        ).fetchone()
        return row is not None

    def _reap(self, conn: sqlite3.Connection) -> None:
        now = self._clock.now()
        expired = [
            r[0]
            for r in conn.execute("SELECT id FROM sessions WHERE expires_at <= ?", (now,))
        ]
        for session in expired:
            self._end_session(conn, session)
        conn.execute("DELETE FROM services WHERE expires_at <= ?", (now,))

    def _end_session(self, conn: sqlite3.Connection, session: str) -> None:
        keys = [r[0] for r in conn.execute("SELECT key FROM kv WHERE session = ?", (session,))]
        if keys:
            revision = self._bump(conn)
            for key in keys:
                self._apply_delete(conn, revision, key)
        conn.execute("DELETE FROM sessions WHERE id = ?", (session,))

    def create_session(self, ttl_s: float, node: str) -> str:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        session = uuid.uuid4().hex
        with self._write() as conn:
            conn.execute(
                "INSERT INTO sessions (id, node, ttl_s, expires_at) VALUES (?, ?, ?, ?)",
                (session, node, ttl_s, self._clock.now() + ttl_s),
            )
        return session

    def renew_session(self, session_id: str) -> None:
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE sessions SET expires_at = ? + ttl_s WHERE id = ?",
                (self._clock.now(), session_id),
            ).rowcount
        if not updated:
            raise SessionExpired(session_id)

    def destroy_session(self, session_id: str) -> None:
        with self._write() as conn:
            self._end_session(conn, session_id)

    # --- KV ------------------------------------------------------------------------------

    @staticmethod
    def _row(row: tuple[str, str, int, int, str | None]) -> KeyValue:
        return KeyValue(row[0], row[1], int(row[2]), int(row[3]), row[4])

    def _get(self, conn: sqlite3.Connection, key: str) -> KeyValue | None:
        row = conn.execute(
            "SELECT key, value, create_rev, mod_rev, session FROM kv WHERE key = ?", (key,)
        ).fetchone()
        return self._row(row) if row else None

    def get(self, key: str) -> KeyValue | None:
        return self._get(self._read_conn(), key)

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        conn = self._read_conn()
        low, high = _prefix_bounds(prefix)
        # One deferred read transaction: the rows and the revision agree.
        conn.execute("BEGIN")
        try:
            rows = conn.execute(
                "SELECT key, value, create_rev, mod_rev, session FROM kv "
                "WHERE key >= ? AND key < ? ORDER BY key",
                (low, high),
            ).fetchall()
            revision = self._revision(conn)
        finally:
            conn.execute("COMMIT")
        return [self._row(r) for r in rows], revision

    def put(self, key: str, value: str, session: str | None = None) -> int:
        with self._write() as conn:
            revision = self._bump(conn)
            self._apply_put(conn, revision, key, value, session)
        return revision

    def delete(self, key: str) -> bool:
        with self._write() as conn:
            if self._get(conn, key) is None:
                return False
            revision = self._bump(conn)
            return self._apply_delete(conn, revision, key)

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        with self._write() as conn:
            current = {c.key: self._get(conn, c.key) for c in compares}
            ok = all(c.holds(current[c.key]) for c in compares)
            ops = success if ok else failure
            revision = self._revision(conn)
            if ops:
                revision = self._bump(conn)
                for op in ops:
                    if isinstance(op, Put):
                        self._apply_put(conn, revision, op.key, op.value, op.session)
                    else:
                        self._apply_delete(conn, revision, op.key)
        return TxnResult(ok, revision, {} if ok else current)

    txn_limit = None  # one local write transaction holds any number of keys

    def txns(self, batch: Sequence[Txn]) -> list[TxnResult]:
        """One write transaction: every compare is read first, then the
        transactions whose compares hold are applied at one revision."""
        check_disjoint(batch)
        with self._write() as conn:
            currents = [{c.key: self._get(conn, c.key) for c in txn.compares} for txn in batch]
            oks = [all(c.holds(cur[c.key]) for c in txn.compares)
                   for txn, cur in zip(batch, currents, strict=True)]
            revision = self._revision(conn)
            if any(ok and txn.success for ok, txn in zip(oks, batch, strict=True)):
                revision = self._bump(conn)
                for ok, txn in zip(oks, batch, strict=True):
                    for op in txn.success if ok else ():
                        if isinstance(op, Put):
                            self._apply_put(conn, revision, op.key, op.value, op.session)
                        else:
                            self._apply_delete(conn, revision, op.key)
        return [TxnResult(ok, revision, {} if ok else cur)
                for ok, cur in zip(oks, currents, strict=True)]

    def compact(self, revision: int) -> None:
        """Forget the change history up to ``revision`` (as etcd's
        compaction does): a watch from before it gets ``WatchCompacted``."""
        with self._write() as conn:
            conn.execute("DELETE FROM changes WHERE revision <= ?", (revision,))
            conn.execute("UPDATE meta SET compacted = MAX(compacted, ?) WHERE id = 1",
                         (revision,))

    # --- change feed -------------------------------------------------------------------

    def changes(self, prefix: str, after_revision: int, timeout_s: float) -> list[Change]:
        low, high = _prefix_bounds(prefix)
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            conn = self._read_conn()
            compacted = int(conn.execute("SELECT compacted FROM meta WHERE id = 1").fetchone()[0])
            if after_revision < compacted:
                raise WatchCompacted(after_revision, compacted)
            rows = conn.execute(
                "SELECT revision, key, kind, value FROM changes "
                "WHERE revision > ? AND key >= ? AND key < ? ORDER BY seq",
                (after_revision, low, high),
            ).fetchall()
            if rows or time.monotonic() >= deadline:
                return [Change(int(r[0]), r[1], r[2], r[3]) for r in rows]
            self._sleep(self._poll_interval_s)

    def watch(self, prefix: str, after_revision: int) -> ChangeStream:
        """A local file has no connection to keep: the stream polls the
        change table (every ``poll_interval_s`` while nothing changes)."""
        return PollingChangeStream(self, prefix, after_revision)

    # --- services ------------------------------------------------------------------------

    def register_service(self, name: str, node: str, address: str, ttl_s: float) -> None:
        now = self._clock.now()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO services (name, node, address, registered_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(name, node) DO UPDATE SET "
                "address = excluded.address, expires_at = excluded.expires_at",
                (name, node, address, now, now + ttl_s),
            )

    def deregister_service(self, name: str, node: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM services WHERE name = ? AND node = ?", (name, node))

    def services(self, name: str) -> list[ServiceEntry]:
        rows = self._read_conn().execute(
            "SELECT name, node, address, registered_at, expires_at FROM services "
            "WHERE name = ? AND expires_at > ? ORDER BY node",
            (name, self._clock.now()),
        ).fetchall()
        return [ServiceEntry(r[0], r[1], r[2], float(r[3]), float(r[4])) for r in rows]

