"""The warmcache error tree, and the one table of its codes.

Every error class has one stable machine-readable ``code`` (the ``error``
field of HTTP error bodies) and one HTTP status, keeps the typed arguments
it was built from as attributes (named in ``fields``), puts them in its wire
``detail`` and is rebuilt from it by ``from_detail``: so ``except
UnknownFlavor`` works the same embedded and through ``warmcache.Client``.
``CODES`` maps every code to its class; the Flask handlers, the clients and
the CLI all use it::

    class                              code                    HTTP
    WarmCacheError                     warmcache_error         500
    ├── InternalError                  internal_error          500
    ├── ConfigError                    config_error            500
    ├── InvalidRequest                 invalid_request         400  (nothing changed)
    │   ├── InvalidRule                invalid_rule            400
    │   ├── MethodNotAllowed           method_not_allowed      405
    │   ├── BodyTooLarge               body_too_large          413
    │   ├── UnsupportedMediaType       unsupported_media_type  415
    │   └── HeadersTooLarge            headers_too_large       431
    ├── NotFound                       not_found               404
    │   ├── UnknownFlavor              unknown_flavor
    │   ├── UnknownAZ                  unknown_az
    │   ├── UnknownRule                unknown_rule
    │   ├── UnknownRequest             unknown_request
    │   ├── UnknownPool                unknown_pool
    │   ├── UnknownClaim               unknown_claim
    │   ├── UnknownNetwork             unknown_network
    │   ├── UnknownImage               unknown_image
    │   ├── UnknownVm                  unknown_vm
    │   ├── UnknownHypervisor          unknown_hypervisor
    │   ├── UnknownRack                unknown_rack
    │   └── UnknownQuota               unknown_quota
    ├── Unauthorized                   unauthorized            401
    ├── Forbidden                      forbidden               403
    ├── ApprovalRefused                approval_refused        403
    ├── RequestConflict                request_conflict        409
    ├── NetworkExists                  network_exists          409  (changes: maker-checker)
    ├── ImageInUse                     image_in_use            409  (nothing deleted)
    ├── VmNotHeld                      vm_not_held             409  (nothing changed)
    ├── ClaimReleased                  claim_released          409  (its VMs were given back)
    ├── ClaimMismatch                  claim_mismatch          409  (same claim_id, other request)
    ├── NoCapacity                     no_capacity             409  (nothing claimed)
    ├── QuotaExceeded                  quota_exceeded          429  (nothing claimed)
    ├── ClaimContention                claim_contention        503  (nothing claimed: retry)
    ├── ResumeFailed                   resume_failed           503  (paused/saved VMs did not wake)
    ├── Overloaded                     overloaded              503  (every worker busy: retry)
    ├── LeadershipLost                 leadership_lost         503
    ├── StoreError                     store_error             503
    │   ├── StoreUnavailable           store_unavailable       (nothing applied: retry)
    │   ├── SessionExpired             session_expired
    │   ├── WatchCompacted             watch_compacted
    │   └── ClaimOutcomeUnknown        claim_outcome_unknown
    ├── AgentError                     agent_error             502
    │   ├── AgentUnavailable           agent_unavailable       (transient: retried)
    │   │   └── AgentBusy              agent_busy
    │   ├── VmUnhealthy                vm_unhealthy            (its first health probe failed)
    │   └── AgentRejected              agent_rejected          (never retried)
    │       ├── AgentInvalidRequest    agent_invalid_request
    │       ├── InsufficientHostCapacity  insufficient_capacity
    │       ├── AgentVmNotFound        agent_not_found
    │       ├── AgentVmExists          agent_already_exists
    │       ├── HypervisorError        hypervisor_error
    │       ├── ImageUnavailable       image_unavailable (the image could not be fetched)
    │       ├── ImageInvalid           image_invalid  (its bytes are not the registered ones)
    │       ├── AgentForbidden         agent_forbidden
    │       └── AgentInternalError     agent_internal_error
    ├── ServerUnreachable              server_unreachable      (client side: no reply)
    └── UnexpectedReply                unexpected_reply        (client side: not an API reply)

The agent's own codes (``AgentCode``) map to the ``AgentRejected`` and
``AgentUnavailable`` classes through ``AGENT_ERRORS``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Self

from warmcache.agent_codes import AgentCode

CODES: dict[str, type[WarmCacheError]] = {}


class WarmCacheError(Exception):
    """Base of every error warmcache raises on purpose."""

    code: ClassVar[str] = "warmcache_error"
    http_status: ClassVar[int] = 500
    # Constructor arguments kept as attributes of the same names: the wire
    # detail carries them, and from_detail passes them back.
    fields: ClassVar[tuple[str, ...]] = ()
    _takes_message: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must declare its own code")
        if cls.code in CODES:
            raise TypeError(f"{cls.__name__}: code {cls.code!r} is {CODES[cls.code].__name__}'s")
        CODES[cls.code] = cls
        cls._takes_message = "message" in inspect.signature(cls.__init__).parameters

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def detail(self) -> Any:
        """JSON-able detail for error bodies: the message, and the fields."""
        if not self.fields:
            return self.message
        return {"message": self.message, **{name: getattr(self, name) for name in self.fields}}

    @classmethod
    def from_detail(cls, detail: Any) -> Self:
        """Rebuilds the error from its wire ``detail``. Raises ``KeyError`` or
        ``TypeError`` when the detail lacks what the class needs."""
        info: Mapping[str, Any] = detail if isinstance(detail, dict) else {"message": detail}
        kwargs = {name: info[name] for name in cls.fields if name in info}
        if cls._takes_message:
            kwargs["message"] = str(info.get("message", ""))
        return cls(**kwargs)


CODES[WarmCacheError.code] = WarmCacheError


def error_class(code: str) -> type[WarmCacheError] | None:
    """The class of a stable ``code``, or None for a code this version does not know."""
    return CODES.get(code)


class InternalError(WarmCacheError):
    """A bug: the server logged it. Nothing is known about what it did."""

    code = "internal_error"


class ConfigError(WarmCacheError):
    """The configuration is invalid; lists every problem found at once."""

    code = "config_error"
    fields = ("problems",)

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration: " + "; ".join(self.problems))


class InvalidRequest(WarmCacheError):
    """Malformed input: wrong types, out-of-range values, unknown fields.
    Nothing was changed."""

    code = "invalid_request"
    http_status = 400
    fields = ("errors",)

    def __init__(self, message: str, errors: list[Mapping[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = list(errors or [])

    @classmethod
    def from_validation(cls, message: str, exc: Any) -> Self:
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


class MethodNotAllowed(InvalidRequest):
    """The path exists, the method does not (the reply's ``Allow`` says which do)."""

    code = "method_not_allowed"
    http_status = 405


class BodyTooLarge(InvalidRequest):
    code = "body_too_large"
    http_status = 413


class UnsupportedMediaType(InvalidRequest):
    """A body that is not ``application/json`` (a cross-site form cannot be)."""

    code = "unsupported_media_type"
    http_status = 415


class HeadersTooLarge(InvalidRequest):
    code = "headers_too_large"
    http_status = 431


class NotFound(WarmCacheError):
    code = "not_found"
    http_status = 404


class UnknownFlavor(NotFound):
    code = "unknown_flavor"
    fields = ("flavor", "known")

    def __init__(self, flavor: str, known: Iterable[str]) -> None:
        self.flavor = flavor
        self.known = sorted(known)
        super().__init__(f"unknown flavor {flavor!r}; known flavors: {', '.join(self.known)}")


class UnknownAZ(NotFound):
    code = "unknown_az"
    fields = ("az", "known")

    def __init__(self, az: str, known: Iterable[str]) -> None:
        self.az = az
        self.known = sorted(known)
        super().__init__(f"unknown availability zone {az!r}; known: {', '.join(self.known)}")


class UnknownRule(NotFound):
    code = "unknown_rule"
    fields = ("az", "flavor")

    def __init__(self, az: str, flavor: str) -> None:
        self.az = az
        self.flavor = flavor
        super().__init__(f"no build rule for {flavor!r} in {az!r}")


class UnknownNetwork(NotFound):
    code = "unknown_network"
    fields = ("az", "name")

    def __init__(self, az: str, name: str) -> None:
        self.az = az
        self.name = name
        super().__init__(f"no address pool {name!r} in {az!r}")


class UnknownImage(NotFound):
    code = "unknown_image"
    fields = ("image",)

    def __init__(self, image: str) -> None:
        self.image = image
        super().__init__(f"no image {image!r} in the catalog")


class UnknownVm(NotFound):
    """No VM of that name is tracked (or, for a user token, none it holds)."""

    code = "unknown_vm"
    fields = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no VM {name!r}")


class UnknownHypervisor(NotFound):
    """No host of that name heartbeats, and no VM warmcache tracks is on it."""

    code = "unknown_hypervisor"
    fields = ("hypervisor",)

    def __init__(self, hypervisor: str) -> None:
        self.hypervisor = hypervisor
        super().__init__(f"no hypervisor {hypervisor!r} (none heartbeats under that name)")


class UnknownRack(NotFound):
    code = "unknown_rack"
    fields = ("az", "rack")

    def __init__(self, az: str, rack: str) -> None:
        self.az = az
        self.rack = rack
        super().__init__(f"no rack {rack!r} in {az!r} (no host of it heartbeats)")


class UnknownQuota(NotFound):
    """No limits are set for that requester."""

    code = "unknown_quota"
    fields = ("requester",)

    def __init__(self, requester: str) -> None:
        self.requester = requester
        super().__init__(f"no quota for requester {requester!r}")


class UnknownRequest(NotFound):
    code = "unknown_request"
    fields = ("request_id",)

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(f"no change request {request_id!r}")


class UnknownPool(NotFound):
    """The flavor and the AZ both exist, but no build rule pairs them."""

    code = "unknown_pool"
    fields = ("flavor", "az")

    def __init__(self, flavor: str, az: str) -> None:
        self.flavor = flavor
        self.az = az
        super().__init__(f"no pool for flavor {flavor!r} in {az!r} (no build rule)")


class UnknownClaim(NotFound):
    """No claim of that id landed (or its record is past its retention):
    a request under that id claimed nothing that can still be looked up."""

    code = "unknown_claim"
    fields = ("claim_id",)

    def __init__(self, claim_id: str) -> None:
        self.claim_id = claim_id
        super().__init__(f"no claim {claim_id!r} landed (or it is past its retention)")


class Unauthorized(WarmCacheError):
    """No bearer token, or one that is not configured."""

    code = "unauthorized"
    http_status = 401


class Forbidden(WarmCacheError):
    """The token is known but its role may not do this."""

    code = "forbidden"
    http_status = 403
    fields = ("identity", "needed")

    def __init__(self, identity: str, needed: str) -> None:
        self.identity = identity
        self.needed = needed
        super().__init__(f"{identity} may not do this (needs role {needed})")


class ApprovalRefused(WarmCacheError):
    """Maker-checker: whoever asked for a destructive change cannot approve it."""

    code = "approval_refused"
    http_status = 403


class RequestConflict(WarmCacheError):
    """The change request is no longer pending (approved, or expired)."""

    code = "request_conflict"
    http_status = 409
    fields = ("request_id", "state")

    def __init__(self, request_id: str, state: str) -> None:
        self.request_id = request_id
        self.state = state
        super().__init__(f"change request {request_id} is {state}, not pending")


class NetworkExists(WarmCacheError):
    """An address pool of that name exists: changing it is maker-checker
    (``POST /v1/requests`` with ``update_network``); nothing was changed."""

    code = "network_exists"
    http_status = 409
    fields = ("az", "name")

    def __init__(self, az: str, name: str) -> None:
        self.az = az
        self.name = name
        super().__init__(
            f"address pool {name!r} exists in {az!r}: ask for update_network (maker-checker)"
        )


class ImageInUse(WarmCacheError):
    """An image still named by a flavor, or booted by VMs warmcache tracks,
    cannot be deleted; nothing was changed."""

    code = "image_in_use"
    http_status = 409
    fields = ("image", "flavors", "vms")

    def __init__(self, image: str, flavors: list[str], vms: int = 0) -> None:
        self.image = image
        self.flavors = list(flavors)
        self.vms = vms
        users = [f"flavor(s) {', '.join(self.flavors)}"] if self.flavors else []
        users += [f"{vms} VM(s)"] if vms else []
        super().__init__(f"image {image!r} is in use by {' and '.join(users)}")


class VmNotHeld(WarmCacheError):
    """The VM is not handed out (it is pooled, or already given back):
    there is nothing of it to release, renew or attach to."""

    code = "vm_not_held"
    http_status = 409
    fields = ("name", "state")

    def __init__(self, name: str, state: str) -> None:
        self.name = name
        self.state = state
        super().__init__(f"VM {name!r} is {state}, not handed out")


class ClaimReleased(WarmCacheError):
    """A named claim whose VMs were given back: a repeat of it cannot
    return them (acquire again under a new claim_id)."""

    code = "claim_released"
    http_status = 409
    fields = ("claim_id", "released")

    def __init__(self, claim_id: str, released: list[str]) -> None:
        self.claim_id = claim_id
        self.released = list(released)
        super().__init__(
            f"claim {claim_id!r} landed, and its VM(s) {', '.join(self.released)} were given "
            "back since"
        )


class ClaimMismatch(WarmCacheError):
    """A claim of this id landed for a different request: nothing more was
    claimed. Use a fresh id for a new acquisition."""

    code = "claim_mismatch"
    http_status = 409
    fields = ("claim_id", "differs")

    def __init__(self, claim_id: str, differs: Iterable[str]) -> None:
        self.claim_id = claim_id
        self.differs = sorted(differs)
        super().__init__(
            f"claim {claim_id!r} landed for another request (differs in {', '.join(self.differs)})"
        )


class NoCapacity(WarmCacheError):
    """The pool cannot satisfy the request right now; nothing was claimed.

    A retry would not help until the pool is refilled: callers should fall
    back (another AZ, cold provisioning) or wait for the next build cycle.
    """

    code = "no_capacity"
    http_status = 409
    fields = ("flavor", "az", "mode", "wanted", "ready", "racks", "hypervisors")

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


class QuotaExceeded(WarmCacheError):
    """The request is over a quota of its requester (``[[quotas.limits]]``):
    more VMs than its share of the pool's acquirable VMs (``max_share``), or
    than it has left in the current window (``vms_per_window``), or more
    than it may hold at once (``max_held``, quota ``<requester>/held``);
    nothing was claimed. ``retry_after_s``: when the window ends (0 for a
    share: ask for fewer; for held VMs: release one)."""

    code = "quota_exceeded"
    http_status = 429
    fields = ("requester", "quota", "limit", "used", "wanted", "retry_after_s")

    def __init__(
        self,
        *,
        requester: str,
        quota: str,
        limit: int,
        used: int,
        wanted: int,
        retry_after_s: float,
    ) -> None:
        self.requester = requester
        self.quota = quota
        self.limit = limit
        self.used = used
        self.wanted = wanted
        self.retry_after_s = retry_after_s
        what = (
            f"{used} of {limit} VMs used in this window"
            if retry_after_s
            else (
                f"{used} of {limit} VMs held (release one first)"
                if quota.endswith("/held")
                else f"at most {limit} VM(s) in one acquisition"
            )
        )
        super().__init__(
            f"{requester} asked for {wanted} VM(s) over its quota {quota}: {what}; nothing claimed"
        )


class ClaimContention(WarmCacheError):
    """Concurrent acquirers kept winning the same VMs; nothing was claimed.

    Unlike ``NoCapacity`` this one is worth retrying after a short pause.
    """

    code = "claim_contention"
    http_status = 503
    fields = ("attempts",)

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(f"claim lost to concurrent acquirers {attempts} times; retry")


class ResumeFailed(WarmCacheError):
    """The VMs chosen were kept paused or saved and some did not come back
    (resume refused, or unhealthy after it), twice: those were purged, every
    other VM the request held went back to its pool; nothing was claimed."""

    code = "resume_failed"
    http_status = 503
    fields = ("flavor", "az", "failed")

    def __init__(self, flavor: str, az: str, failed: list[str]) -> None:
        self.flavor = flavor
        self.az = az
        self.failed = failed
        super().__init__(
            f"{len(failed)} {flavor} VM(s) in {az} did not resume ({', '.join(failed)}); "
            "nothing claimed: retry"
        )


class Overloaded(WarmCacheError):
    """Every worker of the server is busy and its queue is full: the request
    was not started. Retry after a pause (the reply has ``Retry-After``)."""

    code = "overloaded"
    http_status = 503


class LeadershipLost(WarmCacheError):
    """A fenced write was rejected: this instance no longer holds the lock.

    The caller must stop issuing work at once; whatever it started is left for
    the next leader (or reconciliation) to account for.
    """

    code = "leadership_lost"
    http_status = 503
    fields = ("lock_key", "token")

    def __init__(self, lock_key: str, token: int) -> None:
        self.lock_key = lock_key
        self.token = token
        super().__init__(f"lost leadership of {lock_key} (fencing token {token})")


class StoreError(WarmCacheError):
    """The coordination store failed or is unreachable."""

    code = "store_error"
    http_status = 503


class StoreUnavailable(StoreError):
    """The store did not answer within the request's deadline, or could not
    be reached, and the request surely did not land (nothing was applied):
    retry later."""

    code = "store_unavailable"
    fields = ("store", "why")

    def __init__(self, store: str, why: str) -> None:
        self.store = store
        self.why = why
        super().__init__(f"{store} unavailable: {why}")


class ClaimOutcomeUnknown(StoreError):
    """A claim's transaction got no answer and the store could not be asked
    afterwards whether it landed. The VMs may be in ``acquired`` under
    ``claim_id``: ask again for the claim (``GET /v1/claims/<claim_id>``,
    ``Client.claim``) before building replacements."""

    code = "claim_outcome_unknown"
    fields = ("claim_id", "vms", "cause")

    def __init__(self, claim_id: str, vms: list[str], cause: str) -> None:
        self.claim_id = claim_id
        self.vms = list(vms)
        self.cause = cause
        super().__init__(f"claim {claim_id} of {len(vms)} VM(s): outcome unknown: {cause}")


class SessionExpired(StoreError):
    """The session (lease) is gone: its TTL passed or it was destroyed."""

    code = "session_expired"
    fields = ("session_id",)

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"session {session_id} has expired")


