"""warmcache: pools of pre-built, health-checked VMs, acquired in milliseconds.

Embed it::

    from warmcache import WarmCache, Mode
    cache = WarmCache.from_config("warmcache.toml").start()
    vms = cache.acquire("small", "az1", 3, Mode.RACK_AWARE, requester="es-provisioner")
"""

from warmcache.client import Client
from warmcache.errors import (
    AgentError,
    ClaimContention,
    ConfigError,
    Forbidden,
    InvalidRequest,
    InvalidRule,
    LeadershipLost,
    NoCapacity,
    NotFound,
    StoreError,
    Unauthorized,
    UnknownAZ,
    UnknownFlavor,
    UnknownPool,
    WarmCacheError,
)
from warmcache.model import BuildRule, Flavor, InstanceState, Mode, PoolInstance, PoolSummary
from warmcache.service import WarmCache

__version__ = "0.1.0"

__all__ = [
    "AgentError",
    "BuildRule",
    "ClaimContention",
    "Client",
    "ConfigError",
    "Flavor",
    "Forbidden",
    "InstanceState",
    "InvalidRequest",
    "InvalidRule",
    "LeadershipLost",
    "Mode",
    "NoCapacity",
    "NotFound",
    "PoolInstance",
    "PoolSummary",
    "StoreError",
    "Unauthorized",
    "UnknownAZ",
    "UnknownFlavor",
    "UnknownPool",
    "WarmCache",
    "WarmCacheError",
    "__version__",
]
