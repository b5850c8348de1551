"""The coordination stores by ``kind``: each factory imports its driver
itself, so a driver is needed only when its store is chosen. The service's
composition root (``warmcache.bootstrap``) and the agent's heartbeat store
both pick from here; neither loads the other."""

from __future__ import annotations

from collections.abc import Callable

from warmcache.config import StoreConfig
from warmcache.ports import Clock, CoordinationStore


def _sqlite_store(cfg: StoreConfig, clock: Clock) -> CoordinationStore:
    from warmcache.adapters.sqlite_store import SqliteStore

    return SqliteStore(cfg.path, clock=clock)


def _etcd_store(cfg: StoreConfig, clock: Clock) -> CoordinationStore:
    from warmcache.adapters.etcd_store import EtcdSecurity, EtcdStore

    security = EtcdSecurity(
        ca=cfg.ca,
        cert=cfg.cert,
        key=cfg.key,
        username=cfg.username,
        password=cfg.password.get_secret_value(),
    )
    return EtcdStore(
        cfg.url or "http://127.0.0.1:2379", max_txn_ops=cfg.max_txn_ops, security=security
    )


def _consul_store(cfg: StoreConfig, clock: Clock) -> CoordinationStore:
    import os

    from warmcache.adapters.consul_store import ConsulStore

    # py-consul's own convention: CONSUL_HTTP_ADDR / CONSUL_HTTP_TOKEN.
    url = cfg.url or os.environ.get("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500")
    if "://" not in url:
        url = f"http://{url}"
    token = cfg.token.get_secret_value() or os.environ.get("CONSUL_HTTP_TOKEN", "")
    return ConsulStore(url, token=token, ca=cfg.ca, cert=cfg.cert, key=cfg.key)


# kind -> factory of (section config, clock)
STORES: dict[str, Callable[[StoreConfig, Clock], CoordinationStore]] = {
    "sqlite": _sqlite_store,
    "etcd": _etcd_store,
    "consul": _consul_store,
}