class WatchCompacted(StoreError):
    """The change feed no longer holds the revisions asked for: re-read the
    range and watch from its revision."""

    code = "watch_compacted"
    fields = ("after_revision", "compacted")

    def __init__(self, after_revision: int, compacted: int) -> None:
        self.after_revision = after_revision
        self.compacted = compacted
        super().__init__(
            f"changes after revision {after_revision} were compacted (up to {compacted})"
        )


class AgentError(WarmCacheError):
    """A host agent failed an operation."""

    code = "agent_error"
    http_status = 502
    fields: ClassVar[tuple[str, ...]] = ("endpoint",)

    def __init__(self, endpoint: str, message: str) -> None:
        self.endpoint = endpoint
        super().__init__(f"agent {endpoint}: {message}")

    @classmethod
    def from_detail(cls, detail: Any) -> Self:
        info: Mapping[str, Any] = detail if isinstance(detail, dict) else {}
        error = super().from_detail(detail)
        error.message = str(info.get("message", error.message))  # already prefixed
        error.args = (error.message,)
        return error


class AgentUnavailable(AgentError):
    """The agent could not be reached; transient, worth a retry."""

    code = "agent_unavailable"


class AgentBusy(AgentUnavailable):
    """Every worker of the agent (or its proxy) is busy: transient."""

    code = "agent_busy"


