"""The mechanics of an agent update, each step refusing what it cannot
vouch for: check that the desired build's artifact comes from a source the
agent's config allows (``[inventory] update_sources``: path prefixes and
URL prefixes; none: every update is refused), fetch it (a path, ``file://``
or ``https://`` URL; a regular file only, bounded in size and in time),
verify its sha256 before anything is installed, and install it beside the
running build, never over it: into a fresh staging folder first, checked
(the agent code in it must hash to the desired build's), and only then
renamed to a folder named by that code, so a refused build touches nothing
and the folder the agent runs from is never rewritten. Going back is
running the previous folder again.

Every artifact string is parsed defensively: whatever it holds (a NUL, a
broken IPv6 literal, a label no IDNA codec takes), the answer is an
``UpdateRefused`` with the reason, never another exception.

``warmcache_agent.syncer`` runs these when the leader grants an update
slot; ``warmcache_agent.launcher`` restarts into the new directory and
rolls back when it does not come up in time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from warmcache_agent.fetch import FetchFailed, fetch_verified
from warmcache_agent.identity import code_sha256

MAX_ARTIFACT_BYTES = 256 << 20


class UpdateRefused(Exception):
    """The build was not installed: the reason says why (nothing was changed)."""


MAX_ARTIFACT_CHARS = 2048


def check_source(artifact: str, sources: Sequence[str]) -> Path | None:
    """``UpdateRefused`` unless ``artifact`` is a well-formed path, ``file://``
    or ``https://`` URL under one of ``sources`` (path prefixes, compared
    after resolving ``..`` and links; ``https://`` URL prefixes, compared by
    scheme, host, port and whole path segments). Returns the local path, or
    None for a URL."""
    if not isinstance(artifact, str) or not 0 < len(artifact) <= MAX_ARTIFACT_CHARS:
        raise UpdateRefused(f"artifact: 1-{MAX_ARTIFACT_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in artifact):
        raise UpdateRefused(f"artifact {artifact!r}: control characters")
    if not sources:
        raise UpdateRefused(
            "no update source is allowed: set [inventory] update_sources in the agent's config"
        )
    try:
        parts = urlsplit(artifact)
        if parts.scheme in ("", "file"):
            local = Path(unquote(parts.path) if parts.scheme else artifact)
            if not local.is_absolute():
                raise UpdateRefused(f"{artifact}: a local artifact must be an absolute path")
            real = Path(os.path.realpath(local))
            for source in sources:
                if source.startswith("/") and real.is_relative_to(os.path.realpath(source)):
                    return local
        elif parts.scheme == "https":
            url = httpx.URL(artifact)  # IDNA and ports checked here
            for source in sources:
                if source.startswith("https://") and _under(url, httpx.URL(source)):
                    return None
        else:
            raise UpdateRefused(f"{artifact}: only paths, file:// and https:// are fetched")
    except (ValueError, UnicodeError, httpx.InvalidURL) as exc:
        raise UpdateRefused(f"artifact {artifact!r}: {exc}") from exc
    raise UpdateRefused(f"{artifact}: not under an allowed update source ({', '.join(sources)})")


def _under(url: httpx.URL, prefix: httpx.URL) -> bool:
    if (url.scheme, url.host, url.port) != (prefix.scheme, prefix.host, prefix.port):
        return False
    base = prefix.path if prefix.path.endswith("/") else prefix.path + "/"
    return url.path == prefix.path or url.path.startswith(base)


def fetch(
    artifact: str,
    sha256: str,
    into: Path,
    *,
    sources: Sequence[str],
    timeout_s: float = 60.0,
) -> Path:
    """The artifact, verified, at ``into/<sha256>/<its file name>`` (pip
    wants a wheel's own name); ``UpdateRefused`` (and nothing left behind)
    when it is not from an allowed source, not a wheel, cannot be read in
    ``timeout_s`` (the whole fetch), is not a regular file, is too large or
    its sha256 is not ``sha256`` (``warmcache_agent.fetch``, the image
    cache's mechanism)."""
    local = check_source(artifact, sources)
    name = Path(local if local is not None else urlsplit(artifact).path).name
    if len(name) <= len(".whl") or not name.endswith(".whl"):
        raise UpdateRefused(f"{artifact}: not a wheel (*.whl)")
    local_dirs = [Path(s) for s in sources if s.startswith("/")]
    try:
        return fetch_verified(
            str(local) if local is not None else artifact,
            sha256,
            into / sha256 / name,
            max_bytes=MAX_ARTIFACT_BYTES,
            timeout_s=timeout_s,
            local_dirs=local_dirs,
        )
    except FetchFailed as exc:
        raise UpdateRefused(str(exc)) from exc
    except (ValueError, UnicodeError, OSError, httpx.HTTPError) as exc:
        raise UpdateRefused(f"{artifact}: {exc!r}") from exc


def describe(wheel: Path) -> tuple[str, str, str]:
    """What to set as the desired build for ``wheel``: its version, the
    sha256 of the agent code in it (what agents running it report) and the
    sha256 of the file itself. ``UpdateRefused`` if it is not an agent wheel."""
    import tempfile
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as tmp:
            members = [m for m in archive.namelist() if m.startswith("warmcache_agent/")]
            if "warmcache_agent/daemon.py" not in members:
                raise UpdateRefused(f"{wheel}: no warmcache_agent package in it")
            archive.extractall(tmp, members)
            code = code_sha256(Path(tmp) / "warmcache_agent")
    except (OSError, zipfile.BadZipFile) as exc:
        raise UpdateRefused(f"{wheel}: {exc}") from exc
    version = _wheel_version(wheel, "?")
    return version, code, hashlib.sha256(wheel.read_bytes()).hexdigest()


def install(
    wheel: Path, versions: Path, *, expect: str | None = None, python: str = sys.executable
) -> tuple[Path, str]:
    """Install ``wheel`` beside the running build (``pip install --no-deps
    --target``: the running environment is not touched): into a staging
    folder, checked (an agent package whose code hashes to ``expect``, when
    given), then renamed to ``versions/<version>.<code sha256>``, a folder
    named by its content: one that exists already holds the same code and
    is kept as it is. Returns that folder and the code's sha256;
    ``UpdateRefused`` with nothing under ``versions`` changed."""
    versions.mkdir(parents=True, exist_ok=True)
    staging = versions / f".{uuid.uuid4().hex}.staging"
    try:
        done = subprocess.run(
            [
                python,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--no-compile",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--quiet",
                "--target",
                str(staging),
                str(wheel),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**os.environ, "PIP_NO_INPUT": "1"},
        )
        if done.returncode != 0:
            raise UpdateRefused(f"{wheel.name}: pip install failed: {done.stderr.strip()[-500:]}")
        package = staging / "warmcache_agent"
        if not (package / "daemon.py").exists():
            raise UpdateRefused(f"{wheel.name}: no warmcache_agent package in it")
        code = code_sha256(package)
        if expect is not None and code != expect:
            raise UpdateRefused(
                f"the installed agent code hashes to {code}, the desired build says {expect}"
            )
        target = versions / f"{_wheel_version(wheel, 'build')}.{code}"
        if not (target / "warmcache_agent" / "daemon.py").exists():
            if target.exists():  # a broken leftover of this very code: set aside
                target.replace(versions / f".{uuid.uuid4().hex}.trash")
            staging.replace(target)  # a new name: nothing in use is rewritten
        return target, code
    except subprocess.TimeoutExpired as exc:
        raise UpdateRefused(f"{wheel.name}: pip install took over {exc.timeout:.0f} s") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _wheel_version(wheel: Path, unknown: str) -> str:
    """The version in a wheel's file name (name-version-python-abi-platform)."""
    parts = wheel.name.split("-")
    return parts[1] if len(parts) >= 5 else unknown
