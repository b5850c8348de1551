"""ElasticsearchEvents: events into an Elasticsearch data stream, for Kibana.

NOT tested against a live Elasticsearch here (none can be installed on these
machines): written against the official ``elasticsearch`` client; the
buffering and spooling below are tested with the client pointed at a closed
port, and the adapter joins the event-sink tests when
``WARMCACHE_TEST_ELASTICSEARCH`` is set.

* ``emit`` only puts the event on a bounded in-memory queue (a ``Batcher``):
  a slow or down Elasticsearch never slows an acquisition or a build.
* The batcher's thread sends batches with the bulk API. A batch that cannot
  be sent is spooled to disk (JSON lines, one file per batch, at most
  ``max_spool_bytes``; past that the oldest files go, and are counted in
  ``dropped``) and replayed, oldest first, once Elasticsearch answers again.
* The index template (data stream ``warmcache-events``) maps every field
  the Kibana dashboards in ``dashboards/`` use; a test checks that.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from warmcache.adapters.batching import Batcher
from warmcache.ports import Event

log = logging.getLogger(__name__)

DATA_STREAM = "warmcache-events"

# Fields of warmcache's events, mapped for aggregations in Kibana.
MAPPINGS: dict[str, Any] = {
    "dynamic": True,
    "properties": {
        "@timestamp": {"type": "date"},
        "type": {"type": "keyword"},
        "az": {"type": "keyword"},
        "flavor": {"type": "keyword"},
        "name": {"type": "keyword"},
        "hypervisor": {"type": "keyword"},
        "rack": {"type": "keyword"},
        "node": {"type": "keyword"},
        "requester": {"type": "keyword"},
        "mode": {"type": "keyword"},
        "state": {"type": "keyword"},
        "error": {"type": "keyword"},
        "kind": {"type": "keyword"},
        "vm": {"type": "keyword"},
        "count": {"type": "integer"},
        "target": {"type": "integer"},
        "ready": {"type": "integer"},
        "reserved": {"type": "integer"},
        "building": {"type": "integer"},
        "attempts": {"type": "integer"},
        "token": {"type": "long"},
        "latency_ms": {"type": "float"},
        "tier": {"type": "keyword"},  # acquisition: the slowest standby tier served from
        "tiers": {"type": "object", "enabled": False},  # acquisition: VMs per tier
        "waited_s": {"type": "float"},
        "select_ms": {"type": "float"},
        "commit_ms": {"type": "float"},
        "wake_ms": {"type": "float"},
        "duration_s": {"type": "float"},
        "reason": {"type": "text"},
        "placement": {"type": "text"},
        "vms": {"type": "keyword"},
        "built": {"type": "object", "enabled": False},
        "replaced": {"type": "object", "enabled": False},  # cycle.summary: pool -> VMs
        "replaced_vms": {"type": "integer"},
        "stale": {"type": "integer"},
        "stale_left": {"type": "integer"},
        "aged_left": {"type": "integer"},
        "generation": {"type": "keyword"},
        "problems": {"type": "text"},
        "failed": {"type": "text"},
    },
}


def event_document(event: Event) -> dict[str, Any]:
    return {"@timestamp": int(event.at * 1000), "type": event.type, **dict(event.fields)}


class ElasticsearchEvents:
    def __init__(
        self,
        url: str,
        spool_dir: str | Path,
        *,
        client: Any = None,
        max_queue: int = 10_000,
        batch: int = 500,
        flush_s: float = 1.0,
        max_spool_bytes: int = 64 << 20,
        retry_s: float = 5.0,
        data_stream: str = DATA_STREAM,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        """``client_options`` go to ``elasticsearch.Elasticsearch`` as they are
        (``ca_certs``, ``api_key``, ``basic_auth``...)."""
        if client is None:
            from elasticsearch import Elasticsearch

            client = Elasticsearch(url, request_timeout=10, **(client_options or {}))
        self._client = client
        self.data_stream = data_stream  # and its index template, matching f"{it}*"
        self._spool = Path(spool_dir)
        self._spool.mkdir(parents=True, exist_ok=True)
        self._max_spool = max_spool_bytes
        self._retry_s = retry_s
        self._next_replay = 0.0
        self._template_ready = False
        self._spool_dropped = 0
        self._batcher: Batcher[dict[str, Any]] = Batcher(
            self._write, name="es-events", max_queue=max_queue, batch=batch, flush_s=flush_s
        )

    @property
    def dropped(self) -> int:
        """Events lost: the queue was full, or the spool outgrew its bound."""
        return self._batcher.dropped + self._spool_dropped

    # --- the EventSink port ------------------------------------------------------------

    def emit(self, event: Event) -> None:
        self._batcher.put(event_document(event))

    def recent(self, limit: int = 100, type_prefix: str = "") -> list[Event]:
        query = {"prefix": {"type": type_prefix}} if type_prefix else {"match_all": {}}
        try:
            reply = self._client.search(
                index=self.data_stream, size=limit, query=query, sort=[{"@timestamp": "desc"}]
            )
        except Exception as exc:
            log.warning("events search failed: %s", exc)
            return []
        out = []
        for hit in reply["hits"]["hits"]:
            doc = dict(hit["_source"])
            at = doc.pop("@timestamp", 0) / 1000
            out.append(Event(doc.pop("type", ""), at, doc))
        return out

    # --- sending -----------------------------------------------------------------------

    def _ensure_template(self) -> None:
        if not self._template_ready:
            self._client.indices.put_index_template(
                name=self.data_stream,
                index_patterns=[f"{self.data_stream}*"],
                data_stream={},
                template={"mappings": MAPPINGS},
                priority=200,
            )
            self._template_ready = True

    def _send(self, docs: list[dict[str, Any]]) -> None:
        self._ensure_template()
        operations: list[dict[str, Any]] = []
        for doc in docs:
            operations += [{"create": {"_index": self.data_stream}}, doc]
        reply = self._client.bulk(operations=operations)
        if reply.get("errors"):
            failed = [i for i in reply["items"] if i.get("create", {}).get("error")]
            log.warning(
                "%d event(s) rejected by Elasticsearch: %s",
                len(failed),
                failed[0]["create"]["error"] if failed else "",
            )

    def _write(self, docs: list[dict[str, Any]]) -> None:
        """The batcher's writer (called at least every ``flush_s``): send or
        spool this batch, then retry the spool when it is due. Never raises."""
        if docs:
            try:
                self._send(docs)
            except Exception as exc:
                log.warning(
                    "Elasticsearch unavailable (%s); spooling %d event(s)",
                    type(exc).__name__,
                    len(docs),
                )
                self._spool_batch(docs)
        if time.monotonic() >= self._next_replay and self.spooled_files() and not self._replay():
            self._next_replay = time.monotonic() + self._retry_s

    # --- the spool ---------------------------------------------------------------------

    def spooled_files(self) -> list[Path]:
        return sorted(self._spool.glob("*.jsonl"))

    def _spool_batch(self, docs: list[dict[str, Any]]) -> None:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}.jsonl"
        tmp = self._spool / (name + ".tmp")
        tmp.write_text("".join(json.dumps(d, default=str) + "\n" for d in docs))
        tmp.replace(self._spool / name)
        files = self.spooled_files()
        while files and sum(f.stat().st_size for f in files) > self._max_spool:
            oldest = files.pop(0)
            self._spool_dropped += oldest.read_text().count("\n")
            oldest.unlink(missing_ok=True)

    def _replay(self) -> bool:
        """Send spooled batches oldest first; False (and stop) at the first failure."""
        for path in self.spooled_files():
            docs = [json.loads(line) for line in path.read_text().splitlines() if line]
            try:
                self._send(docs)
            except Exception:
                return False
            path.unlink(missing_ok=True)
        return True

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Send (or spool) what is queued now; False if that took too long.
        Searchable after Elasticsearch's next refresh."""
        return self._batcher.flush(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued (to Elasticsearch or the spool), then stop.
        The client belongs to whoever made it only when it was passed in."""
        self._batcher.close(timeout_s)
