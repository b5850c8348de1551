"""One contract for every event sink (STYLE.md §6.6): what is emitted comes
back from ``recent``, newest first, filtered by type prefix and limited.
(``LogEvents.recent`` once always returned [], so the dashboard was
silently empty with ``events.kind = "log"``.) Elasticsearch runs the same
checks in tests/integration/test_elasticsearch_events.py when a server is
given."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from warmcache.adapters.sqlite_events import LogEvents, SqliteEvents
from warmcache.ports import Event


@pytest.fixture(params=["sqlite", "log"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made = SqliteEvents(tmp_path / "events.db") if request.param == "sqlite" else LogEvents()
    yield made
    made.close()


def test_recent_returns_what_was_emitted_newest_first(sink: Any) -> None:
    for i, kind in enumerate(("vm.build_started", "acquisition", "vm.build_finished",
                              "acquisition.failed", "leader.elected")):
        sink.emit(Event(kind, 1000.0 + i, {"n": i}))
    assert [e.type for e in sink.recent(10)] == [
        "leader.elected", "acquisition.failed", "vm.build_finished", "acquisition",
        "vm.build_started"]
    assert [e.fields["n"] for e in sink.recent(10, "vm.build_")] == [2, 0]
    assert [e.type for e in sink.recent(1, "acquisition")] == ["acquisition.failed"]
    assert sink.recent(10, "nothing.") == []
    [first] = sink.recent(1, "leader.")
    assert first.at == 1004.0 and first.fields == {"n": 4}


def test_nothing_is_dropped_while_the_backend_is_up_and_close_keeps_what_was_queued(
    sink: Any,
) -> None:
    for i in range(50):
        sink.emit(Event("acquisition", 2000.0 + i, {"n": i}))
    assert len(sink.recent(100, "acquisition")) == 50
    assert sink.dropped == 0
