"""Event sinks never make the caller wait, and lose nothing a short outage
can cost them (warmcache.adapters.batching, SqliteEvents)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from warmcache.adapters.batching import Batcher
from warmcache.adapters.sqlite_events import PRUNE_EVERY, SqliteEvents
from warmcache.ports import Event


class GatedWriter:
    """A writer that blocks until opened, and fails while told to."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.failures = 0
        self.written: list[int] = []

    def __call__(self, items: list[int]) -> None:
        if not items:
            return
        self.open.wait()
        if self.failures:
            self.failures -= 1
            raise OSError("down")
        self.written += items


@pytest.fixture
def writer() -> Iterator[GatedWriter]:
    gate = GatedWriter()
    yield gate
    gate.open.set()


def test_put_never_waits_for_a_blocked_writer(writer: GatedWriter) -> None:
    batcher: Batcher[int] = Batcher(writer, name="t", flush_s=0.01)
    for i in range(100):
        batcher.put(i)  # would hang here if put waited for the writer
    assert not batcher.flush(0.05)
    writer.open.set()
    assert batcher.flush(10)
    assert writer.written == list(range(100)) and batcher.dropped == 0
    batcher.close()


def test_a_failing_writer_gets_the_same_batch_again(writer: GatedWriter) -> None:
    writer.failures = 3
    writer.open.set()
    batcher: Batcher[int] = Batcher(writer, name="t", flush_s=0.01, retry_s=0.01)
    for i in range(10):
        batcher.put(i)
    assert batcher.flush(10)
    assert writer.written == list(range(10)) and batcher.dropped == 0
    batcher.close()


def test_a_full_queue_drops_and_counts(writer: GatedWriter) -> None:
    batcher: Batcher[int] = Batcher(writer, name="t", max_queue=5, batch=1, flush_s=0.01)
    for i in range(20):
        batcher.put(i)
    writer.open.set()
    assert batcher.flush(10)
    # One item may have been in the writer's hands when the queue filled.
    assert len(writer.written) + batcher.dropped == 20
    assert 5 <= len(writer.written) <= 6
    batcher.close()


def test_close_writes_what_is_queued(writer: GatedWriter) -> None:
    writer.open.set()
    batcher: Batcher[int] = Batcher(writer, name="t", flush_s=5)
    for i in range(7):
        batcher.put(i)
    batcher.close()
    assert writer.written == list(range(7))


def test_sqlite_events_emit_while_another_process_holds_the_file(tmp_path: Path) -> None:
    """The regression behind a standby's late takeover: another instance,
    paused while holding the shared events file's lock, must not hold up
    this instance's emit (it used to wait for up to 30 s and then drop)."""
    path = tmp_path / "events.db"
    sink = SqliteEvents(path, busy_timeout_s=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the paused instance's write lock
    try:
        for i in range(3):
            sink.emit(Event("leader.takeover", float(i), {"n": i}))
        assert not sink.flush(0.3)  # still waiting for the lock, retrying
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert sink.flush(10)
    assert [e.fields["n"] for e in sink.recent()] == [2, 1, 0]
    assert sink.dropped == 0
    sink.close()


def test_sqlite_events_close_keeps_every_emitted_event(tmp_path: Path) -> None:
    sink = SqliteEvents(tmp_path / "events.db")
    for i in range(250):
        sink.emit(Event("acquisition", float(i), {"n": i}))
    sink.close()
    reread = SqliteEvents(tmp_path / "events.db")
    assert len(reread.recent(1000)) == 250
    reread.close()


def test_the_sqlite_event_log_keeps_its_retention_and_its_row_cap(tmp_path: Path) -> None:
    """Issue 28, item 8: the log kept every event (20,067 rows, 8.6 MB after
    20,000 acquisitions)."""
    clock = {"now": 1_000_000.0}
    sink = SqliteEvents(tmp_path / "e.db", retention_s=3600, max_rows=1000)
    for i in range(600):  # an hour and more ago
        sink.emit(Event("acquisition", clock["now"] - 7200, {"i": i}))
    sink.flush()
    for i in range(5000):
        sink.emit(Event("acquisition", clock["now"], {"i": i}))
    sink.close()
    db = sqlite3.connect(tmp_path / "e.db")
    rows, oldest = db.execute("SELECT COUNT(*), MIN(at) FROM events").fetchone()
    db.close()
    assert rows <= 1000 + PRUNE_EVERY  # pruned every PRUNE_EVERY rows written
    assert oldest == clock["now"]  # nothing past the retention
