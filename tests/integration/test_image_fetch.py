"""The image cache against a real HTTPS image server: one download however
many creates want the image at once, a slow server cut off at the fetch
deadline, an unknown server certificate refused, HTTP errors typed."""

from __future__ import annotations

import hashlib
import shutil
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.imageserver import ImageServer
from warmcache.images import Image
from warmcache.testing.polling import wait_for
from warmcache_agent.fetch import FetchFailed
from warmcache_agent.images import Cached, ImageCache

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing"),
]
MIB = 1 << 20


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ImageServer]:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "a.raw").write_bytes(b"\0" * MIB)
    with ImageServer(tmp_path / "www", tmp_path) as srv:
        yield srv


def record(server: ImageServer, name: str = "a.raw") -> Image:
    data = (server.root / name).read_bytes()
    return Image(
        id="a",
        source=server.url(name),
        sha256=hashlib.sha256(data).hexdigest(),
        format="raw",
        size_bytes=len(data),
    )


def cache(tmp_path: Path, server: ImageServer, timeout_s: float = 30) -> ImageCache:
    return ImageCache(
        tmp_path / "cache",
        cache_bytes=64 * MIB,
        timeout_s=timeout_s,
        local_dirs=[],
        verify=ssl.create_default_context(cafile=str(server.ca.cert)),
    )


def test_concurrent_creates_wait_for_one_download(tmp_path: Path, server: ImageServer) -> None:
    c = cache(tmp_path, server)
    image = record(server)
    server.gate.clear()  # hold the download until every caller is waiting for it
    got: list[Cached] = []
    threads = [threading.Thread(target=lambda: got.append(c.image(image))) for _ in range(8)]
    for t in threads:
        t.start()
    wait_for("7 callers to wait on the 1 download", lambda: c.waiting == 7, 10)
    wait_for("the download to reach the server", lambda: server.waiting == 1, 10)
    server.gate.set()
    for t in threads:
        t.join()
    assert server.gets["a.raw"] == 1 and c.fetches == 1
    assert {g.path for g in got} == {c.path(image.sha256)} and len(got) == 8


def test_a_failed_download_fails_every_waiter_and_is_tried_again_later(
    tmp_path: Path, server: ImageServer
) -> None:
    c = cache(tmp_path, server)
    bad = record(server).model_copy(update={"sha256": "0" * 64})
    server.gate.clear()
    errors: list[FetchFailed] = []

    def fetch() -> None:
        try:
            c.image(bad)
        except FetchFailed as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for("3 callers to wait", lambda: c.waiting == 3, 10)
    server.gate.set()
    for t in threads:
        t.join()
    assert len(errors) == 4 and all(e.invalid for e in errors)
    assert server.gets["a.raw"] == 1 and list(c.root.iterdir()) == []
    with pytest.raises(FetchFailed):
        c.image(bad)
    assert server.gets["a.raw"] == 2  # a failure is not cached


def test_a_trickling_server_is_cut_off_at_the_deadline(tmp_path: Path, server: ImageServer) -> None:
    server.trickle_s = 0.01  # 1 KiB per 10 ms: 10 s for the image
    c = cache(tmp_path, server, timeout_s=0.5)
    with pytest.raises(FetchFailed, match="within") as err:
        c.image(record(server))
    assert not err.value.invalid and list(c.root.iterdir()) == []


def test_an_unknown_server_certificate_or_a_missing_file_is_unavailable(
    tmp_path: Path, server: ImageServer
) -> None:
    strict = ImageCache(
        tmp_path / "cache", cache_bytes=MIB, timeout_s=5, local_dirs=[], verify=True
    )
    with pytest.raises(FetchFailed) as err:  # the system CAs do not know the test CA
        strict.image(record(server))
    assert not err.value.invalid
    with pytest.raises(FetchFailed, match="HTTP 404") as err:
        cache(tmp_path, server).image(record(server).model_copy(update={"source": server.url("x")}))
    assert not err.value.invalid
    with pytest.raises(FetchFailed, match="only paths"):
        cache(tmp_path, server).image(
            record(server).model_copy(update={"source": server.url("a.raw").replace("s:", ":")})
        )
