"""What an agent operation raises: ``AgentFault``, with the stable code
(``warmcache.agent_codes.AgentCode``) its wire reply carries."""

from __future__ import annotations

from typing import Any

from warmcache.agent_codes import AgentCode
from warmcache_agent.fetch import FetchFailed


class AgentFault(Exception):
    """An operation refused or failed, with the code its reply carries."""

    def __init__(self, code: AgentCode, detail: Any) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def fetch_fault(exc: FetchFailed) -> AgentFault:
    """An image that could not be had: unavailable, or not the one registered."""
    return AgentFault(
        AgentCode.IMAGE_INVALID if exc.invalid else AgentCode.IMAGE_UNAVAILABLE, str(exc)
    )
