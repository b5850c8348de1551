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

import contextlib
import functools
import logging
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from warmcache import deadline
from warmcache.adapters.polling_stream import PollingChangeStream
from warmcache.adapters.txn_batches import check_disjoint
from warmcache.clock import SystemClock
from warmcache.errors import SessionExpired, StoreError, StoreUnavailable, WatchCompacted
from warmcache.ports import (
    Change,
    ChangeStream,
    Clock,
    Compare,
    Delete,
    KeyValue,
    Op,
    Put,
    ServiceEntry,
    Txn,
    TxnResult,
)

log = logging.getLogger(__name__)
CHECKPOINT_EVERY_S = 0.5

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


F = TypeVar("F", bound=Callable[..., Any])


def _translated(method: F) -> F:
    """Driver errors become the store port's (STYLE.md §3): a locked or busy
    database is ``StoreUnavailable`` (nothing was written: retry), any other
    ``sqlite3.Error`` a ``StoreError``. Never a raw ``sqlite3`` error into a
    builder or a request."""

    @functools.wraps(method)
    def call(self: SqliteStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreUnavailable(f"sqlite store {self.path}", str(exc)) from exc
            raise StoreError(f"sqlite store {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}") from exc

    return call  # type: ignore[return-value]


class SqliteStore:
    """Coordination store in one SQLite file (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock | None = None,
        busy_timeout_s: float = 30.0,
        keep_changes: int = 100_000,
        poll_interval_s: float = 0.01,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = str(path)
        self._clock = clock or SystemClock()
        self._busy_timeout_s = busy_timeout_s
        self._keep_changes = keep_changes
        self._poll_interval_s = poll_interval_s
        self._sleep = sleep
        self._local = threading.local()
        # Every connection, with the thread it belongs to: a thread that
        # ended leaves its connections here (sqlite3 connections take no weak
        # references), so they are closed when the next one is opened. A
        # pool of short-lived threads (each cycle's) once leaked two file
        # descriptors a cycle until the server's select() gave out at 1,024.
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._all_lock = threading.Lock()
        self._writer = threading.RLock()
        self._quiet: dict[str, tuple[int, int]] = {}
        self._services_reaped_at = float("-inf")  # prefix -> a span without its changes
        self._checkpointer: threading.Thread | None = None
        self._stopping = threading.Event()
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
        for attr in ("conn", "wconn"):
            conn = getattr(self._local, attr, None)
            if conn is not None:
                with self._all_lock:
                    self._all = [(t, c) for t, c in self._all if c is not conn]
                conn.close()
                setattr(self._local, attr, None)

    # --- connections -------------------------------------------------------------

    def _conn(self, writer: bool = False) -> sqlite3.Connection:
        """This thread's reader connection, or its writer connection: the
        writer has no busy timeout (``_begin`` waits for the write lock
        itself); readers keep one for WAL recovery and the like."""
        attr = "wconn" if writer else "conn"
        conn: sqlite3.Connection | None = getattr(self._local, attr, None)
        if conn is None:
            if self._closed:
                raise StoreError("store is closed")
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={0 if writer else int(self._busy_timeout_s * 1000)}")
            # No checkpoint inside a commit: it fsyncs, and the commit that
            # crossed the WAL's 1,000 pages took 5-25 ms here. The
            # checkpointer thread does it (see _checkpoint_loop).
            conn.execute("PRAGMA wal_autocheckpoint=0")
            setattr(self._local, attr, conn)
            with self._all_lock:
                alive = []
                for thread, other in self._all:
                    if thread.is_alive():
                        alive.append((thread, other))
                    else:
                        other.close()
                self._all = [*alive, (threading.current_thread(), conn)]
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn(writer=True)
        # Threads of one store queue here, woken as soon as the lock is free,
        # rather than in SQLite's busy handler, whose sleeps grow 1, 2, 5,
        # 10, 15, 20 ms...: two or three waits there were the whole tail of
        # an acquisition (p99 16 ms where the transaction takes 0.05 ms).
        if self._checkpointer is None:
            self._start_checkpointer()
        # The wait for this process's other writers counts against the
        # caller's deadline too: one without a deadline (a background job)
        # may hold the lock for a whole busy timeout while another process
        # holds the file's.
        if not self._writer.acquire(timeout=deadline.remaining(self._busy_timeout_s, "sqlite")):
            raise StoreUnavailable(
                f"sqlite store {self.path}", "another writer of this process holds the write lock"
            )
        try:
            self._begin(conn)
            try:
                self._reap(conn)
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error:
                # Not committed (SQLite's commit is atomic); end the
                # transaction, or every later BEGIN on this connection fails.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        finally:
            self._writer.release()

    def _start_checkpointer(self) -> None:
        with self._all_lock:
            if self._checkpointer is None and not self._closed:
                self._checkpointer = threading.Thread(
                    target=self._checkpoint_loop, name=f"sqlite-checkpoint {self.path}", daemon=True
                )
                self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        """Fold the WAL into the database every CHECKPOINT_EVERY_S, on a
        connection of its own (PASSIVE: it never waits for, nor blocks,
        readers and writers; each process sharing the file runs one, and a
        busy one simply tries again next time)."""
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            while not self._stopping.wait(CHECKPOINT_EVERY_S):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.debug("sqlite checkpoint of %s: %s", self.path, exc)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            conn.close()

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting for other processes' writers in short
        sleeps (0.1 ms doubling to 2 ms) instead of SQLite's busy handler."""
        give_up = time.monotonic() + deadline.remaining(self._busy_timeout_s, "sqlite")
        pause = 0.0001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise StoreError(f"sqlite store {self.path}: {exc}") from exc
                if time.monotonic() > give_up:  # the write lock never came: nothing written
                    raise StoreUnavailable(
                        f"sqlite store {self.path}", "its write lock is held by another writer"
                    ) from exc
                self._sleep(pause * random.uniform(0.5, 1.5))
                pause = min(pause * 2, 0.002)
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite store {self.path}: {exc}") from exc

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
        self._stopping.set()
        if self._checkpointer is not None and self._checkpointer is not threading.current_thread():
            self._checkpointer.join()
        with self._all_lock:
            for _thread, conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    # --- revision bookkeeping ------------------------------------------------------

    def _revision(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT revision FROM meta WHERE id = 1").fetchone()[0])

    def _bump(self, conn: sqlite3.Connection) -> int:
        revision = int(
            conn.execute(
                "UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision"
            ).fetchone()[0]
        )
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

    def _apply_ops(self, conn: sqlite3.Connection, revision: int, ops: Sequence[Op]) -> None:
        """Every op of one revision. Distinct keys (the usual case): four
        statements whatever their number, since each statement is a trip
        through the GIL, and one writer waiting for it holds the write lock
        for everyone; a key written twice: in order, one by one."""
        if len({op.key for op in ops}) < len(ops):
            for op in ops:
                if isinstance(op, Put):
                    self._apply_put(conn, revision, op.key, op.value, op.session)
                else:
                    self._apply_delete(conn, revision, op.key)
            return
        for op in ops:
            if (
                isinstance(op, Put)
                and op.session is not None
                and not self._session_alive(conn, op.session)
            ):
                raise SessionExpired(op.session)
        gone = [op.key for op in ops if isinstance(op, Delete)]
        existing = set(self._get_many(conn, gone)) if gone else set()
        puts = [op for op in ops if isinstance(op, Put)]
        if existing:
            conn.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in existing])
        if puts:
            conn.executemany(
                "INSERT INTO kv (key, value, create_rev, mod_rev, session) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                "mod_rev = excluded.mod_rev, session = excluded.session",
                [(op.key, op.value, revision, revision, op.session) for op in puts],
            )
        conn.executemany(
            "INSERT INTO changes (revision, key, kind, value) VALUES (?, ?, ?, ?)",
            [
                (revision, op.key, "put", op.value)
                if isinstance(op, Put)
                else (revision, op.key, "delete", None)
                for op in ops
                if isinstance(op, Put) or op.key in existing
            ],
        )

    def _get_many(self, conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, KeyValue]:
        out: dict[str, KeyValue] = {}
        for i in range(0, len(keys), 500):  # within SQLite's bound-parameter limit
            chunk = keys[i : i + 500]
            for row in conn.execute(
                "SELECT key, value, create_rev, mod_rev, session FROM kv WHERE key IN "
                f"({','.join('?' * len(chunk))})",
                chunk,
            ):
                out[row[0]] = self._row(row)
        return out

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
            r[0] for r in conn.execute("SELECT id FROM sessions WHERE expires_at <= ?", (now,))
        ]
        for session in expired:
            self._end_session(conn, session)
        # Expired services are filtered out on read; dropping their rows is
        # housekeeping, once a second at most.
        if now - self._services_reaped_at >= 1.0 or now < self._services_reaped_at:
            conn.execute("DELETE FROM services WHERE expires_at <= ?", (now,))
            self._services_reaped_at = now

    def _end_session(self, conn: sqlite3.Connection, session: str) -> None:
        keys = [r[0] for r in conn.execute("SELECT key FROM kv WHERE session = ?", (session,))]
        if keys:
            revision = self._bump(conn)
            for key in keys:
                self._apply_delete(conn, revision, key)
        conn.execute("DELETE FROM sessions WHERE id = ?", (session,))

    @_translated
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

    @_translated
    def renew_session(self, session_id: str) -> None:
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE sessions SET expires_at = ? + ttl_s WHERE id = ?",
                (self._clock.now(), session_id),
            ).rowcount
        if not updated:
            raise SessionExpired(session_id)

    @_translated
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

    @_translated
    def get(self, key: str) -> KeyValue | None:
        return self._get(self._read_conn(), key)

    @_translated
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

    @_translated
    def put(self, key: str, value: str, session: str | None = None) -> int:
        with self._write() as conn:
            revision = self._bump(conn)
            self._apply_ops(conn, revision, [Put(key, value, session)])
        return revision

    @_translated
    def delete(self, key: str) -> bool:
        with self._write() as conn:
            if self._get(conn, key) is None:
                return False
            revision = self._bump(conn)
            return self._apply_delete(conn, revision, key)

    @_translated
    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        with self._write() as conn:
            found = self._get_many(conn, list(dict.fromkeys(c.key for c in compares)))
            current = {c.key: found.get(c.key) for c in compares}
            ok = all(c.holds(current[c.key]) for c in compares)
            ops = success if ok else failure
            if ops:
                revision = self._bump(conn)
                self._apply_ops(conn, revision, ops)
            else:
                revision = self._revision(conn)
        return TxnResult(ok, revision, {} if ok else current)

    txn_limit = None  # one local write transaction holds any number of keys

    @_translated
    def txns(self, batch: Sequence[Txn]) -> list[TxnResult]:
        """One write transaction: every compare is read first, then the
        transactions whose compares hold are applied at one revision."""
        check_disjoint(batch)
        with self._write() as conn:
            found = self._get_many(
                conn, list(dict.fromkeys(c.key for txn in batch for c in txn.compares))
            )
            currents = [{c.key: found.get(c.key) for c in txn.compares} for txn in batch]
            oks = [
                all(c.holds(cur[c.key]) for c in txn.compares)
                for txn, cur in zip(batch, currents, strict=True)
            ]
            ops = [op for ok, txn in zip(oks, batch, strict=True) if ok for op in txn.success]
            if ops:
                revision = self._bump(conn)
                self._apply_ops(conn, revision, ops)
            else:
                revision = self._revision(conn)
        return [
            TxnResult(ok, revision, {} if ok else cur)
            for ok, cur in zip(oks, currents, strict=True)
        ]

    @_translated
    def compact(self, revision: int) -> None:
        """Forget the change history up to ``revision`` (as etcd's
        compaction does): a watch from before it gets ``WatchCompacted``."""
        with self._write() as conn:
            conn.execute("DELETE FROM changes WHERE revision <= ?", (revision,))
            conn.execute("UPDATE meta SET compacted = MAX(compacted, ?) WHERE id = 1", (revision,))

    # --- change feed -------------------------------------------------------------------

    @_translated
    def changes(self, prefix: str, after_revision: int, timeout_s: float) -> list[Change]:
        """Rows of the change table past ``after_revision`` under ``prefix``.

        A quiet prefix (hosts, rules) is asked again and again from the
        revision of its last change, long ago: scanning every change since
        (up to ``keep_changes``) on each poll saturated both cores with eight
        followers. So each prefix remembers a span of revisions known to
        hold none of its changes, and a later query starts after it."""
        low, high = _prefix_bounds(prefix)
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            conn = self._read_conn()
            conn.execute("BEGIN")  # one snapshot: the rows and the revision agree
            try:
                revision, compacted = conn.execute(
                    "SELECT revision, compacted FROM meta WHERE id = 1"
                ).fetchone()
                if after_revision < compacted:
                    raise WatchCompacted(after_revision, int(compacted))
                quiet_from, quiet_to = self._quiet.get(prefix, (0, -1))
                start = quiet_to if quiet_from <= after_revision <= quiet_to else after_revision
                # ORDER BY revision, seq is the order of seq (revisions grow
                # with it) and lets SQLite walk the revision index: with
                # ORDER BY seq alone it scanned the whole table, 8.5 ms per
                # poll at 70,000 changes instead of 3 us.
                rows = conn.execute(
                    "SELECT revision, key, kind, value FROM changes "
                    "WHERE revision > ? AND key >= ? AND key < ? ORDER BY revision, seq",
                    (start, low, high),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            # Nothing under the prefix in (its last change or the query's
            # start, the snapshot's revision]: true of the history for good.
            last = (
                int(rows[-1][0]) if rows else (quiet_from if start == quiet_to else after_revision)
            )
            self._quiet[prefix] = (last, int(revision))
            if rows or time.monotonic() >= deadline:
                return [Change(int(r[0]), r[1], r[2], r[3]) for r in rows]
            self._sleep(self._poll_interval_s)

    def watch(self, prefix: str, after_revision: int) -> ChangeStream:
        """A local file has no connection to keep: the stream polls the
        change table (every ``poll_interval_s`` while nothing changes)."""
        return PollingChangeStream(self, prefix, after_revision)

    # --- services ------------------------------------------------------------------------

    @_translated
    def register_service(self, name: str, node: str, address: str, ttl_s: float) -> None:
        now = self._clock.now()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO services (name, node, address, registered_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(name, node) DO UPDATE SET "
                "address = excluded.address, expires_at = excluded.expires_at",
                (name, node, address, now, now + ttl_s),
            )

    @_translated
    def deregister_service(self, name: str, node: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM services WHERE name = ? AND node = ?", (name, node))

    @_translated
    def services(self, name: str) -> list[ServiceEntry]:
        rows = (
            self._read_conn()
            .execute(
                "SELECT name, node, address, registered_at, expires_at FROM services "
                "WHERE name = ? AND expires_at > ? ORDER BY node",
                (name, self._clock.now()),
            )
            .fetchall()
        )
        return [ServiceEntry(r[0], r[1], r[2], float(r[3]), float(r[4])) for r in rows]
