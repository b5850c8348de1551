"""Each instance's entry in the store's service registry (``SERVICE_NAME``),
renewed at half its TTL, withdrawn on stop: how clients and the
quickstart find the instances that are up."""

from __future__ import annotations

import logging

from warmcache import deadline
from warmcache.config import ServiceConfig
from warmcache.errors import WarmCacheError
from warmcache.model import SERVICE_NAME
from warmcache.ports import CoordinationStore

log = logging.getLogger(__name__)

WITHDRAW_DEADLINE_S = 2.0


class ServiceRegistration:
    def __init__(self, store: CoordinationStore, config: ServiceConfig) -> None:
        self._store = store
        self._config = config
        self.interval_s = config.service_ttl_s / 2
        # after a failed registration: soon, well within the entry's TTL
        self.retry_s = min(self.interval_s, 5.0)

    def beat(self) -> float:
        cfg = self._config
        self._store.register_service(
            SERVICE_NAME, cfg.node, f"http://{cfg.listen_host}:{cfg.listen_port}", cfg.service_ttl_s
        )
        return self.interval_s

    def withdraw(self) -> None:
        """A stopping instance does not wait on a dead store: its entry
        expires with its TTL anyway."""
        try:
            with deadline.within(WITHDRAW_DEADLINE_S):
                self._store.deregister_service(SERVICE_NAME, self._config.node)
        except WarmCacheError:
            log.warning("could not deregister %s", self._config.node)
