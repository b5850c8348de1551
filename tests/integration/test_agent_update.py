"""The mechanics of an agent update on a real wheel of this tree: the
artifact is fetched and verified before anything is installed, installed
beside the running build (never over it), and the code installed hashes to
what the agent will then report. A corrupt artifact is refused and leaves
nothing behind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.wheels import build_wheel
from warmcache_agent import identity
from warmcache_agent.updater import UpdateRefused, fetch, install

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("agent-build"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_verified_build_installs_beside_the_running_one(wheel: Path, tmp_path: Path) -> None:
    fetched = fetch(f"file://{wheel}", sha256(wheel), tmp_path / "downloads")
    assert fetched.read_bytes() == wheel.read_bytes()
    target, code = install(fetched, tmp_path / "versions")
    assert (target / "warmcache_agent" / "daemon.py").exists()
    assert code == identity.installed_sha256()  # this tree's agent: the same code
    assert Path(identity.__file__).resolve().parent != target / "warmcache_agent"


def test_a_corrupt_or_unreadable_artifact_is_refused_and_nothing_is_left(
    wheel: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "bad" / wheel.name
    corrupt.parent.mkdir()
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    downloads = tmp_path / "downloads"
    with pytest.raises(UpdateRefused, match="checksum mismatch"):
        fetch(str(corrupt), sha256(wheel), downloads)
    assert list(downloads.iterdir()) == []
    with pytest.raises(UpdateRefused, match="No such file"):
        fetch(str(tmp_path / "missing.whl"), sha256(wheel), downloads)
    with pytest.raises(UpdateRefused, match="only paths"):
        fetch("ftp://example.org/agent.whl", sha256(wheel), downloads)
    with pytest.raises(UpdateRefused, match="not a wheel"):
        fetch("/etc/passwd", sha256(wheel), downloads)
    # the operator vouched for a broken file: it verifies, and pip refuses it
    vouched = fetch(str(corrupt), sha256(corrupt), downloads)
    with pytest.raises(UpdateRefused, match="pip install failed"):
        install(vouched, tmp_path / "versions")
    assert [p.name for p in (tmp_path / "versions").iterdir()] == []