class VmUnhealthy(AgentError):
    """A VM the agent created failed its first health probe."""

    code = "vm_unhealthy"
    fields = ("endpoint", "name", "state")

    def __init__(self, endpoint: str, name: str, state: str) -> None:
        self.name = name
        self.state = state
        super().__init__(endpoint, f"{name}: first health probe failed: state {state}")


class AgentRejected(AgentError):
    """The agent refused the request with a stable code of its own
    (``agent_code``); retrying the same request would not help."""

    code = "agent_rejected"
    agent_code: ClassVar[AgentCode | None] = None
    fields = ("endpoint", "agent_detail")

    def __init__(self, endpoint: str, agent_detail: Any) -> None:
        self.agent_detail = agent_detail
        super().__init__(endpoint, f"{self.agent_code or 'rejected'}: {agent_detail}")


class AgentInvalidRequest(AgentRejected):
    code = "agent_invalid_request"
    agent_code = AgentCode.INVALID_REQUEST


class InsufficientHostCapacity(AgentRejected):
    """The host has no room left for the VM (placement raced another build)."""

    code = "insufficient_capacity"
    agent_code = AgentCode.INSUFFICIENT_CAPACITY


class AgentVmNotFound(AgentRejected):
    """The agent manages no VM of that name."""

    code = "agent_not_found"
    agent_code = AgentCode.NOT_FOUND


