"""warmcache: pools of pre-built, health-checked VMs, acquired in milliseconds.

Embed it::

    from warmcache import WarmCache, Mode
    cache = WarmCache.from_config("warmcache.toml").start()
    vms = cache.acquire("small", "az1", 3, Mode.RACK_AWARE, requester="es-provisioner")

or call a running service over HTTP with the same errors::

    from warmcache import Client, NoCapacity
    with Client("http://warmcache:8080", token=...) as wc:
        vms = wc.acquire("small", "az1", 3, "rack-aware")
"""

from warmcache.agent_codes import AgentCode
from warmcache.client import AsyncClient, Client
from warmcache.errors import (
    CODES,
    AgentBusy,
    AgentError,
    AgentForbidden,
    AgentInternalError,
    AgentInvalidRequest,
    AgentRejected,
    AgentUnavailable,
    AgentVmExists,
    AgentVmNotFound,
    ApprovalRefused,
    BodyTooLarge,
    ClaimContention,
    ClaimMismatch,
    ClaimOutcomeUnknown,
    ConfigError,
    Forbidden,
    HeadersTooLarge,
    HypervisorError,
    InsufficientHostCapacity,
    InternalError,
    InvalidRequest,
    InvalidRule,
    LeadershipLost,
    MethodNotAllowed,
    NetworkExists,
    NoCapacity,
    NotFound,
    Overloaded,
    RequestConflict,
    ServerUnreachable,
    SessionExpired,
    StoreError,
    StoreUnavailable,
    Unauthorized,
    UnexpectedReply,
    UnknownAZ,
    UnknownClaim,
    UnknownFlavor,
    UnknownNetwork,
    UnknownPool,
    UnknownRequest,
    UnknownRule,
    UnsupportedMediaType,
    VmUnhealthy,
    WarmCacheError,
    WatchCompacted,
)
from warmcache.model import BuildRule, Flavor, InstanceState, Mode, PoolInstance, PoolSummary
from warmcache.schemas import AcquireReply, Claim, Explain, Leader, RuleEntry, Vm
from warmcache.service import WarmCache

__version__ = "0.1.0"

__all__ = [
    "CODES",
    "AcquireReply",
    "AgentBusy",
    "AgentCode",
    "AgentError",
    "AgentForbidden",
    "AgentInternalError",
    "AgentInvalidRequest",
    "AgentRejected",
    "AgentUnavailable",
    "AgentVmExists",
    "AgentVmNotFound",
    "ApprovalRefused",
    "AsyncClient",
    "BodyTooLarge",
    "BuildRule",
    "Claim",
    "ClaimContention",
    "ClaimMismatch",
    "ClaimOutcomeUnknown",
    "Client",
    "ConfigError",
    "Explain",
    "Flavor",
    "Forbidden",
    "HeadersTooLarge",
    "HypervisorError",
    "InstanceState",
    "InsufficientHostCapacity",
    "InternalError",
    "InvalidRequest",
    "InvalidRule",
    "Leader",
    "LeadershipLost",
    "MethodNotAllowed",
    "Mode",
    "NetworkExists",
    "NoCapacity",
    "NotFound",
    "Overloaded",
    "PoolInstance",
    "PoolSummary",
    "RequestConflict",
    "RuleEntry",
    "ServerUnreachable",
    "SessionExpired",
    "StoreError",
    "StoreUnavailable",
    "Unauthorized",
    "UnexpectedReply",
    "UnknownAZ",
    "UnknownClaim",
    "UnknownFlavor",
    "UnknownNetwork",
    "UnknownPool",
    "UnknownRequest",
    "UnknownRule",
    "UnsupportedMediaType",
    "Vm",
    "VmUnhealthy",
    "WarmCache",
    "WarmCacheError",
    "WatchCompacted",
    "__version__",
]
