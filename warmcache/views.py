"""Local views of a key prefix, kept current from the store's change feed.

A view is loaded once with a range read and then only applies changes: in
the background from one long-lived stream (``follow``), or on demand
(``catch_up``) when nothing follows it. A compacted feed means one more
range read. Readers get the last state the view has seen, which may lag the
store by the feed's delay: callers that act on it (claims) guard their
writes with the revisions the view carries, so a stale view costs a retry,
never a wrong write.

Every key keeps the revision it was last seen at, and an update older than
that is ignored. That lets a caller tell the view what it learnt out of
band (``observe``: a transaction's reply) before the feed brings it, without
the feed's older changes then undoing it. Subclasses keep their own indexes
current through ``_changed``, called under the view's lock for every key
whose value changes.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from warmcache.errors import StoreError, WatchCompacted
from warmcache.ports import Change, ChangeStream, CoordinationStore, KeyValue

log = logging.getLogger(__name__)
T = TypeVar("T")
APPLY_CHUNK = 32  # changes applied per hold of the view's lock


class PrefixView(Generic[T]):
    """``key -> (parsed value, mod revision)`` for every key under ``prefix``;
    ``parse`` raises ``ValueError`` for values to ignore (logged)."""

    def __init__(
        self, store: CoordinationStore, prefix: str, parse: Callable[[str, str], T | None]
    ) -> None:
        self._store = store
        self.prefix = prefix
        self._parse = parse
        self._items: dict[str, tuple[T, int]] = {}
        self._revision: int | None = None  # the feed has delivered everything up to here
        # Deletes learnt out of band, newer than the feed: key -> revision.
        self._tombs: dict[str, int] = {}
        self._tomb_heap: list[tuple[int, str]] = []
        self._lock = threading.RLock()
        self._feed_lock = threading.Lock()  # one on-demand catch-up at a time
        self._following = threading.Event()
        self._compacted = False  # the stream's history is gone: re-read first
        self._restart = threading.Event()  # after a barrier: a fresh stream

    @property
    def loaded(self) -> bool:
        return self._revision is not None

    @property
    def revision(self) -> int:
        return self._revision or 0

    @property
    def following(self) -> bool:
        return self._following.is_set()

    def items(self) -> dict[str, tuple[T, int]]:
        with self._lock:
            return dict(self._items)

    def values(self) -> list[T]:
        with self._lock:
            return [value for value, _ in self._items.values()]

    def __len__(self) -> int:
        return len(self._items)

    # --- applying what the store says ---------------------------------------------------

    def refresh(self) -> None:
        """Re-read the whole prefix (first load, or after a compacted feed)."""
        kvs, revision = self._store.range(self.prefix)
        self._apply([Change(kv.mod_revision, kv.key, "put", kv.value) for kv in kvs])
        seen = {kv.key for kv in kvs}
        with self._lock:
            for key in [k for k in self._items if k not in seen]:
                self._set(key, None, revision)
            self._revision = max(self._revision or 0, revision)
            self._prune()

    def catch_up(self, timeout_s: float = 0.0) -> None:
        """Apply what changed since the last look (waiting up to
        ``timeout_s``). A no-op while ``follow`` keeps the view current."""
        if self._following.is_set():
            return
        with self._feed_lock:
            if self._revision is None:
                self.refresh()
                return
            try:
                changes = self._store.changes(self.prefix, self._revision, timeout_s)
            except WatchCompacted:
                self.refresh()
                return
            self._apply(changes)

    def sync(self, rounds: int = 100) -> bool:
        """A barrier, following or not: read what changed in the store since
        this view's revision and apply it, until the store has nothing newer
        (or after ``rounds`` reads, under a prefix that never rests); the
        follower then opens a fresh stream from there (its own may be
        stuck). True if anything newer was found. Bounded by the caller's
        deadline (``StoreUnavailable``); ``StoreError`` if the store does
        not answer."""
        found = False
        try:
            for _ in range(rounds):
                before = self._revision
                if before is None:
                    self.refresh()
                    return True
                try:
                    changes = self._store.changes(self.prefix, before, 0.0)
                except WatchCompacted:
                    self.refresh()  # a whole read: current as of now
                    return True
                newer = [c for c in changes if c.revision > before]
                if not newer:
                    return found
                self._apply(newer)
                found = True
            return found
        finally:
            self._restart.set()

    def _apply(self, changes: Sequence[Change]) -> None:
        """In chunks: values are parsed outside the lock, and between chunks
        the lock and the GIL are let go, so that an acquisition never waits
        for a whole burst of changes (thousands after a refill) to apply."""
        for start in range(0, len(changes), APPLY_CHUNK):
            if start:
                time.sleep(0)  # let a waiting thread run
            chunk = changes[start : start + APPLY_CHUNK]
            parsed = [
                self._safe_parse(c.key, c.value)
                if c.kind == "put" and c.value is not None
                else None
                for c in chunk
            ]
            with self._lock:
                last = self._revision or 0
                for change, value in zip(chunk, parsed, strict=True):
                    self._set(change.key, value, change.revision)
                    last = max(last, change.revision)
                # Every change up to `last` is in: a revision's changes may
                # straddle chunks, which is fine, as no later change can be
                # older than what the feed has already delivered.
                if self._revision is not None or start + APPLY_CHUNK >= len(changes):
                    self._revision = last
                self._prune()

    def observe(self, key: str, kv: KeyValue | None, revision: int) -> None:
        """What a transaction's reply said of ``key`` at ``revision`` (``kv``
        ``None``: absent), ahead of the feed."""
        parsed = self._safe_parse(key, kv.value) if kv is not None else None
        with self._lock:
            if kv is None:
                if self._set(key, None, revision) and revision > self.revision:
                    self._tombs[key] = revision
                    heapq.heappush(self._tomb_heap, (revision, key))
            else:
                self._set(key, parsed, kv.mod_revision)

    def _set(self, key: str, parsed: T | None, revision: int) -> bool:
        """Apply one key's state at ``revision`` (``None``: absent, or not
        parseable) unless something newer is known; True if applied."""
        current = self._items.get(key)
        if revision <= (current[1] if current else self._tombs.get(key, 0)):
            return False
        if parsed is None:
            if current is not None:
                del self._items[key]
                self._changed(key, current[0], None)
            return True
        self._items[key] = (parsed, revision)
        self._changed(key, current[0] if current else None, parsed)
        return True

    def _prune(self) -> None:
        """Out-of-band deletes the feed has caught up with are its own now."""
        while self._tomb_heap and self._tomb_heap[0][0] <= self.revision:
            revision, key = heapq.heappop(self._tomb_heap)
            if self._tombs.get(key) == revision:
                del self._tombs[key]

    def _changed(self, key: str, old: T | None, new: T | None) -> None:
        """Hook for subclasses' indexes (under the view's lock)."""

    def _safe_parse(self, key: str, value: str) -> T | None:
        try:
            return self._parse(key, value)
        except ValueError as exc:
            log.warning("ignoring malformed value at %s: %s", key, exc)
            return None

    # --- following ---------------------------------------------------------------------

    def pump(self, stream: ChangeStream | None, timeout_s: float) -> ChangeStream | None:
        """One step of ``follow``: apply what ``stream`` delivers within
        ``timeout_s`` (opening it first when ``None``). Returns the stream
        to go on with: ``None`` after a compacted history, when the view has
        re-read the prefix and a new stream must start from there."""
        if self._revision is None or self._compacted:
            self.refresh()  # may raise StoreError: the next pump tries again
            self._compacted = False
        if stream is None:
            stream = self._store.watch(self.prefix, self.revision)
        try:
            self._apply(stream.get(timeout_s))
        except WatchCompacted:
            log.info("view of %s: history compacted, re-reading", self.prefix)
            stream.close()
            self._compacted = True
            self.refresh()
            self._compacted = False
            return None
        return stream

    def follow(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        """Keep the view current from one long-lived change stream until
        ``stop`` is set (run it in a background thread)."""
        stream: ChangeStream | None = None
        self._following.set()
        try:
            while not stop.is_set():
                if self._restart.is_set():
                    self._restart.clear()
                    if stream is not None:
                        stream.close()
                        stream = None  # reopened from the view's revision
                try:
                    stream = self.pump(stream, poll_s)
                except StoreError as exc:  # the stream reconnects by itself
                    log.warning("view of %s: %s", self.prefix, exc)
                    if self._compacted and stream is not None:
                        stream.close()  # finished: a new one after the re-read
                        stream = None
                    stop.wait(poll_s)
        finally:
            self._following.clear()
            if stream is not None:
                stream.close()
