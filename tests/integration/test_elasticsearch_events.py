"""ElasticsearchEvents: never blocking, spooled while Elasticsearch is down,
replayed in order when it returns. A live server joins with
WARMCACHE_TEST_ELASTICSEARCH=http://127.0.0.1:9200."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unavailable
from warmcache.adapters.elasticsearch_events import DATA_STREAM, ElasticsearchEvents
from warmcache.ports import Event
from warmcache.testing.polling import wait_for
from warmcache.testing.ports import free_port

pytest.importorskip("elasticsearch")


def events(n: int, start: int = 0) -> list[Event]:
    return [
        Event("acquisition", 1_700_000_000 + i, {"az": "az1", "count": i})
        for i in range(start, start + n)
    ]


class FlakyElasticsearch:
    """Stands in for the client: down for the first ``down`` calls."""

    def __init__(self, down: int) -> None:
        from elasticsearch import ConnectionError as EsConnectionError

        self.down = down
        self.error = EsConnectionError("connection refused")
        self.bulks: list[list[dict[str, Any]]] = []
        self.templates: list[str] = []
        self.lock = threading.Lock()
        self.indices = self

    def put_index_template(self, name: str, **_: Any) -> None:
        self.templates.append(name)

    def bulk(self, operations: list[dict[str, Any]]) -> dict[str, Any]:
        with self.lock:
            if self.down > 0:
                self.down -= 1
                raise self.error
            self.bulks.append(operations[1::2])
        return {"errors": False, "items": []}


def test_a_down_server_spools_events_to_disk(tmp_path: Path) -> None:
    sink = ElasticsearchEvents(
        f"http://127.0.0.1:{free_port()}", tmp_path / "spool", flush_s=0.05, retry_s=60
    )
    for e in events(5):
        sink.emit(e)  # returns at once whatever Elasticsearch does
    sink.close(timeout_s=60)
    spooled = [
        json.loads(line) for f in sink.spooled_files() for line in f.read_text().splitlines()
    ]
    assert [d["count"] for d in spooled] == [0, 1, 2, 3, 4]
    assert spooled[0]["@timestamp"] == 1_700_000_000_000 and spooled[0]["type"] == "acquisition"


def test_spooled_events_are_replayed_when_it_returns(tmp_path: Path) -> None:
    client = FlakyElasticsearch(down=2)
    sink = ElasticsearchEvents(
        "unused", tmp_path / "spool", client=client, flush_s=0.05, retry_s=0.05
    )
    for e in events(3):
        sink.emit(e)
    wait_for("a first spooled batch", sink.spooled_files, 10)
    for e in events(3, start=3):
        sink.emit(e)
    wait_for("everything delivered", lambda: sum(len(b) for b in client.bulks) == 6, 20)
    sink.close()
    delivered = [d["count"] for batch in client.bulks for d in batch]
    assert sorted(delivered) == list(range(6)) and len(set(delivered)) == 6
    assert sink.spooled_files() == [] and client.templates[0] == DATA_STREAM


def test_the_spool_is_bounded_and_counts_what_it_drops(tmp_path: Path) -> None:
    client = FlakyElasticsearch(down=10**6)
    sink = ElasticsearchEvents(
        "unused",
        tmp_path / "spool",
        client=client,
        batch=1,
        flush_s=0.01,
        retry_s=60,
        max_spool_bytes=400,
    )
    for e in events(20):
        sink.emit(e)
    sink.close(timeout_s=30)
    kept = sum(f.read_text().count("\n") for f in sink.spooled_files())
    assert sum(f.stat().st_size for f in sink.spooled_files()) <= 400
    assert kept + sink.dropped == 20 and sink.dropped > 0


@pytest.mark.elasticsearch
def test_against_a_live_elasticsearch(tmp_path: Path) -> None:
    url = os.environ.get("WARMCACHE_TEST_ELASTICSEARCH")
    if not url:
        unavailable(
            "elasticsearch", "no server: set WARMCACHE_TEST_ELASTICSEARCH=http://127.0.0.1:9200"
        )
    sink = ElasticsearchEvents(url, tmp_path / "spool", flush_s=0.1)
    marker = f"live-{os.getpid()}"
    sink.emit(Event("acquisition", 1_700_000_000, {"requester": marker, "count": 1}))
    try:
        wait_for(
            "the event to be searchable",
            lambda: any(
                e.fields.get("requester") == marker for e in sink.recent(50, "acquisition")
            ),
            30,
        )
    finally:
        sink.close()
