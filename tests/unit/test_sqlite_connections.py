"""The embedded store under short-lived threads (a cycle's pools of them):
a thread that ended gives its SQLite connections back. Not doing so once
leaked two file descriptors a build cycle until a long-running instance's
HTTP server crashed on select() at 1,024."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from warmcache import deadline
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.errors import StoreUnavailable
from warmcache.testing.polling import wait_for


def open_files(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(path)):
                count += 1
        except OSError:
            continue
    return count


def test_connections_of_ended_threads_are_closed(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    try:
        store.put("k", "v")
        before = open_files(tmp_path / "store.db")
        for _ in range(40):  # forty short-lived threads, each reading and writing once
            t = threading.Thread(target=lambda: (store.get("k"), store.put("k", "v")))
            t.start()
            t.join()
        # each thread's connection is closed when the next thread opens its
        # own: the last one's are left (two connections, a few descriptors)
        assert open_files(tmp_path / "store.db") <= before + 10  # not 40 threads' worth
    finally:
        store.close()
    assert open_files(tmp_path / "store.db") == 0


def test_a_write_waits_for_this_processs_other_writers_only_until_its_deadline(
    tmp_path: Path,
) -> None:
    """Another process holds the file's write lock; a background write of
    this process (no deadline) waits for it holding the process's writer
    lock. A request's write behind it answers StoreUnavailable by its own
    deadline, not after the other's whole busy timeout (it once took 30 s
    in `warmcache serve` while a demand flush waited)."""
    store = SqliteStore(tmp_path / "s.db", busy_timeout_s=20.0)
    store.put("k", "0")
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    background = threading.Thread(target=lambda: _quietly(lambda: store.put("k", "1")))
    background.start()
    try:
        wait_for("the background write to hold the writer lock", _held(store), 10)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable), deadline.within(0.3):
            store.put("k", "2")
        assert time.monotonic() - started < 5
    finally:
        other.execute("ROLLBACK")
        other.close()
        background.join(30)
        store.close()


def _held(store: SqliteStore) -> Callable[[], bool]:
    def check() -> bool:
        got = store._writer.acquire(blocking=False)
        if got:
            store._writer.release()
        return not got

    return check


def _quietly(write: Callable[[], object]) -> None:
    with contextlib.suppress(StoreUnavailable):
        write()
