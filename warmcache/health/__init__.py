"""Health polling and purge (DESIGN.md §9)."""

from warmcache.health.poller import HealthPoller, PollReport

__all__ = ["HealthPoller", "PollReport"]
