"""The fleet as placement sees it: host facts that agents publish in the
store (``<prefix>/hosts/<az>/<hypervisor>``, bound to each agent's TTL'd
session), kept current from the store's change feed.

A dead agent's session expires, its key is deleted, and the host drops out
of this view (and so out of placement) within one TTL. The view is loaded
once with a range read and then only follows changes; it is never rebuilt
from the whole fleet per cycle or per VM.
"""

from __future__ import annotations

import logging
import threading

from pydantic import ValidationError

from warmcache.errors import StoreError, WatchCompacted
from warmcache.model import HostFacts
from warmcache.ports import Change, CoordinationStore

log = logging.getLogger(__name__)


class HostView:
    def __init__(self, store: CoordinationStore, hosts_dir: str) -> None:
        self._store = store
        self._dir = hosts_dir
        self._hosts: dict[str, HostFacts] = {}
        self._revision: int | None = None
        self._lock = threading.Lock()

    def hosts(self) -> list[HostFacts]:
        with self._lock:
            return sorted(self._hosts.values(), key=lambda h: (h.az, h.hypervisor))

    def get(self, hypervisor: str) -> HostFacts | None:
        with self._lock:
            return self._hosts.get(hypervisor)

    def refresh(self) -> None:
        """Re-read every host (at start, or when the feed was compacted)."""
        kvs, revision = self._store.range(self._dir)
        hosts = {}
        for kv in kvs:
            facts = self._parse(kv.key, kv.value)
            if facts is not None:
                hosts[facts.hypervisor] = facts
        with self._lock:
            self._hosts, self._revision = hosts, revision

    def catch_up(self, timeout_s: float = 0.0) -> None:
        """Apply the changes since the last look (waiting up to ``timeout_s``
        for the first one)."""
        if self._revision is None:
            self.refresh()
            return
        try:
            changes = self._store.changes(self._dir, self._revision, timeout_s)
        except WatchCompacted:
            self.refresh()
            return
        self._apply(changes)

    def _apply(self, changes: list[Change]) -> None:
        with self._lock:
            for change in changes:
                hypervisor = change.key.rsplit("/", 1)[-1]
                if change.kind == "delete":
                    self._hosts.pop(hypervisor, None)
                elif change.value is not None:
                    facts = self._parse(change.key, change.value)
                    if facts is not None:
                        self._hosts[facts.hypervisor] = facts
                self._revision = max(self._revision or 0, change.revision)

    @staticmethod
    def _parse(key: str, value: str) -> HostFacts | None:
        try:
            return HostFacts.model_validate_json(value)
        except ValidationError as exc:
            log.warning("ignoring malformed host facts at %s: %s", key, exc.error_count())
            return None

    def follow(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        """Keep the view current until ``stop`` is set (a background thread)."""
        while not stop.is_set():
            try:
                self.catch_up(timeout_s=poll_s)
            except StoreError as exc:
                log.warning("host view: %s", exc)
                stop.wait(poll_s)
