"""Leader election on a TTL'd lock, with a fencing token (DESIGN.md §5).

The lock is the key ``<prefix>/leader``, created only if absent and bound to
a session with a TTL. Its create revision is the fencing token: every leader
write goes through ``FencedWriter``, a transaction that also compares the
leader key's create revision with the token. A leader whose session expired
(process paused, network cut) finds its key gone or recreated by someone
else, so its late writes fail instead of landing.

Leadership is held inside ``LeaderElection.lead()``: a renewer thread extends
the session every ``ttl_s / 3``; if renewal fails past the TTL, or a fenced
write is rejected, ``Leadership.lost`` is set and the work must stop issuing
new operations at once. Leaving the block releases the lock.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from warmcache.errors import LeadershipLost, SessionExpired, StoreError
from warmcache.ports import Clock, Compare, CoordinationStore, Delete, Op, Put, TxnResult

log = logging.getLogger(__name__)


def watch_poll_s(ttl_s: float) -> float:
    """How often a standby re-checks the lock when the change feed is quiet:
    a quarter TTL, at most a second (SQLite notices expiry only when read)."""
    return min(1.0, ttl_s / 4)


@dataclass
class Leadership:
    node: str
    session: str
    token: int
    since: float
    lost: threading.Event = field(default_factory=threading.Event)
    on_lost: Callable[[Leadership, str], None] | None = None
    lost_reason: str = ""

    def mark_lost(self, reason: str) -> None:
        """Signal loss once: work must stop issuing operations now."""
        if self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        if self.on_lost:
            self.on_lost(self, reason)


class FencedWriter:
    """Writes that land only while ``leadership`` still holds the lock."""

    def __init__(self, store: CoordinationStore, leader_key: str, leadership: Leadership) -> None:
        self._store = store
        self._leader_key = leader_key
        self.leadership = leadership

    def txn(self, compares: Sequence[Compare], success: Sequence[Op]) -> TxnResult:
        """Apply ``success`` if ``compares`` hold *and* we still lead.

        Raises ``LeadershipLost`` (and sets ``lost``) when the fence fails;
        returns an unsucceeded result when only the caller's compares failed.
        """
        if self.leadership.lost.is_set():
            raise LeadershipLost(self._leader_key, self.leadership.token)
        fence = Compare.create_revision(self._leader_key, self.leadership.token)
        result = self._store.txn([fence, *compares], success)
        if not result.succeeded:
            holder = result.current.get(self._leader_key)
            if holder is None or holder.create_revision != self.leadership.token:
                self.leadership.mark_lost("a fenced write was rejected")
                raise LeadershipLost(self._leader_key, self.leadership.token)
        return result

    def put(self, key: str, value: str) -> TxnResult:
        return self.txn([], [Put(key, value)])

    def delete(self, key: str) -> TxnResult:
        return self.txn([], [Delete(key)])


class LeaderElection:
    def __init__(
        self,
        store: CoordinationStore,
        key: str,
        node: str,
        *,
        ttl_s: float,
        clock: Clock,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._store = store
        self.key = key
        self._node = node
        self._ttl_s = ttl_s
        self._clock = clock

    def try_acquire(self) -> Leadership | None:
        """Take the lock if it is free; ``None`` if another node holds it."""
        session = self._store.create_session(self._ttl_s, self._node)
        since = self._clock.now()
        value = json.dumps({"node": self._node, "since": since, "session": session})
        try:
            result = self._store.txn([Compare.absent(self.key)], [Put(self.key, value, session)])
        except BaseException:
            self._store.destroy_session(session)
            raise
        if not result.succeeded:
            self._store.destroy_session(session)
            return None
        kv = self._store.get(self.key)
        if kv is None or kv.session != session:
            # Our session expired between the txn and this read: not leader.
            self._store.destroy_session(session)
            return None
        return Leadership(self._node, session, kv.create_revision, since)

    def release(self, leadership: Leadership) -> None:
        """Give the lock up (only if it is still ours) and end the session."""
        try:
            self._store.txn(
                [Compare.create_revision(self.key, leadership.token)], [Delete(self.key)]
            )
        finally:
            self._store.destroy_session(leadership.session)

    def holder(self) -> dict[str, Any] | None:
        kv = self._store.get(self.key)
        if kv is None:
            return None
        stored = json.loads(kv.value)
        # The session id stays internal: it is a capability over the lock.
        return {"node": stored["node"], "since": stored["since"], "token": kv.create_revision}

    def wait_for_vacancy(self, stop: threading.Event, poll_s: float = 1.0) -> int | None:
        """Block until the lock is free (returns at once if it is), following
        the store's change feed; returns the token of the holder that went
        away (``None`` if it was already free), or ``None`` when ``stop`` is set.
        """
        kv = self._store.get(self.key)
        if kv is None:
            return None
        token, revision = kv.create_revision, kv.mod_revision
        while not stop.is_set():
            try:
                changes = self._store.changes(self.key, revision, timeout_s=poll_s)
            except StoreError as exc:  # compacted or unreachable: re-read
                log.debug("leader watch: %s", exc)
                current = self._store.get(self.key)
                if current is None:
                    return token
                token, revision = current.create_revision, current.mod_revision
                stop.wait(poll_s)
                continue
            for change in changes:
                revision = change.revision
                if change.key != self.key:
                    continue
                if change.kind == "delete":
                    return token
                token = change.revision  # a new holder put the key
        return None

    def writer(self, leadership: Leadership) -> FencedWriter:
        return FencedWriter(self._store, self.key, leadership)

    @contextmanager
    def lead(
        self, on_lost: Callable[[Leadership, str], None] | None = None
    ) -> Iterator[Leadership | None]:
        """Hold leadership for the block (renewed in the background), or yield
        ``None`` if another node leads. ``on_lost`` is called once, from the
        thread that noticed, the moment leadership is found lost."""
        leadership = self.try_acquire()
        if leadership is None:
            yield None
            return
        leadership.on_lost = on_lost
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(leadership, stop), name="leader-renew", daemon=True
        )
        renewer.start()
        try:
            yield leadership
        finally:
            stop.set()
            renewer.join()
            try:
                self.release(leadership)
            except StoreError:
                log.exception("could not release leadership; it expires with its TTL")

    def _renew(self, leadership: Leadership, stop: threading.Event) -> None:
        interval = self._ttl_s / 3
        last_ok = self._clock.now()
        while not self._clock.wait(stop, interval):
            try:
                self._store.renew_session(leadership.session)
                last_ok = self._clock.now()
            except StoreError as exc:
                # SessionExpired is final; other store errors are retried until
                # the TTL would have run out anyway.
                expired = isinstance(exc, SessionExpired)
                if expired or self._clock.now() - last_ok >= self._ttl_s:
                    log.warning("leadership lost: %s", exc)
                    leadership.mark_lost(f"renewal failed: {exc}")
                    return
