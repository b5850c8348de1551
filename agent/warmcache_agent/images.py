"""The host's image cache (DESIGN §10, invariant 9): every image a VM of
this host boots from, kept once, by content.

* **Content-addressed.** A file is kept at ``<cache>/<sha256>``: its name is
  its checksum, so two catalog ids of the same bytes share one file, and an
  id pointed at new bytes is another file.
* **Verified before use.** A file enters the cache only through
  ``warmcache_agent.fetch`` (sha256 and exact size checked, then, for disk
  images, ``qemu-img info``: the format must be the registered one and a
  qcow2 may name no backing or data file, so an image cannot make QEMU
  open another file of the host). A file found in the cache at start (a
  restarted agent) is hashed again before this process first uses it, and
  files are kept read-only.
* **Single flight.** Concurrent creates needing one image wait for one
  download; if it fails, each of them gets the same typed failure.
* **Bounded.** Beyond ``cache_bytes``, images no VM uses are evicted, least
  recently used first (the file's mtime is its last use, so the order
  survives a restart). An image a VM of this host boots from (``in_use``:
  its overlay's backing file, or its kernel) is never evicted, so the cache
  may exceed its bound while VMs need more than it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from warmcache.images import MAX_IMAGE_BYTES, Image, ImageFile
from warmcache.ports import KernelBoot
from warmcache_agent.fetch import FetchFailed, fetch_verified, sha256_of

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    error: FetchFailed | None = None


@dataclass(frozen=True)
class Cached:
    path: Path
    fetch_s: float  # time spent fetching for this call (0: it was cached)
    virtual_bytes: int = 0  # a disk image's virtual size (qemu-img), 0 for boot files


@dataclass(frozen=True)
class VmImage:
    """What a VM boots, from the cache: its root disk's base and, for an
    image with a ``boot`` block, the kernel boot."""

    base: Cached
    boot: KernelBoot | None
    fetch_s: float  # spent fetching all of it for this call


def boot_files(image: Image | None) -> list[tuple[str, int]]:
    """(sha256, size) of every cached file a VM of ``image`` boots from."""
    if image is None:
        return []
    files = [(image.sha256, image.size_bytes)]
    if image.boot is not None:
        for file in (image.boot.kernel, image.boot.initrd):
            if file is not None:
                files.append((file.sha256, file.size_bytes))
    return files


class ImageCache:
    def __init__(
        self,
        root: Path,
        *,
        cache_bytes: int,
        timeout_s: float,
        local_dirs: Sequence[Path] | None,
        verify: ssl.SSLContext | bool = True,
        in_use: Callable[[], Iterable[str]] = lambda: (),
        max_bytes: int = MAX_IMAGE_BYTES,
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache_bytes = cache_bytes
        self._timeout_s = timeout_s
        self._local_dirs = local_dirs
        self._verify = verify
        self._in_use = in_use
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._verified: dict[str, int] = {}  # sha256 -> virtual size (0: not a disk image)
        self.fetches = 0  # downloads started by this process (tests, benchmarks)
        self.waiting = 0  # callers waiting for another's download of their image now
        for stale in self.root.glob(".*.part"):  # a download a killed agent left
            stale.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def held(self) -> list[str]:
        """The sha256 of every image in the cache."""
        return sorted(p.name for p in self.root.iterdir() if _SHA256.fullmatch(p.name))

    def size(self) -> int:
        return sum(self._size(sha) for sha in self.held())

    def _size(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return 0

    # --- getting one -----------------------------------------------------------------

    def image(self, image: Image) -> Cached:
        """The disk image, verified, with its virtual size."""
        fmt = image.format
        return self._get(image.sha256, image.source, image.size_bytes, lambda p: _disk_info(p, fmt))

    def for_vm(self, image: Image) -> VmImage:
        """The image and its boot files, each fetched once and verified."""
        base = self.image(image)
        spent, boot = base.fetch_s, None
        if image.boot is not None:
            kernel = self.boot_file(image.boot.kernel)
            initrd = self.boot_file(image.boot.initrd) if image.boot.initrd else None
            spent += kernel.fetch_s + (initrd.fetch_s if initrd else 0.0)
            boot = KernelBoot(
                str(kernel.path), str(initrd.path) if initrd else None, image.boot.cmdline
            )
        return VmImage(base, boot, spent)

    def boot_file(self, file: ImageFile) -> Cached:
        return self._get(file.sha256, file.source, file.size_bytes, lambda _p: 0)

    def _get(
        self, sha256: str, source: str, size_bytes: int, inspect: Callable[[Path], int]
    ) -> Cached:
        with self._lock:
            if sha256 in self._verified and self.path(sha256).exists():
                _touch(self.path(sha256))
                return Cached(self.path(sha256), 0.0, self._verified[sha256])
            flight = self._flights.get(sha256)
            leader = flight is None
            if flight is None:
                flight = self._flights[sha256] = _Flight()
        if not leader:
            with self._lock:
                self.waiting += 1
            flight.done.wait()
            with self._lock:
                self.waiting -= 1
            if flight.error is not None:
                raise flight.error
            return Cached(self.path(sha256), 0.0, self._verified.get(sha256, 0))
        started = time.monotonic()
        try:
            virtual = self._admit(sha256, source, size_bytes, inspect)
        except FetchFailed as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                self._flights.pop(sha256, None)
            flight.done.set()
        self.evict(keep={sha256})
        return Cached(self.path(sha256), time.monotonic() - started, virtual)

    def _admit(
        self, sha256: str, source: str, size_bytes: int, inspect: Callable[[Path], int]
    ) -> int:
        """Into the cache and verified (the one caller of a flight)."""
        dest = self.path(sha256)
        if dest.exists():  # kept by an earlier run of the agent: vouch for it again
            if dest.stat().st_size == size_bytes and sha256_of(dest) == sha256:
                virtual = inspect(dest)
                _touch(dest)
                with self._lock:
                    self._verified[sha256] = virtual
                return virtual
            log.warning("cached image %s does not match its name: fetched again", sha256)
            _remove(dest)
        self.fetches += 1
        found: list[int] = []
        fetch_verified(
            source,
            sha256,
            dest,
            max_bytes=self._max_bytes,
            size_bytes=size_bytes,
            timeout_s=self._timeout_s,
            local_dirs=self._local_dirs,
            verify=self._verify,
            check=lambda partial: found.append(inspect(partial)),
        )
        os.chmod(dest, 0o444)
        _touch(dest)
        with self._lock:
            self._verified[sha256] = found[0] if found else 0
        log.info("image %s fetched from %s", sha256[:12], source)
        return self._verified[sha256]

    # --- keeping it bounded -----------------------------------------------------------

    def evict(self, keep: Iterable[str] = ()) -> list[str]:
        """Remove least recently used images nobody needs until the cache
        is within its bound; returns what was removed."""
        removed: list[str] = []
        with self._lock:
            pinned = set(self._in_use()) | set(keep) | set(self._flights)
            entries = []
            for sha in self.held():
                try:
                    st = self.path(sha).stat()
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime, sha, st.st_size))
            total = sum(size for _, _, size in entries)
            for _, sha, size in sorted(entries):
                if total <= self.cache_bytes:
                    break
                if sha in pinned:
                    continue
                _remove(self.path(sha))
                self._verified.pop(sha, None)
                total -= size
                removed.append(sha)
        for sha in removed:
            log.info("image %s evicted (cache over %d bytes)", sha[:12], self.cache_bytes)
        return removed


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):  # another owner's file: its age stays as it was
        os.utime(path)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except PermissionError:
        os.chmod(path, 0o644)
        path.unlink(missing_ok=True)


def _disk_info(path: Path, declared: str) -> int:
    """The image's virtual size, once ``qemu-img`` (probing, not told the
    format) agrees it is a ``declared`` image with no file of its own to
    open; ``FetchFailed(invalid=True)`` otherwise."""
    done = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise FetchFailed(f"qemu-img cannot read the image: {done.stderr.strip()}", invalid=True)
    info = json.loads(done.stdout)
    if info.get("format") != declared:
        raise FetchFailed(
            f"the image is {info.get('format')!r}, registered as {declared!r}", invalid=True
        )
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise FetchFailed("the image names a backing file: refused", invalid=True)
    data_file = (info.get("format-specific") or {}).get("data", {}).get("data-file")
    if data_file:
        raise FetchFailed("the image names an external data file: refused", invalid=True)
    return int(info.get("virtual-size", 0))
