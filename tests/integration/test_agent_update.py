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


@pytest.fixture
def sources(wheel: Path, tmp_path: Path) -> tuple[str, ...]:
    return (str(wheel.parent), str(tmp_path))


def test_a_verified_build_installs_beside_the_running_one(
    wheel: Path, tmp_path: Path, sources: tuple[str, ...]
) -> None:
    fetched = fetch(f"file://{wheel}", sha256(wheel), tmp_path / "downloads", sources=sources)
    assert fetched.read_bytes() == wheel.read_bytes()
    target, code = install(fetched, tmp_path / "versions")
    assert (target / "warmcache_agent" / "daemon.py").exists()
    assert code == identity.installed_sha256()  # this tree's agent: the same code
    assert target.name.endswith("." + code)  # named by its content
    assert Path(identity.__file__).resolve().parent != target / "warmcache_agent"


def test_a_refused_build_of_the_same_file_name_leaves_the_running_one_whole(
    wheel: Path, tmp_path: Path, sources: tuple[str, ...]
) -> None:
    """install() removed the folder of that name before it knew the new
    code was refused: the running build was deleted (issue 28, item 3a)."""
    fetched = fetch(str(wheel), sha256(wheel), tmp_path / "downloads", sources=sources)
    running, code = install(fetched, tmp_path / "versions")
    before = sorted(p.relative_to(running) for p in running.rglob("*"))
    with pytest.raises(UpdateRefused, match="hashes to"):
        install(fetched, tmp_path / "versions", expect="0" * 64)
    assert sorted(p.relative_to(running) for p in running.rglob("*")) == before
    assert [p.name for p in (tmp_path / "versions").iterdir()] == [running.name]
    again, _ = install(fetched, tmp_path / "versions", expect=code)  # the same content
    assert again == running


def test_a_corrupt_or_unreadable_artifact_is_refused_and_nothing_is_left(
    wheel: Path, tmp_path: Path, sources: tuple[str, ...]
) -> None:
    corrupt = tmp_path / "bad" / wheel.name
    corrupt.parent.mkdir()
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    downloads = tmp_path / "downloads"
    with pytest.raises(UpdateRefused, match="checksum mismatch"):
        fetch(str(corrupt), sha256(wheel), downloads, sources=sources)
    assert list(downloads.iterdir()) == []
    with pytest.raises(UpdateRefused, match="No such file"):
        fetch(str(tmp_path / "missing.whl"), sha256(wheel), downloads, sources=sources)
    with pytest.raises(UpdateRefused, match="only paths"):
        fetch("ftp://example.org/agent.whl", sha256(wheel), downloads, sources=sources)
    with pytest.raises(UpdateRefused, match="not under an allowed"):
        fetch("/etc/passwd", sha256(wheel), downloads, sources=sources)
    with pytest.raises(UpdateRefused, match="not a wheel"):
        fetch(str(tmp_path / "passwd"), sha256(wheel), downloads, sources=sources)
    # the operator vouched for a broken file: it verifies, and pip refuses it
    vouched = fetch(str(corrupt), sha256(corrupt), downloads, sources=sources)
    with pytest.raises(UpdateRefused, match="pip install failed"):
        install(vouched, tmp_path / "versions")
    assert [p.name for p in (tmp_path / "versions").iterdir()] == []
