"""Local views of a key prefix, kept current from the store's change feed.

A view is loaded once with a range read and then only applies changes (a
compacted feed means one more range read). Readers get the last state the
view has seen, which may lag the store by one feed poll: callers that act on
it (claims) guard their writes with the revisions the view carries, so a
stale view costs a retry, never a wrong write.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from warmcache.errors import StoreError, WatchCompacted
from warmcache.ports import Change, CoordinationStore

log = logging.getLogger(__name__)
T = TypeVar("T")


class PrefixView(Generic[T]):
    """``key -> (parsed value, mod revision)`` for every key under ``prefix``;
    ``parse`` returns ``None`` for values to ignore (logged)."""

    def __init__(self, store: CoordinationStore, prefix: str,
                 parse: Callable[[str, str], T | None]) -> None:
        self._store = store
        self.prefix = prefix
        self._parse = parse
        self._items: dict[str, tuple[T, int]] = {}
        self._revision: int | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._revision is not None

    def items(self) -> dict[str, tuple[T, int]]:
        with self._lock:
            return dict(self._items)

    def values(self) -> list[T]:
        with self._lock:
            return [value for value, _ in self._items.values()]

    def refresh(self) -> None:
        kvs, revision = self._store.range(self.prefix)
        items = {}
        for kv in kvs:
            parsed = self._safe_parse(kv.key, kv.value)
            if parsed is not None:
                items[kv.key] = (parsed, kv.mod_revision)
        with self._lock:
            self._items, self._revision = items, revision

    def catch_up(self, timeout_s: float = 0.0) -> None:
        """Apply what changed since the last look (waiting up to ``timeout_s``)."""
        if self._revision is None:
            self.refresh()
            return
        try:
            changes = self._store.changes(self.prefix, self._revision, timeout_s)
        except WatchCompacted:
            self.refresh()
            return
        self._apply(changes)

    def _apply(self, changes: list[Change]) -> None:
        with self._lock:
            for change in changes:
                if change.kind == "delete":
                    self._items.pop(change.key, None)
                elif change.value is not None:
                    parsed = self._safe_parse(change.key, change.value)
                    if parsed is not None:
                        self._items[change.key] = (parsed, change.revision)
                    else:
                        self._items.pop(change.key, None)
                self._revision = max(self._revision or 0, change.revision)

    def _safe_parse(self, key: str, value: str) -> T | None:
        try:
            return self._parse(key, value)
        except ValueError as exc:
            log.warning("ignoring malformed value at %s: %s", key, exc)
            return None

    def follow(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        """Keep the view current until ``stop`` is set (a background thread)."""
        while not stop.is_set():
            try:
                self.catch_up(timeout_s=poll_s)
            except StoreError as exc:
                log.warning("view of %s: %s", self.prefix, exc)
                stop.wait(poll_s)
