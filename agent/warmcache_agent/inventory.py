"""Inventory: the agent's heartbeat with its host facts into the store.

The facts (rack, hypervisor id, capacity left, VMs, the endpoint the
service should call) are put at ``<prefix>/hosts/<az>/<hypervisor>`` bound
to a session with a TTL, renewed every TTL / 3 and re-published at once
when they change (a VM created or deleted). If the agent dies, the session
expires and the key goes with it: the host leaves placement within one TTL.

An agent restarting into a new build hands its session over to its next
self (``handover``, ``adopt``) rather than ending it: the host's key stays
put across the restart instead of leaving placement and coming back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from warmcache.errors import SessionExpired, StoreError
from warmcache.layout import Keys
from warmcache.model import HostFacts
from warmcache.ports import CoordinationStore

log = logging.getLogger(__name__)


class InventoryPublisher:
    def __init__(
        self,
        store: CoordinationStore,
        prefix: str,
        facts: Callable[[], HostFacts],
        ttl_s: float,
        now: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._store = store
        self._keys = Keys(prefix)
        self._facts = facts
        self._ttl_s = ttl_s
        self._now = now
        self._dirty = threading.Event()
        self._session: str | None = None
        self.on_published: Callable[[], None] = lambda: None

    def adopt(self, session: str) -> None:
        """Publish under ``session`` (handed over by the previous agent
        process); a session that expired meanwhile is replaced at once."""
        self._session = session
        self._dirty.set()

    def changed(self) -> None:
        """The facts changed: publish them now rather than at the next beat."""
        self._dirty.set()

    def beat(self) -> None:
        """One heartbeat: renew the session, or (re)publish when the facts
        changed or the session was lost (then with a new session)."""
        if self._session is not None and not self._dirty.is_set():
            try:
                self._store.renew_session(self._session)
                return
            except SessionExpired:
                log.warning("inventory session expired; publishing again")
                self._session = None
        if self._session is None:
            self._session = self._store.create_session(self._ttl_s, "agent")
        try:
            self._publish()
        except SessionExpired:  # (an adopted one that expired): a new one at once
            self._session = self._store.create_session(self._ttl_s, "agent")
            self._publish()

    def _publish(self) -> None:
        self._dirty.clear()
        facts = self._facts().model_copy(update={"published_at": self._now(), "ttl_s": self._ttl_s})
        key = self._keys.host(facts.az, facts.hypervisor)
        assert self._session is not None
        try:
            self._store.put(key, facts.model_dump_json(), session=self._session)
        except StoreError:
            self._dirty.set()  # not published: the next beat tries again
            raise
        self.on_published()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.beat()
            except StoreError as exc:
                log.warning("inventory heartbeat failed: %s", exc)
            self._dirty.wait(self._ttl_s / 3)
            if stop.is_set():
                break

    def handover(self) -> str | None:
        """Restarting: the session for the next process to ``adopt`` (the
        host's key stays while its TTL runs)."""
        session, self._session = self._session, None
        return session

    def withdraw(self) -> None:
        """Graceful stop: end the session, which removes the host at once."""
        if self._session is not None:
            try:
                self._store.destroy_session(self._session)
            except StoreError as exc:
                log.warning("could not withdraw inventory: %s", exc)
            self._session = None
