from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeAgent, fleet
from warmcache.adapters.file_catalog import FileFlavorCatalog
from warmcache.adapters.log_alerts import LogAlerts
from warmcache.adapters.sqlite_events import SqliteEvents
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.clock import ManualClock
from warmcache.config import DemandConfig, QuotaLimit, ServiceConfig
from warmcache.service import WarmCache

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


@pytest.fixture
def agents(sqlite_store: SqliteStore) -> dict[str, FakeAgent]:
    fakes = fleet(("az1", "az2"))
    for agent in fakes.values():
        agent.attach(sqlite_store, "wc")
    return fakes


@pytest.fixture
def make_service(
    tmp_path: Path, sqlite_store: SqliteStore, clock: ManualClock, agents: dict[str, FakeAgent]
) -> Iterator[Callable[..., WarmCache]]:
    made: list[WarmCache] = []
    events = SqliteEvents(tmp_path / "events.db")

    def make(
        alerts: Any = None,
        demand: DemandConfig | None = None,
        quotas: tuple[QuotaLimit, ...] = (),
        catalog: Any = None,
        schedules: tuple[Any, ...] = (),
        **config: Any,
    ) -> WarmCache:
        settings = {"node": "wc-test", "prefix": "wc", "build_concurrency": 4, **config}
        svc = WarmCache(
            config=ServiceConfig(**settings),
            store=sqlite_store,
            alerts=alerts or LogAlerts(),
            catalog=catalog or FileFlavorCatalog(CONFIG_DIR / "flavors.toml"),
            events=events,
            agent_for=agents.__getitem__,
            clock=clock,
            rng=random.Random(7),
            demand=demand,
            quotas=quotas,
            schedules=schedules,
        )
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.stop()
    events.close()


@pytest.fixture
def own_catalog(tmp_path: Path) -> FileFlavorCatalog:
    """A copy of the example catalog (and its image) that a test may change."""
    import shutil

    shutil.copy(CONFIG_DIR / "flavors.toml", tmp_path / "flavors.toml")
    shutil.copytree(CONFIG_DIR / "images", tmp_path / "images")
    return FileFlavorCatalog(tmp_path / "flavors.toml")


@pytest.fixture
def service(make_service: Callable[..., WarmCache]) -> WarmCache:
    return make_service()
