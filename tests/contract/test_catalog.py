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
from warmcache.errors import ConfigError, ImageInUse, InvalidRequest, StoreError
from warmcache.images import BootFiles, Image, ImageFile
from warmcache.model import Flavor

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
IMG = Image(
    id="img-1",
    source="https://images.example.com/img-1.qcow2",
    sha256="a" * 64,
    format="qcow2",
    size_bytes=3 << 20,
    min_disk_gib=1,
)
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
    cat.put_image(IMG.model_copy(update={"id": "demo-blank"}))
    for flavor in ("small", "medium", "large"):
        cat.put(Flavor(name=flavor, vcpus=2, memory_mib=2048, disk_gib=20, image_id="demo-blank"))
    yield cat
    cat._client.drop_database(cat._flavors.database.name)
    cat.close()


def test_put_get_list_replace(catalog: Any) -> None:
    assert catalog.get("nope") is None
    catalog.put_image(IMG)
    catalog.put(TINY)
    assert catalog.get("tiny") == TINY
    assert [f.name for f in catalog.list()] == sorted(f.name for f in catalog.list())
    catalog.put(TINY.model_copy(update={"memory_mib": 256}))
    assert catalog.get("tiny").memory_mib == 256
    assert sum(1 for f in catalog.list() if f.name == "tiny") == 1


def test_images_put_get_list_replace(catalog: Any) -> None:
    assert catalog.image("img-1") is None
    booted = IMG.model_copy(
        update={
            "boot": BootFiles(
                kernel=ImageFile(source="/srv/images/vmlinuz", sha256="b" * 64, size_bytes=9),
                initrd=None,
                cmdline="console=ttyS0 root=/dev/vda",
            )
        }
    )
    assert catalog.put_image(booted) == booted
    assert catalog.image("img-1") == booted
    assert "img-1" in [i.id for i in catalog.images()]
    v2 = IMG.model_copy(update={"sha256": "c" * 64})
    catalog.put_image(v2)  # the id now names other bytes
    assert catalog.image("img-1") == v2
    assert sum(1 for i in catalog.images() if i.id == "img-1") == 1


def test_a_flavor_must_name_a_known_image_with_room_for_it(catalog: Any) -> None:
    before = (catalog.list(), catalog.images())
    with pytest.raises(InvalidRequest, match="consistent") as err:
        catalog.put(TINY.model_copy(update={"image_id": "nope"}))
    assert "unknown image 'nope'" in err.value.errors[0]["msg"]
    catalog.put_image(IMG.model_copy(update={"min_disk_gib": 4}))
    with pytest.raises(InvalidRequest) as err:
        catalog.put(TINY)  # 1 GiB root, the image wants 4
    assert "min_disk_gib 4" in err.value.errors[0]["msg"]
    assert catalog.get("tiny") is None
    catalog.put(TINY.model_copy(update={"disk_gib": 4}))
    with pytest.raises(InvalidRequest):  # would leave tiny's 4 GiB below 8
        catalog.put_image(IMG.model_copy(update={"min_disk_gib": 8}))
    assert catalog.image("img-1").min_disk_gib == 4  # unchanged
    assert catalog.get("small") == before[0][[f.name for f in before[0]].index("small")]


def test_an_image_a_flavor_names_cannot_be_deleted(catalog: Any) -> None:
    catalog.put_image(IMG)
    catalog.put(TINY)
    with pytest.raises(ImageInUse) as err:
        catalog.delete_image("img-1")
    assert err.value.flavors == ["tiny"] and catalog.image("img-1") == IMG
    catalog.put(TINY.model_copy(update={"image_id": ""}))  # a blank root disk now
    assert catalog.delete_image("img-1") is True
    assert catalog.image("img-1") is None and catalog.delete_image("img-1") is False


def test_the_file_catalog_survives_a_reload(tmp_path: Path) -> None:
    from warmcache.adapters.file_catalog import FileFlavorCatalog

    shutil.copy(CONFIG_DIR / "flavors.toml", tmp_path / "flavors.toml")
    (tmp_path / "images").mkdir()
    shutil.copy(CONFIG_DIR / "images" / "demo-blank.raw", tmp_path / "images")
    first = FileFlavorCatalog(tmp_path / "flavors.toml")
    first.put_image(IMG)
    first.put(TINY)
    again = FileFlavorCatalog(tmp_path / "flavors.toml")
    assert again.get("tiny") == TINY and again.get("small") is not None
    assert again.image("img-1") == IMG
    # a relative source is the file's neighbour, written back absolute
    demo = again.image("demo-blank")
    assert demo is not None and demo.source == str(tmp_path / "images" / "demo-blank.raw")
    # two instances sharing the file see each other's changes, and lose none
    again.put_image(IMG.model_copy(update={"id": "img-2"}))
    first.put(TINY.model_copy(update={"name": "tiny2"}))
    assert first.image("img-2") is not None and again.get("tiny2") is not None


def test_a_bad_catalog_file_names_every_problem(tmp_path: Path) -> None:
    from warmcache.adapters.file_catalog import FileFlavorCatalog

    path = tmp_path / "flavors.toml"
    path.write_text(
        '[images.a]\nsource = "http://plain/a.qcow2"\nsha256 = "zz"\nformat = "vmdk"\n'
        "size_bytes = 1\n"
        '[flavors.f]\nvcpus = 2\nmemory_mib = 2048\ndisk_gib = 2\nimage_id = "b"\n'
    )
    with pytest.raises(ConfigError) as err:
        FileFlavorCatalog(path)
    text = "; ".join(err.value.problems)
    for needle in ("image a: source", "image a: sha256", "image a: format", "unknown image 'b'"):
        assert needle in text, text


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
    no_image = ["vcpus=1", "memory_mib=128", "disk_gib=1", "image_id=nope"]
    result = runner.invoke(main, ["flavors", "set", "x", *no_image, "--config", str(config)])
    assert result.exit_code == 1 and "unknown image 'nope'" in result.output
    with pytest.raises(InvalidRequest):
        parse_flavor("x", {"vcpus": "two"})
