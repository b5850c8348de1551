"""One contract for every event sink (STYLE.md §6.6): what is emitted comes
back from ``recent``, newest first, filtered by type prefix and limited.
(``LogEvents.recent`` once always returned [], so the dashboard was
silently empty with ``events.kind = "log"``, and nothing caught it.)

Elasticsearch joins when a server is given
(``WARMCACHE_TEST_ELASTICSEARCH=http://127.0.0.1:9200``), each test on a
data stream of its own; it is asynchronous and near-real-time, so its
``settle`` flushes the queue and refreshes the stream before a read. Its
spool-while-down behaviour is in tests/integration/test_elasticsearch_events.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import unavailable
from warmcache.adapters.sqlite_events import LogEvents, SqliteEvents
from warmcache.ports import Event, EventSink


@dataclass
class Sink:
    sink: EventSink
    settle: Callable[[], None] = lambda: None  # make what was emitted readable

    def emitted(self, *events: Event) -> None:
        for event in events:
            self.sink.emit(event)
        self.settle()


def _elasticsearch(tmp_path: Path) -> Iterator[Sink]:
    url = os.environ.get("WARMCACHE_TEST_ELASTICSEARCH")
    if not url:
        unavailable(
            "elasticsearch", "no server: set WARMCACHE_TEST_ELASTICSEARCH=http://127.0.0.1:9200"
        )
    from elasticsearch import Elasticsearch

    from warmcache.adapters.elasticsearch_events import ElasticsearchEvents

    client = Elasticsearch(url, request_timeout=10)
    stream = f"wctest-events-{uuid.uuid4().hex[:12]}"  # matches no other template
    sink = ElasticsearchEvents(
        url, tmp_path / "spool", client=client, flush_s=0.05, data_stream=stream
    )

    def settle() -> None:
        assert sink.flush(30) and not sink.spooled_files()
        client.indices.refresh(index=stream)

    yield Sink(sink, settle)
    sink.close()
    client.indices.delete_data_stream(name=stream)
    client.indices.delete_index_template(name=stream)
    client.close()


@pytest.fixture(
    params=["sqlite", "log", pytest.param("elasticsearch", marks=pytest.mark.elasticsearch)]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sink]:
    if request.param == "elasticsearch":
        yield from _elasticsearch(tmp_path)
        return
    made = SqliteEvents(tmp_path / "events.db") if request.param == "sqlite" else LogEvents()
    yield Sink(made)
    made.close()


def test_recent_returns_what_was_emitted_newest_first(backend: Sink) -> None:
    sink = backend.sink
    backend.emitted(
        *(
            Event(kind, 1000.0 + i, {"n": i})
            for i, kind in enumerate(
                (
                    "vm.build_started",
                    "acquisition",
                    "vm.build_finished",
                    "acquisition.failed",
                    "leader.elected",
                )
            )
        )
    )
    assert [e.type for e in sink.recent(10)] == [
        "leader.elected",
        "acquisition.failed",
        "vm.build_finished",
        "acquisition",
        "vm.build_started",
    ]
    assert [e.fields["n"] for e in sink.recent(10, "vm.build_")] == [2, 0]
    assert [e.type for e in sink.recent(1, "acquisition")] == ["acquisition.failed"]
    assert sink.recent(10, "nothing.") == []
    [first] = sink.recent(1, "leader.")
    assert first.at == 1004.0 and first.fields == {"n": 4}


def test_nothing_is_dropped_while_the_backend_is_up(
    backend: Sink,
) -> None:
    backend.emitted(*(Event("acquisition", 2000.0 + i, {"n": i}) for i in range(50)))
    assert len(backend.sink.recent(100, "acquisition")) == 50
    assert backend.sink.dropped == 0
