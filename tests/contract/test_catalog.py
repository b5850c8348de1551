"""Contract suite of the flavor-catalog port: the file catalog always, MongoDB
when WARMCACHE_TEST_MONGODB is set."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import unavailable
from warmcache.errors import InvalidRequest, StoreError
from warmcache.model import Flavor

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
TINY = Flavor(name="tiny", vcpus=1, memory_mib=128, disk_gib=1, image_id="img-1")


@pytest.fixture(params=["file", pytest.param("mongodb", marks=pytest.mark.mongodb)])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "file":
        from warmcache.adapters.file_catalog import FileFlavorCatalog

        shutil.copy(CONFIG_DIR / "flavors.toml", tmp_path / "flavors.toml")
        yield FileFlavorCatalog(tmp_path / "flavors.toml")
        return
    url = os.environ.get("WARMCACHE_TEST_MONGODB")
    if not url:
        unavailable("mongodb", "no MongoDB: set WARMCACHE_TEST_MONGODB=mongodb://127.0.0.1:27017")
    from warmcache.adapters.mongo_catalog import MongoFlavorCatalog

    cat = MongoFlavorCatalog(url, database=f"warmcache_test_{uuid.uuid4().hex[:8]}")
    for flavor in ("small", "medium", "large"):
        cat.put(Flavor(name=flavor, vcpus=2, memory_mib=2048, disk_gib=20))
    yield cat
    cat._client.drop_database(cat._flavors.database.name)
    cat.close()


def test_put_get_list_replace(catalog: Any) -> None:
    assert catalog.get("nope") is None
    catalog.put(TINY)
    assert catalog.get("tiny") == TINY
    assert [f.name for f in catalog.list()] == sorted(f.name for f in catalog.list())
    catalog.put(TINY.model_copy(update={"memory_mib": 256}))
    assert catalog.get("tiny").memory_mib == 256
    assert sum(1 for f in catalog.list() if f.name == "tiny") == 1


def test_the_file_catalog_survives_a_reload(tmp_path: Path) -> None:
    from warmcache.adapters.file_catalog import FileFlavorCatalog

    shutil.copy(CONFIG_DIR / "flavors.toml", tmp_path / "flavors.toml")
    FileFlavorCatalog(tmp_path / "flavors.toml").put(TINY)
    again = FileFlavorCatalog(tmp_path / "flavors.toml")
    assert again.get("tiny") == TINY and again.get("small") is not None


def test_an_unreachable_mongodb_is_a_store_error() -> None:
    pytest.importorskip("pymongo")
    from warmcache.adapters.mongo_catalog import MongoFlavorCatalog

    with pytest.raises(StoreError):
        MongoFlavorCatalog("mongodb://127.0.0.1:1/", timeout_ms=200)


def test_flavors_cli(tmp_path: Path) -> None:
    from warmcache.adapters.mongo_catalog import parse_flavor
    from warmcache.cli import main

    shutil.copy(CONFIG_DIR / "flavors.toml", tmp_path / "flavors.toml")
    config = tmp_path / "service.toml"
    config.write_text('[catalog]\nkind = "file"\npath = "flavors.toml"\n')
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "flavors",
            "set",
            "tiny",
            "vcpus=1",
            "memory_mib=128",
            "disk_gib=1",
            "--config",
            str(config),
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["flavors", "list", "--config", str(config)])
    assert result.exit_code == 0 and "tiny" in result.output
    result = runner.invoke(main, ["flavors", "set", "bad", "vcpus=0", "--config", str(config)])
    assert result.exit_code == 1 and "vcpus" in result.output
    with pytest.raises(InvalidRequest):
        parse_flavor("x", {"vcpus": "two"})
