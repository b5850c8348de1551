"""Leases: how long a holder may keep a VM before it is reclaimed
(``lease_s`` on an acquisition, a renewal)."""

from __future__ import annotations

from warmcache.errors import InvalidRequest
from warmcache.model import MAX_LEASE_S


def check_lease(lease_s: float | None) -> None:
    """A lease a caller asks for: a positive number of seconds, at most a year."""
    if lease_s is None:
        return
    if isinstance(lease_s, bool) or not isinstance(lease_s, int | float):
        raise InvalidRequest("lease_s must be a number of seconds")
    if not 1 <= lease_s <= MAX_LEASE_S:
        raise InvalidRequest(f"lease_s must be between 1 and {MAX_LEASE_S}, got {lease_s}")