class AgentVmExists(AgentRejected):
    """A VM (or a disk) of that name already exists on the host."""

    code = "agent_already_exists"
    agent_code = AgentCode.ALREADY_EXISTS


class HypervisorError(AgentRejected):
    """libvirt failed; the agent cleaned up what it had started."""

    code = "hypervisor_error"
    agent_code = AgentCode.HYPERVISOR_ERROR


class ImageUnavailable(AgentRejected):
    """The agent could not fetch the VM's image (its source is unreachable,
    too slow or missing); nothing was created."""

    code = "image_unavailable"
    agent_code = AgentCode.IMAGE_UNAVAILABLE


class ImageInvalid(AgentRejected):
    """The fetched image is not the registered one (sha256, size or format
    differ, or it names a backing file): refused, nothing was kept and
    nothing booted from it."""

    code = "image_invalid"
    agent_code = AgentCode.IMAGE_INVALID


class AgentForbidden(AgentRejected):
    """The agent's proxy refused this client's certificate."""

    code = "agent_forbidden"
    agent_code = AgentCode.FORBIDDEN


class AgentInternalError(AgentRejected):
    code = "agent_internal_error"
    agent_code = AgentCode.INTERNAL_ERROR


# What an agent's reply code becomes on the warmcache side.
AGENT_ERRORS: dict[AgentCode, type[AgentError]] = {
    AgentCode.INVALID_REQUEST: AgentInvalidRequest,
    AgentCode.METHOD_NOT_ALLOWED: AgentInvalidRequest,
    AgentCode.INSUFFICIENT_CAPACITY: InsufficientHostCapacity,
    AgentCode.NOT_FOUND: AgentVmNotFound,
    AgentCode.ALREADY_EXISTS: AgentVmExists,
    AgentCode.HYPERVISOR_ERROR: HypervisorError,
    AgentCode.IMAGE_UNAVAILABLE: ImageUnavailable,
    AgentCode.IMAGE_INVALID: ImageInvalid,
    AgentCode.BUSY: AgentBusy,
    AgentCode.AGENT_UNAVAILABLE: AgentUnavailable,
    AgentCode.FORBIDDEN: AgentForbidden,
    AgentCode.INTERNAL_ERROR: AgentInternalError,
}


