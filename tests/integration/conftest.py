"""The in-process service fixtures of the unit suite, for tests that serve
it over a real socket (a live HTTP server, a browser)."""

from tests.unit.conftest import agents, make_service, service

__all__ = ["agents", "make_service", "service"]
