"""Shared fixtures. Real-server tests skip when their server is missing,
unless ``WARMCACHE_TEST_REQUIRE`` names it (CI), in which case they fail."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import ManualClock


def required(service: str) -> bool:
    names = os.environ.get("WARMCACHE_TEST_REQUIRE", "")
    return service in {n.strip() for n in names.split(",")}


def unavailable(service: str, reason: str) -> NoReturn:
    """Skip (locally) or fail (when required) a test whose server is missing."""
    if required(service):
        pytest.fail(f"{service} is required (WARMCACHE_TEST_REQUIRE) but {reason}")
    pytest.skip(reason)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sqlite_store(tmp_path: Path, clock: ManualClock) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "store.db", clock=clock, poll_interval_s=0.005)
    yield store
    store.close()


@pytest.fixture(scope="session")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real etcd for the session: ``WARMCACHE_TEST_ETCD`` if set, else one
    started here on free loopback ports (and stopped by its PID)."""
    from warmcache.testing.localetcd import EtcdCluster, EtcdUnavailable

    if os.environ.get("WARMCACHE_TEST_ETCD"):
        yield os.environ["WARMCACHE_TEST_ETCD"]
        return
    try:
        cluster = EtcdCluster(tmp_path_factory.mktemp("etcd")).start()
    except EtcdUnavailable as exc:
        unavailable("etcd", f"{exc}; or set WARMCACHE_TEST_ETCD=http://127.0.0.1:2379")
    try:
        yield cluster.urls[0]
    finally:
        cluster.stop()


@pytest.fixture
def libvirt_available() -> None:
    try:
        import libvirt  # noqa: F401
    except ImportError:
        unavailable("libvirt", "libvirt-python is not installed (pip install '.[libvirt]')")