def agent_error(endpoint: str, code: str, detail: Any) -> AgentError:
    """The typed error for an agent's error reply (an unknown code: internal)."""
    try:
        cls = AGENT_ERRORS[AgentCode(code)]
    except ValueError:
        return AgentInternalError(endpoint, f"unknown agent error {code!r}: {detail}")
    if issubclass(cls, AgentRejected):
        return cls(endpoint, detail)
    return cls(endpoint, str(detail))


class ServerUnreachable(WarmCacheError):
    """Client side: the server gave no reply (refused, reset, timed out).
    A request may or may not have been applied: an acquisition retried under
    its ``claim_id`` is safe."""

    code = "server_unreachable"
    http_status = 503
    fields = ("url", "why", "sent")

    def __init__(self, url: str, why: str, sent: bool = True) -> None:
        self.url = url
        self.why = why
        self.sent = sent  # False: no connection was made, so nothing can have been applied
        super().__init__(f"warmcache at {url} unreachable: {why}")


class UnexpectedReply(WarmCacheError):
    """Client side: the reply is not a warmcache API reply (not JSON, or an
    error body of an unknown shape): a proxy in the way, or the wrong URL."""

    code = "unexpected_reply"
    http_status = 502
    fields = ("status", "excerpt")

    def __init__(self, status: int, excerpt: str) -> None:
        self.status = status
        self.excerpt = excerpt[:200]
        super().__init__(f"HTTP {status} is not a warmcache API reply: {self.excerpt!r}")
