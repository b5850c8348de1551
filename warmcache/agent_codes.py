"""The host agent's stable error codes: the ``error`` of an agent reply
(``warmcache.wire``), shared by the agent, its proxy and ``AgentClient``,
which turns each into its own exception class (``warmcache.errors``)."""

from __future__ import annotations

from enum import StrEnum


class AgentCode(StrEnum):
    INVALID_REQUEST = "invalid_request"  # malformed or out-of-range request: nothing was done
    INSUFFICIENT_CAPACITY = "insufficient_capacity"  # the host cannot fit the VM now
    NOT_FOUND = "not_found"  # no such VM managed by this agent
    ALREADY_EXISTS = "already_exists"  # a VM (or disk) of that name exists on this host
    HYPERVISOR_ERROR = "hypervisor_error"  # libvirt failed; the agent cleaned up what it started
    IMAGE_UNAVAILABLE = "image_unavailable"  # the image could not be fetched: nothing created
    IMAGE_INVALID = "image_invalid"  # its bytes are not the registered image: nothing kept
    BUSY = "busy"  # every worker of the agent (or proxy) is busy: transient, retry
    AGENT_UNAVAILABLE = "agent_unavailable"  # the proxy could not reach its agent: transient
    FORBIDDEN = "forbidden"  # the proxy refused the client certificate
    METHOD_NOT_ALLOWED = "method_not_allowed"  # the proxy serves POST /v1/agent only
    INTERNAL_ERROR = "internal_error"  # a bug in the agent: logged there
