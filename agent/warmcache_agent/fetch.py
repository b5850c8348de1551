"""Fetch a file and vouch for it: the one mechanism behind the image cache
(``warmcache_agent.images``) and the agent's own updates
(``warmcache_agent.updater``).

A source is an absolute path, a ``file://`` URL or an ``https://`` URL. The
bytes go to a hidden partial file beside the destination, are hashed on the
way, and become the destination (one rename) only once their sha256 (and,
when known, their exact size) is the one asked for and the caller's own
``check`` passed; on any refusal, timeout or error the partial file is
removed, so nothing half-fetched or unverified is ever left under a name
anyone reads.

Bounds, so that a source cannot hold or fill the host: at most
``max_bytes`` are read (and no more than the expected size), the whole
fetch ends by ``timeout_s`` (a server trickling bytes is cut off at the
deadline, not at each read's timeout), local sources must be regular files
(not ``/dev/zero`` or a pipe) under one of ``local_dirs`` when those are
given.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

CHUNK = 1 << 20


class FetchFailed(Exception):
    """The file was not fetched; nothing was kept. ``invalid``: bytes came,
    and they are not the ones asked for (checksum, size, the caller's
    check); otherwise the source could not be read in time."""

    def __init__(self, message: str, *, invalid: bool) -> None:
        super().__init__(message)
        self.invalid = invalid


def fetch_verified(
    source: str,
    sha256: str,
    dest: Path,
    *,
    max_bytes: int,
    timeout_s: float,
    size_bytes: int | None = None,
    local_dirs: Sequence[Path] | None = None,
    verify: ssl.SSLContext | bool = True,
    check: Callable[[Path], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Path:
    """``source`` at ``dest``, verified; ``FetchFailed`` (and nothing at
    ``dest`` or beside it) otherwise. ``check`` sees the verified partial
    file before it is renamed and raises ``FetchFailed`` to refuse it."""
    limit = min(max_bytes, size_bytes) if size_bytes is not None else max_bytes
    made = not dest.parent.exists()  # a folder made for it goes too on a refusal
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.part"
    deadline = clock() + timeout_s
    digest, size = hashlib.sha256(), 0
    try:
        with open(partial, "wb") as out:
            for chunk in _chunks(source, deadline, timeout_s, local_dirs, verify, clock):
                size += len(chunk)
                if size > limit:
                    raise FetchFailed(
                        f"{source}: more than {limit} bytes"
                        + (f" (registered size {size_bytes})" if size_bytes is not None else ""),
                        invalid=True,
                    )
                digest.update(chunk)
                out.write(chunk)
                if clock() > deadline:
                    raise FetchFailed(
                        f"{source}: not fetched within {timeout_s:.0f} s", invalid=False
                    )
            out.flush()
            os.fsync(out.fileno())
        if size_bytes is not None and size != size_bytes:
            raise FetchFailed(
                f"{source}: {size} bytes, registered size {size_bytes} (truncated?)", invalid=True
            )
        if digest.hexdigest() != sha256:
            raise FetchFailed(
                f"{source}: checksum mismatch (sha256 {digest.hexdigest()}, want {sha256})",
                invalid=True,
            )
        if check is not None:
            check(partial)
        partial.replace(dest)
        return dest
    finally:
        partial.unlink(missing_ok=True)
        if made and not dest.exists():
            with contextlib.suppress(OSError):
                dest.parent.rmdir()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _chunks(
    source: str,
    deadline: float,
    timeout_s: float,
    local_dirs: Sequence[Path] | None,
    verify: ssl.SSLContext | bool,
    clock: Callable[[], float],
) -> Iterator[bytes]:
    parsed = urlparse(source)
    if parsed.scheme in ("", "file"):
        yield from _local(Path(unquote(parsed.path) if parsed.scheme else source), local_dirs)
        return
    if parsed.scheme != "https":
        raise FetchFailed(f"{source}: only paths, file:// and https:// are fetched", invalid=False)
    read_s = max(0.1, min(timeout_s, 30.0))
    try:
        with httpx.stream(
            "GET",
            source,
            timeout=httpx.Timeout(read_s, connect=min(read_s, 10.0)),
            follow_redirects=False,
            verify=verify,
        ) as reply:
            if reply.status_code != 200:
                raise FetchFailed(f"{source}: HTTP {reply.status_code}", invalid=False)
            for chunk in reply.iter_raw():
                yield chunk
                if clock() > deadline:
                    raise FetchFailed(
                        f"{source}: not fetched within {timeout_s:.0f} s", invalid=False
                    )
    except httpx.HTTPError as exc:
        raise FetchFailed(f"{source}: {exc or type(exc).__name__}", invalid=False) from exc


def _local(path: Path, local_dirs: Sequence[Path] | None) -> Iterator[bytes]:
    if not path.is_absolute():
        raise FetchFailed(f"{path}: local sources must be absolute paths", invalid=False)
    if local_dirs is not None:
        real = Path(os.path.realpath(path))
        if not any(real.is_relative_to(Path(os.path.realpath(d))) for d in local_dirs):
            allowed = ", ".join(map(str, local_dirs)) or "none (images.local_dirs is empty)"
            raise FetchFailed(f"{path}: not under an allowed folder ({allowed})", invalid=False)
    try:
        # O_NONBLOCK: opening a pipe for reading would wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FetchFailed(f"{path}: {exc.strerror}", invalid=False) from exc
    with open(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FetchFailed(f"{path}: not a regular file", invalid=False)
        yield from iter(lambda: src.read(CHUNK), b"")
