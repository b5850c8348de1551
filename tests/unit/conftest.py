from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import FakeAgent, fleet
from warmcache.adapters.file_catalog import FileFlavorCatalog
from warmcache.adapters.sqlite_events import SqliteEvents
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import ManualClock
from warmcache.config import ServiceConfig
from warmcache.service import WarmCache

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


@pytest.fixture
def agents() -> dict[str, FakeAgent]:
    return fleet(("az1", "az2"))


@pytest.fixture
def service(tmp_path: Path, sqlite_store: SqliteStore, clock: ManualClock,
            agents: dict[str, FakeAgent]) -> Iterator[WarmCache]:
    events = SqliteEvents(tmp_path / "events.db")
    svc = WarmCache(
        config=ServiceConfig(node="wc-test", prefix="wc", build_concurrency=4),
        store=sqlite_store, catalog=FileFlavorCatalog(CONFIG_DIR / "flavors.toml"),
        events=events, agents=agents, clock=clock, rng=random.Random(7),
    )
    yield svc
    svc.stop()
    events.close()
