"""One registry of error codes: unique codes, every public error rebuilt on
the far side of HTTP as the same class with the same attributes, the agent's
codes typed, and the package's exported names checked."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from flask import Flask

import warmcache
from warmcache import errors as e
from warmcache.agent_codes import AgentCode
from warmcache.client import Client
from warmcache.model import PoolSummary
from warmcache.service import WarmCache
from warmcache.web import create_app

# One instance of every class in the registry, built from typed arguments
# (a new class without an example fails test_every_class_has_an_example).
EXAMPLES: list[e.WarmCacheError] = [
    e.WarmCacheError("something"),
    e.InternalError("a bug"),
    e.ConfigError(["store.kind: unknown", "node: empty"]),
    e.InvalidRequest("bad", [{"loc": ["count"], "msg": "too small", "type": "greater_than"}]),
    e.InvalidRequest("bad, no field list"),
    e.InvalidRule("rule", [{"loc": ["reserve_cap"], "msg": "over total", "type": "value"}]),
    e.MethodNotAllowed("GET not allowed"),
    e.BodyTooLarge("over 1 MiB"),
    e.UnsupportedMediaType("text/plain"),
    e.HeadersTooLarge("over 8 KiB"),
    e.NotFound("/nowhere"),
    e.UnknownFlavor("xxl", ["small", "large"]),
    e.UnknownAZ("az9", ["az1", "az2"]),
    e.UnknownRule("az1", "small"),
    e.UnknownRequest("abc123"),
    e.UnknownPool("small", "az2"),
    e.UnknownClaim("job-42"),
    e.UnknownNetwork("az1", "vrf-a"),
    e.NetworkExists("az1", "vrf-a"),
    e.UnknownImage("debian-13"),
    e.ImageInUse("debian-12", ["small", "large"], 40),
    e.UnknownVm("az1-small-0123456789"),
    e.UnknownHypervisor("az1-r1-h1"),
    e.UnknownRack("az1", "az1-r9"),
    e.UnknownQuota("team-a"),
    e.VmNotHeld("az1-small-0123456789", "ready"),
    e.ClaimReleased("job-42", ["az1-small-0123456789"]),
    e.Unauthorized("no token"),
    e.Forbidden("es-provisioner", "admin"),
    e.ApprovalRefused("the asker cannot approve"),
    e.RequestConflict("abc123", "expired"),
    e.ClaimMismatch("job-42", ["count", "flavor"]),
    e.NoCapacity(
        flavor="small", az="az1", mode="rack-aware", wanted=4, ready=3, racks=3, hypervisors=6
    ),
    e.QuotaExceeded(
        requester="ci", quota="ci/*/*", limit=10, used=8, wanted=4, retry_after_s=120.0
    ),
    e.ClaimContention(8),
    e.ResumeFailed("small", "az1", ["az1-small-1"]),
    e.Overloaded("every worker busy"),
    e.LeadershipLost("wc/leader", 17),
    e.StoreError("etcd said no"),
    e.StoreUnavailable("etcd", "no answer within 2.0 s"),
    e.ClaimOutcomeUnknown("c0ffee", ["vm-1", "vm-2"], "read timed out"),
    e.SessionExpired("lease-9"),
    e.WatchCompacted(100, 250),
    e.AgentError("unix:/run/a.sock", "went wrong"),
    e.AgentUnavailable("unix:/run/a.sock", "connection refused"),
    e.AgentBusy("https://hv1:8443", "every worker busy"),
    e.VmUnhealthy("unix:/run/a.sock", "vm-7", "crashed"),
    e.AgentRejected("unix:/run/a.sock", "refused"),
    e.AgentInvalidRequest("unix:/run/a.sock", [{"loc": ["vm", "name"], "msg": "bad"}]),
    e.InsufficientHostCapacity("unix:/run/a.sock", "2 vCPUs free, 4 asked"),
    e.AgentVmNotFound("unix:/run/a.sock", "no VM vm-7 managed by this agent"),
    e.AgentVmExists("unix:/run/a.sock", "VM vm-7 exists on this host"),
    e.HypervisorError("unix:/run/a.sock", "libvirt: domain crashed"),
    e.ImageUnavailable("unix:/run/a.sock", "https://img/x.qcow2: HTTP 404"),
    e.ImageInvalid("unix:/run/a.sock", "checksum mismatch"),
    e.AgentForbidden("https://hv1:8443", "10.9.0.1 is not in the allow-list"),
    e.AgentInternalError("unix:/run/a.sock", "KeyError: 'x'"),
    e.ServerUnreachable("http://wc:8080", "ConnectError: refused", sent=False),
    e.UnexpectedReply(502, "<html>bad gateway</html>"),
]


def test_codes_are_unique_and_every_class_is_registered() -> None:
    def tree(cls: type[e.WarmCacheError]) -> Iterator[type[e.WarmCacheError]]:
        yield cls
        for sub in cls.__subclasses__():
            yield from tree(sub)

    classes = list(tree(e.WarmCacheError))
    assert len({cls.code for cls in classes}) == len(classes)
    assert {cls.code: cls for cls in classes} == e.CODES
    with pytest.raises(TypeError, match="unknown_flavor"):
        type("Again", (e.NotFound,), {"code": "unknown_flavor"})
    with pytest.raises(TypeError, match="own code"):
        type("Nameless", (e.NotFound,), {})


def test_every_class_has_an_example() -> None:
    assert {type(x) for x in EXAMPLES} == set(e.CODES.values())


def test_every_code_is_documented_in_the_tree() -> None:
    assert e.__doc__ is not None
    for code, cls in e.CODES.items():
        assert f"{cls.__name__}" in e.__doc__ and code in e.__doc__, code


@pytest.fixture
def raising(service: WarmCache) -> Iterator[tuple[Client, list[e.WarmCacheError]]]:
    """A live app whose GET /v1/pools raises what the test puts in the list."""
    planted: list[e.WarmCacheError] = []

    def pools() -> list[PoolSummary]:
        raise planted[0]

    service.pools = pools  # type: ignore[method-assign]
    app: Flask = create_app(service)
    http = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://wc")
    yield Client("http://wc", http=http), planted
    http.close()


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda x: f"{type(x).__name__}")
def test_every_error_round_trips_library_http_client(
    raising: tuple[Client, list[e.WarmCacheError]], error: e.WarmCacheError
) -> None:
    client, planted = raising
    planted.append(error)
    with pytest.raises(e.WarmCacheError) as got:
        client.pools()
    assert type(got.value) is type(error)
    assert vars(got.value) == vars(error)
    assert str(got.value) == str(error)


def test_the_http_status_is_the_class_s(
    raising: tuple[Client, list[e.WarmCacheError]], service: WarmCache
) -> None:
    app = create_app(service)
    for error in EXAMPLES:

        def pools(error: e.WarmCacheError = error) -> list[PoolSummary]:
            raise error

        service.pools = pools  # type: ignore[method-assign]
        reply = app.test_client().get("/v1/pools")
        assert reply.status_code == error.http_status, error
        assert reply.get_json() == {"error": error.code, "detail": error.detail()}


def test_an_unknown_code_falls_back_by_status_and_a_foreign_body_is_unexpected() -> None:
    from warmcache.client import _Wire

    with pytest.raises(e.NotFound, match="from_the_future"):
        _Wire.parse(404, b'{"error": "from_the_future", "detail": "new"}')
    with pytest.raises(e.UnexpectedReply) as got:
        _Wire.parse(502, b"<html>Bad Gateway</html>")
    assert got.value.status == 502 and "Bad Gateway" in got.value.excerpt
    with pytest.raises(e.UnexpectedReply):  # a known code whose detail lacks its fields
        _Wire.parse(409, b'{"error": "no_capacity", "detail": "no numbers"}')


def test_agent_codes_map_to_typed_classes() -> None:
    for code in AgentCode:
        error = e.agent_error("unix:/a", code.value, "detail")
        assert isinstance(error, e.AgentError)
        if isinstance(error, e.AgentRejected) and code != AgentCode.METHOD_NOT_ALLOWED:
            assert error.agent_code == code
    assert isinstance(e.agent_error("unix:/a", "busy", "x"), e.AgentUnavailable)
    assert isinstance(e.agent_error("unix:/a", "not_found", "x"), e.AgentVmNotFound)
    assert isinstance(e.agent_error("unix:/a", "brand_new", "x"), e.AgentInternalError)


def test_exported_members() -> None:
    """httpx's test: every public name is exported, and every export exists."""
    exported = set(warmcache.__all__)
    for name in exported:
        assert hasattr(warmcache, name), name
    public = {
        name
        for name, value in vars(warmcache).items()
        if not name.startswith("_") and not isinstance(value, type(warmcache))
    }
    assert public == exported - {"__version__"}
    # every error a caller can catch is importable from the package
    assert {cls.__name__ for cls in e.CODES.values()} <= exported
    for name in ("Client", "AsyncClient", "Vm", "Claim", "WarmCache", "Mode", "AgentCode"):
        assert name in exported
