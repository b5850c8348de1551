"""The embedded store under short-lived threads (a cycle's pools of them):
a thread that ended gives its SQLite connections back. Not doing so once
leaked two file descriptors a build cycle until a long-running instance's
HTTP server crashed on select() at 1,024."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from warmcache.adapters.sqlite_store import SqliteStore


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
