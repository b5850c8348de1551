"""Which agent this is: the version of the installed package and the sha256
of the agent's installed code, published in the host facts so the fleet
shows which agents run which build (``warmcache agents``) and which do not
match the desired one (``warmcache agents desired``)."""

from __future__ import annotations

import functools
import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


@functools.cache
def agent_version() -> str:
    try:
        return version("warmcache")
    except PackageNotFoundError:  # run from a tree that is not installed
        return "0+unknown"


@functools.cache
def installed_sha256() -> str:
    """``code_sha256`` of this very agent (computed once per process)."""
    return code_sha256(Path(__file__).resolve().parent)


def code_sha256(base: Path) -> str:
    """sha256 over a copy of the agent package's Python files, by relative
    path and content (so a rebuilt identical package hashes the same)."""
    digest = hashlib.sha256()
    for path in sorted(base.rglob("*.py")):
        digest.update(str(path.relative_to(base)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()
