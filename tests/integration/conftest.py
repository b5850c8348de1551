"""The in-process service fixtures of the unit suite, for tests that serve
it over a real socket (a live HTTP server, a browser), and the real-guest
host (libvirtd and a guest image) for the realvm tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import unavailable
from tests.unit.conftest import agents, make_service, own_catalog, service

__all__ = ["agents", "make_service", "own_catalog", "real_host", "service"]


@pytest.fixture(scope="session")
def real_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """libvirtd running (started here if needed, stopped by PID) and the
    folder of the test guest's kernel and images (``guest.build_image``)."""
    try:
        import libvirt  # noqa: F401
    except ImportError:
        unavailable("realvm", "libvirt-python is not installed")

    from warmcache_agent.guest import GuestImageError, default_cache, prepare
    from warmcache_agent.libvirtd import Libvirtd, LibvirtdUnavailable

    daemons = Libvirtd(tmp_path_factory.mktemp("libvirtd"))
    try:
        daemons.ensure()
        prepare(default_cache())
    except (LibvirtdUnavailable, GuestImageError, subprocess.CalledProcessError) as exc:
        daemons.stop()
        unavailable("realvm", f"real guests cannot run here: {exc}")
    yield default_cache()
    daemons.stop()
