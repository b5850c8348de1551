"""The mechanics of an agent update, each step refusing what it cannot
vouch for: fetch the desired build's artifact (a path, ``file://`` or
``https://`` URL the operator controls; bounded in size), verify its sha256
before anything is installed, and install it beside the running build (a
directory of its own under the agent's state, ``pip install --no-deps
--target``), never over it: the environment the agent runs from now stays
as it is, so going back is running the previous directory again.

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
from pathlib import Path
from urllib.parse import urlparse

from warmcache_agent.fetch import FetchFailed, fetch_verified
from warmcache_agent.identity import code_sha256

MAX_ARTIFACT_BYTES = 256 << 20


class UpdateRefused(Exception):
    """The build was not installed: the reason says why (nothing was changed)."""


def fetch(artifact: str, sha256: str, into: Path, *, timeout_s: float = 60.0) -> Path:
    """The artifact, verified, at ``into/<sha256>/<its file name>`` (pip
    wants a wheel's own name); ``UpdateRefused`` (and nothing left behind)
    when it is not a wheel, cannot be read, is too large or its sha256 is not
    ``sha256`` (``warmcache_agent.fetch``, the image cache's mechanism)."""
    name = Path(urlparse(artifact).path).name
    if not name.endswith(".whl"):
        raise UpdateRefused(f"{artifact}: not a wheel (*.whl)")
    try:
        return fetch_verified(
            artifact,
            sha256,
            into / sha256 / name,
            max_bytes=MAX_ARTIFACT_BYTES,
            timeout_s=timeout_s,
        )
    except FetchFailed as exc:
        raise UpdateRefused(str(exc)) from exc


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
    parts = wheel.name.split("-")
    version = parts[1] if len(parts) >= 5 else "?"
    return version, code, hashlib.sha256(wheel.read_bytes()).hexdigest()


def install(wheel: Path, versions: Path, *, python: str = sys.executable) -> tuple[Path, str]:
    """Install ``wheel`` into a directory of its own under ``versions``
    (``pip install --no-deps --target``: the running environment is not
    touched); returns that directory and the sha256 of the agent code in it
    (what the agent will report once it runs from there)."""
    versions.mkdir(parents=True, exist_ok=True)
    target = versions / wheel.name.removesuffix(".whl")
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
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)
        return target, code_sha256(target / "warmcache_agent")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
