"""Where an agent build may come from, and artifact strings that must be
refused with a reason, never with a dead update thread (issue 28, item 3:
``https://[fe80::1/x.whl`` raised ValueError in the update thread; a NUL,
an ``xn--`` label, a 300-character label raised others; a FIFO named
``x.whl`` blocked it; any path, ``..`` included, was fetched)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from warmcache_agent.updater import UpdateRefused, check_source, fetch

SHA = "ab" * 32


@pytest.mark.parametrize(
    "artifact",
    [
        "https://[fe80::1/x.whl",
        "https://repo.example/agent\x00.whl",
        "https://xn--/x.whl",
        "https://" + "a" * 300 + ".example/x.whl",
        "https://repo.example:99999/x.whl",
        "ftp://repo.example/x.whl",
        "relative/x.whl",
        "",
        "https://" + "a" * 3000,
        "https://repo.example.evil.org/agent/x.whl",  # a prefix of the host is not the host
        "https://repo.example/agentx/x.whl",  # nor of a path segment
        "http://repo.example/agent/x.whl",
    ],
)
def test_malformed_or_foreign_artifacts_are_refused_with_a_reason(artifact: str) -> None:
    with pytest.raises(UpdateRefused):
        check_source(artifact, ("https://repo.example/agent", "/srv/builds"))


def test_allowed_sources_pass_and_no_sources_refuse_all(tmp_path: Path) -> None:
    assert (
        check_source(
            "https://repo.example/agent/w-1-py3-none-any.whl", ("https://repo.example/agent/",)
        )
        is None
    )
    assert check_source(f"file://{tmp_path}/w.whl", (str(tmp_path),)) == tmp_path / "w.whl"
    with pytest.raises(UpdateRefused, match="update_sources"):
        check_source(f"{tmp_path}/w.whl", ())


def test_a_path_that_climbs_or_links_out_of_its_source_is_refused(tmp_path: Path) -> None:
    allowed = tmp_path / "builds"
    allowed.mkdir()
    (tmp_path / "elsewhere.whl").write_bytes(b"x")
    (allowed / "link.whl").symlink_to(tmp_path / "elsewhere.whl")
    for artifact in (f"{allowed}/../elsewhere.whl", f"{allowed}/link.whl"):
        with pytest.raises(UpdateRefused, match="not under an allowed"):
            check_source(artifact, (str(allowed),))


def test_a_fifo_or_a_device_is_refused_at_once_and_nothing_is_left(tmp_path: Path) -> None:
    allowed = tmp_path / "builds"
    allowed.mkdir()
    os.mkfifo(allowed / "x.whl")  # opening it for reading would wait for a writer
    downloads = tmp_path / "downloads"
    with pytest.raises(UpdateRefused, match="not a regular file"):
        fetch(str(allowed / "x.whl"), SHA, downloads, sources=(str(allowed),), timeout_s=5)
    with pytest.raises(UpdateRefused):
        fetch("/dev/zero", SHA, downloads, sources=("/dev",), timeout_s=5)
    assert not downloads.exists() or list(downloads.rglob("*")) == []
