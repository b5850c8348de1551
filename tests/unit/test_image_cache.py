"""The agent's image cache with local sources: verified before use, nothing
left by a refusal, bounded by LRU eviction that never touches an image a
VM boots from, and vouched for again after a restart (invariant 9)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from warmcache.images import Image, ImageFile
from warmcache_agent.fetch import FetchFailed
from warmcache_agent.images import ImageCache

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")
MIB = 1 << 20


def raw_image(folder: Path, name: str, size: int = MIB, fill: bytes = b"\0") -> Image:
    """A raw image file of ``size`` bytes and its record."""
    path = folder / name
    path.write_bytes(fill * size)
    return Image(
        id=name.replace(".", "-"),
        source=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        format="raw",
        size_bytes=size,
    )


def cache(
    tmp_path: Path, *, cache_bytes: int = 64 * MIB, in_use: set[str] | None = None
) -> ImageCache:
    return ImageCache(
        tmp_path / "cache",
        cache_bytes=cache_bytes,
        timeout_s=30,
        local_dirs=[tmp_path / "src"],
        in_use=lambda: in_use or set(),
    )


@pytest.fixture
def src(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    return tmp_path / "src"


def leftovers(c: ImageCache) -> list[str]:
    return sorted(p.name for p in c.root.iterdir())


def test_an_image_is_fetched_once_verified_and_kept_read_only(tmp_path: Path, src: Path) -> None:
    c = cache(tmp_path)
    image = raw_image(src, "a.raw")
    got = c.image(image)
    assert got.path == c.root / image.sha256 and got.virtual_bytes == MIB
    assert hashlib.sha256(got.path.read_bytes()).hexdigest() == image.sha256
    assert got.path.stat().st_mode & 0o222 == 0  # nobody writes to a verified image
    assert c.image(image).fetch_s == 0.0 and c.fetches == 1  # the second use is the cache's
    assert c.held() == [image.sha256]


@pytest.mark.parametrize(
    "change,invalid",
    [
        ({"sha256": "0" * 64}, True),  # checksum mismatch
        ({"size_bytes": MIB + 1}, True),  # truncated (shorter than registered)
        ({"size_bytes": MIB - 1}, True),  # longer than registered: cut off, refused
        ({"format": "qcow2"}, True),  # not the registered format
    ],
)
def test_a_wrong_image_is_refused_and_leaves_nothing(
    tmp_path: Path, src: Path, change: dict[str, object], invalid: bool
) -> None:
    c = cache(tmp_path)
    image = raw_image(src, "a.raw").model_copy(update=change)
    with pytest.raises(FetchFailed) as err:
        c.image(image)
    assert err.value.invalid is invalid
    assert leftovers(c) == []  # no partial, no unverified file under any name
    assert c.held() == []


def test_a_qcow2_naming_a_backing_file_is_refused(tmp_path: Path, src: Path) -> None:
    """An image must not make QEMU open another file of the host."""
    secret = src / "secret.raw"
    secret.write_bytes(b"\1" * MIB)
    sneaky = src / "sneaky.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(sneaky)],
        check=True,
    )
    image = Image(
        id="sneaky",
        source=str(sneaky),
        sha256=hashlib.sha256(sneaky.read_bytes()).hexdigest(),
        format="qcow2",
        size_bytes=sneaky.stat().st_size,
    )
    c = cache(tmp_path)
    with pytest.raises(FetchFailed, match="backing file") as err:
        c.image(image)
    assert err.value.invalid and leftovers(c) == []


def test_a_source_that_cannot_be_read_is_unavailable(tmp_path: Path, src: Path) -> None:
    c = cache(tmp_path)
    image = raw_image(src, "a.raw")
    cases = {
        "missing": image.model_copy(update={"source": str(src / "nope.raw")}),
        "outside the allowed folders": image.model_copy(update={"source": str(tmp_path / "x")}),
        "a device": image.model_copy(update={"source": "/dev/zero"}),
    }
    os.mkfifo(src / "pipe")
    cases["a pipe"] = image.model_copy(update={"source": f"file://{src / 'pipe'}"})
    for what, bad in cases.items():
        with pytest.raises(FetchFailed) as err:
            c.image(bad)
        assert not err.value.invalid, what
    assert leftovers(c) == []


def test_images_nobody_boots_are_evicted_least_recently_used_first(
    tmp_path: Path, src: Path
) -> None:
    in_use: set[str] = set()
    c = cache(tmp_path, cache_bytes=int(2.5 * MIB), in_use=in_use)
    a, b, d = (raw_image(src, f"{n}.raw", fill=n.encode()) for n in "abd")
    c.image(a)
    c.image(b)
    os.utime(c.path(a.sha256), (1, 1))  # a: used longest ago
    os.utime(c.path(b.sha256), (2, 2))
    c.image(d)  # 3 MiB > 2.5: the oldest goes
    assert set(c.held()) == {b.sha256, d.sha256}
    in_use.add(b.sha256)  # a VM boots from b now: never evicted
    os.utime(c.path(d.sha256), (3, 3))
    c.image(a)
    assert set(c.held()) == {a.sha256, b.sha256}  # d went, b stayed although older
    in_use.add(a.sha256)
    c.image(d)  # everything in use but d, d just fetched: over the bound, nothing removable
    assert set(c.held()) == {a.sha256, b.sha256, d.sha256}


def test_a_restarted_agent_vouches_for_its_cache_again(tmp_path: Path, src: Path) -> None:
    image = raw_image(src, "a.raw")
    cache(tmp_path).image(image)
    kept = tmp_path / "cache" / image.sha256
    os.chmod(kept, 0o644)
    kept.write_bytes(b"\1" * MIB)  # changed on disk while the agent was down
    again = cache(tmp_path)
    got = again.image(image)  # hashed again, found wrong, fetched again
    assert again.fetches == 1 and hashlib.sha256(got.path.read_bytes()).hexdigest() == image.sha256
    untouched = cache(tmp_path)
    assert untouched.image(image).path == got.path and untouched.fetches == 0


def test_a_partial_download_of_a_killed_agent_is_cleared(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / f".{'a' * 64}.x.part").write_bytes(b"half")
    assert leftovers(cache(tmp_path)) == []


def test_boot_files_are_cached_by_content_too(tmp_path: Path, src: Path) -> None:
    kernel = src / "vmlinuz"
    kernel.write_bytes(b"kernel")
    file = ImageFile(source=str(kernel), sha256=hashlib.sha256(b"kernel").hexdigest(), size_bytes=6)
    c = cache(tmp_path)
    assert c.boot_file(file).path.read_bytes() == b"kernel"
    with pytest.raises(FetchFailed):
        c.boot_file(file.model_copy(update={"sha256": "1" * 64}))
