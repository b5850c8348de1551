"""The warmcache error tree.

Every error carries a stable machine-readable ``code`` (the ``error`` field of
HTTP error bodies and of agent replies) and keeps the typed arguments it was
built from as attributes, so callers can act on numbers, not on messages::

    WarmCacheError                     code
    ├── ConfigError                    config_error
    ├── InvalidRequest                 invalid_request       (HTTP 400)
    │   └── InvalidRule                invalid_rule          (HTTP 400)
    ├── NotFound                       not_found             (HTTP 404)
    │   ├── UnknownFlavor              unknown_flavor
    │   ├── UnknownAZ                  unknown_az
    │   ├── UnknownRule                unknown_rule
    │   ├── UnknownRequest             unknown_request
    │   └── UnknownPool                unknown_pool
    ├── Unauthorized                   unauthorized          (HTTP 401)
    ├── Forbidden                      forbidden             (HTTP 403)
    ├── ApprovalRefused                approval_refused      (HTTP 403)
    ├── RequestConflict                request_conflict      (HTTP 409)
    ├── NoCapacity                     no_capacity           (HTTP 409)
    ├── ClaimContention                claim_contention      (HTTP 503)
    ├── StoreError                     store_error           (HTTP 503)
    │   ├── StoreUnavailable           store_unavailable     (nothing applied: retry)
    │   ├── SessionExpired             session_expired
    │   ├── LeadershipLost             leadership_lost
    │   ├── WatchCompacted             watch_compacted
    │   └── ClaimOutcomeUnknown        claim_outcome_unknown
    └── AgentError                     agent_error           (HTTP 502)
        ├── AgentUnavailable           agent_unavailable     (transient: retried)
        ├── AgentRejected              <the agent's code>    (never retried)
        └── InsufficientHostCapacity   insufficient_capacity

HTTP statuses are assigned in ``warmcache.web`` only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class WarmCacheError(Exception):
    """Base of every error warmcache raises on purpose."""

    code = "warmcache_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def detail(self) -> Any:
        """JSON-able detail for error bodies: the message by default."""
        return self.message


class ConfigError(WarmCacheError):
    """The configuration is invalid; lists every problem found at once."""

    code = "config_error"

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration: " + "; ".join(self.problems))


class InvalidRequest(WarmCacheError):
    """Malformed input: wrong types, out-of-range values, unknown fields."""

    code = "invalid_request"

    def __init__(self, message: str, errors: list[Mapping[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = list(errors or [])

    @classmethod
    def from_validation(cls, message: str, exc: Any) -> InvalidRequest:
        """From a ``pydantic.ValidationError``: one entry per bad field, without
        echoing the input back (it may hold secrets such as user_data)."""
        errors: list[Mapping[str, Any]] = [
            {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        return cls(message, errors)

    def detail(self) -> Any:
        if not self.errors:
            return self.message
        return {"message": self.message, "errors": self.errors}


class InvalidRule(InvalidRequest):
    """A build rule failed validation; the stored rule is left unchanged."""

    code = "invalid_rule"


class NotFound(WarmCacheError):
    code = "not_found"


class UnknownFlavor(NotFound):
    code = "unknown_flavor"

    def __init__(self, flavor: str, known: Iterable[str]) -> None:
        self.flavor = flavor
        self.known = sorted(known)
        super().__init__(f"unknown flavor {flavor!r}; known flavors: {', '.join(self.known)}")


class UnknownAZ(NotFound):
    code = "unknown_az"

    def __init__(self, az: str, known: Iterable[str]) -> None:
        self.az = az
        self.known = sorted(known)
        super().__init__(f"unknown availability zone {az!r}; known: {', '.join(self.known)}")


class UnknownRule(NotFound):
    code = "unknown_rule"

    def __init__(self, az: str, flavor: str) -> None:
        self.az = az
        self.flavor = flavor
        super().__init__(f"no build rule for {flavor!r} in {az!r}")


class UnknownRequest(NotFound):
    code = "unknown_request"

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(f"no change request {request_id!r}")


class UnknownPool(NotFound):
    """The flavor and the AZ both exist, but no build rule pairs them."""

    code = "unknown_pool"

    def __init__(self, flavor: str, az: str) -> None:
        self.flavor = flavor
        self.az = az
        super().__init__(f"no pool for flavor {flavor!r} in {az!r} (no build rule)")


class Unauthorized(WarmCacheError):
    """No bearer token, or one that is not configured."""

    code = "unauthorized"


class Forbidden(WarmCacheError):
    """The token is known but its role may not do this."""

    code = "forbidden"

    def __init__(self, identity: str, needed: str) -> None:
        self.identity = identity
        self.needed = needed
        super().__init__(f"{identity} may not do this (needs role {needed})")


class ApprovalRefused(WarmCacheError):
    """Maker-checker: whoever asked for a destructive change cannot approve it."""

    code = "approval_refused"


class RequestConflict(WarmCacheError):
    """The change request is no longer pending (approved, or expired)."""

    code = "request_conflict"

    def __init__(self, request_id: str, state: str) -> None:
        self.request_id = request_id
        self.state = state
        super().__init__(f"change request {request_id} is {state}, not pending")


class NoCapacity(WarmCacheError):
    """The pool cannot satisfy the request right now; nothing was claimed.

    A retry would not help until the pool is refilled: callers should fall
    back (another AZ, cold provisioning) or wait for the next build cycle.
    """

    code = "no_capacity"

    def __init__(
        self,
        *,
        flavor: str,
        az: str,
        mode: str,
        wanted: int,
        ready: int,
        racks: int,
        hypervisors: int,
    ) -> None:
        self.flavor = flavor
        self.az = az
        self.mode = mode
        self.wanted = wanted
        self.ready = ready
        self.racks = racks
        self.hypervisors = hypervisors
        super().__init__(
            f"cannot acquire {wanted} x {flavor} in {az} ({mode}): {ready} ready "
            f"on {racks} rack(s) and {hypervisors} hypervisor(s)"
        )

    def detail(self) -> Any:
        return {
            "message": self.message,
            "flavor": self.flavor,
            "az": self.az,
            "mode": self.mode,
            "wanted": self.wanted,
            "ready": self.ready,
            "racks": self.racks,
            "hypervisors": self.hypervisors,
        }


class ClaimContention(WarmCacheError):
    """Concurrent acquirers kept winning the same VMs; nothing was claimed.

    Unlike ``NoCapacity`` this one is worth retrying after a short pause.
    """

    code = "claim_contention"

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(f"claim lost to concurrent acquirers {attempts} times; retry")


class StoreError(WarmCacheError):
    """The coordination store failed or is unreachable."""

    code = "store_error"


class StoreUnavailable(StoreError):
    """The store did not answer within the request's deadline, or could not
    be reached, and the request surely did not land (nothing was applied):
    retry later."""

    code = "store_unavailable"

    def __init__(self, store: str, why: str) -> None:
        self.store = store
        self.why = why
        super().__init__(f"{store} unavailable: {why}")


class ClaimOutcomeUnknown(StoreError):
    """A claim's transaction got no answer and the store could not be asked
    afterwards whether it landed. The VMs may be in ``acquired`` under
    ``claim_id``; look there before building replacements."""

    code = "claim_outcome_unknown"

    def __init__(self, claim_id: str, vms: list[str], cause: str) -> None:
        self.claim_id = claim_id
        self.vms = vms
        super().__init__(f"claim {claim_id} of {len(vms)} VM(s): outcome unknown: {cause}")

    def detail(self) -> dict[str, Any]:
        return {"claim_id": self.claim_id, "vms": self.vms, "message": self.message}


class SessionExpired(StoreError):
    """The session (lease) is gone: its TTL passed or it was destroyed."""

    code = "session_expired"

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"session {session_id} has expired")


class LeadershipLost(StoreError):
    """A fenced write was rejected: this instance no longer holds the lock.

    The caller must stop issuing work at once; whatever it started is left for
    the next leader (or reconciliation) to account for.
    """

    code = "leadership_lost"

    def __init__(self, lock_key: str, token: int) -> None:
        self.lock_key = lock_key
        self.token = token
        super().__init__(f"lost leadership of {lock_key} (fencing token {token})")


class WatchCompacted(StoreError):
    """The change feed no longer holds the revisions asked for: re-read the
    range and watch from its revision."""

    code = "watch_compacted"

    def __init__(self, after_revision: int, compacted: int) -> None:
        self.after_revision = after_revision
        self.compacted = compacted
        super().__init__(
            f"changes after revision {after_revision} were compacted (up to {compacted})"
        )


class AgentError(WarmCacheError):
    """A host agent failed an operation."""

    code = "agent_error"

    def __init__(self, endpoint: str, message: str) -> None:
        self.endpoint = endpoint
        super().__init__(f"agent {endpoint}: {message}")


class AgentUnavailable(AgentError):
    """The agent could not be reached; transient, worth a retry."""

    code = "agent_unavailable"


class AgentRejected(AgentError):
    """The agent refused the request with a stable error code of its own."""

    def __init__(self, endpoint: str, agent_code: str, detail: Any) -> None:
        self.agent_code = agent_code
        self.agent_detail = detail
        self.code = agent_code
        super().__init__(endpoint, f"{agent_code}: {detail}")


class InsufficientHostCapacity(AgentRejected):
    """The host has no room left for the VM (placement raced another build)."""
