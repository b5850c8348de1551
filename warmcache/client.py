"""``warmcache.Client`` and ``AsyncClient``: the HTTP API from Python (httpx),
returning the API's models (``warmcache.schemas``) and raising the library's
own error classes, rebuilt from the wire (``warmcache.errors.CODES``): ``except
UnknownFlavor`` and ``NoCapacity.ready`` work as they do embedded.

    from warmcache import Client, NoCapacity
    with Client("http://warmcache:8080", token=...) as wc:
        vms = wc.acquire("small", "az1", 3, "rack-aware")

An acquisition is idempotent: it sends a claim id (yours, or a fresh one),
and a timeout, an overloaded server or claim contention is retried under
that same id, so a retry returns the VMs of a claim that already landed and
never claims twice. ``ClaimOutcomeUnknown`` is raised only when, after the
retries, the server cannot even be asked whether the claim landed.

Both clients share one mapping of the wire (``_Wire``): requests are built
and replies parsed in one place; only the transport differs.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx
from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from warmcache.claims.quota_limits import QuotaEntry
from warmcache.config import QuotaLimit
from warmcache.demand.budgets import Budget, VcpuBudget, VmBudget
from warmcache.errors import (
    ClaimContention,
    ClaimOutcomeUnknown,
    InvalidRequest,
    NotFound,
    Overloaded,
    ServerUnreachable,
    StoreError,
    StoreUnavailable,
    Unauthorized,
    UnexpectedReply,
    UnknownClaim,
    WarmCacheError,
    error_class,
)
from warmcache.model import BuildRule, Mode, PoolSummary
from warmcache.schemas import (
    AcquireReply,
    AgentsReply,
    BudgetEntry,
    BudgetsReply,
    CapacityReply,
    ChangeReply,
    ChangeRequest,
    ChangesReply,
    Claim,
    Explain,
    Health,
    HostEntry,
    HostsReply,
    ImageEntry,
    ImagesReply,
    Leader,
    LeaderReply,
    NetworkEntry,
    NetworksReply,
    PoolsReply,
    QuotasReply,
    Ready,
    ReleaseReply,
    RuleEntry,
    RulesReply,
    Vm,
    VmsReply,
)

M = TypeVar("M", bound=BaseModel)

# Worth retrying under the same claim id: nothing was claimed, or the reply
# was lost (the id makes the retry return what landed).
RETRIED = (ServerUnreachable, ClaimContention, StoreUnavailable, Overloaded)

# An error code this version does not know: the nearest class by status.
_BY_STATUS: dict[int, type[WarmCacheError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    503: StoreError,
}


def _budget_body(budget: Budget | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(budget, VmBudget | VcpuBudget):
        return budget.model_dump()
    return dict(budget)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json: Any = None
    accept: tuple[int, ...] = ()


class _Wire:
    """Requests and replies of the API, for either transport."""

    @staticmethod
    def fail(url: str, exc: httpx.HTTPError) -> ServerUnreachable:
        # No connection made: the request surely was not applied.
        sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
        return ServerUnreachable(
            url, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, sent
        )

    @staticmethod
    def parse(status: int, content: bytes, accept: tuple[int, ...] = ()) -> Any:
        """The body of a reply, or its typed error raised (``accept``: error
        statuses whose body is a reply, as /readyz's 503)."""
        try:
            body = json.loads(content)
        except ValueError:
            raise UnexpectedReply(status, content.decode("utf-8", "replace")) from None
        if status < 400 or status in accept:
            return body
        if not isinstance(body, dict) or not isinstance(body.get("error"), str):
            raise UnexpectedReply(status, content.decode("utf-8", "replace"))
        cls = error_class(body["error"])
        detail = body.get("detail")
        if cls is None:
            message = detail.get("message", detail) if isinstance(detail, dict) else detail
            fallback = _BY_STATUS.get(status, WarmCacheError)
            raise fallback(f"{body['error']}: {message}")
        try:
            error = cls.from_detail(detail)
        except (KeyError, TypeError, ValueError):
            raise UnexpectedReply(status, content.decode("utf-8", "replace")) from None
        raise error

    @staticmethod
    def model(model: type[M], body: Any, status: int = 200) -> M:
        try:
            return model.model_validate(body)
        except ValidationError:
            raise UnexpectedReply(status, json.dumps(body)[:200]) from None

    @staticmethod
    def acquire(
        flavor: str,
        az: str,
        count: int,
        mode: Mode | str,
        use_reserve: bool,
        requester: str,
        claim_id: str,
        lease_s: int | None = None,
    ) -> Call:
        body: dict[str, Any] = {
            "flavor": flavor,
            "az": az,
            "count": count,
            "mode": Mode(mode).value,
            "use_reserve": use_reserve,
            "requester": requester,
            "claim_id": claim_id,
        }
        if lease_s is not None:
            body["lease_s"] = lease_s
        return Call("POST", "/v1/acquire", json=body)

    @staticmethod
    def vms(**query: Any) -> str:
        wanted = {k: v for k, v in query.items() if v is not None}
        return "/v1/vms" + (f"?{urlencode(wanted)}" if wanted else "")

    @staticmethod
    def vm(name: str, *rest: str) -> str:
        return "/".join(["/v1/vms", quote(name, safe=""), *(quote(r, safe="") for r in rest)])

    @staticmethod
    def hosts(**query: Any) -> str:
        wanted = {k: v for k, v in query.items() if v is not None}
        return "/v1/hosts" + (f"?{urlencode(wanted)}" if wanted else "")

    @staticmethod
    def quota(requester: str) -> str:
        return f"/v1/quotas/{quote(requester, safe='')}"

    @staticmethod
    def quota_body(limits: Sequence[QuotaLimit | Mapping[str, Any]]) -> dict[str, Any]:
        return {
            "limits": [
                q.model_dump(mode="json", exclude={"requester"})
                if isinstance(q, QuotaLimit)
                else dict(q)
                for q in limits
            ]
        }

    @staticmethod
    def rule_body(rule: BuildRule | Mapping[str, Any]) -> Any:
        return rule.model_dump(mode="json") if isinstance(rule, BuildRule) else dict(rule)


def _retrying(attempts: int, within_s: float) -> dict[str, Any]:
    return {
        "retry": retry_if_exception_type(RETRIED),
        "stop": stop_after_attempt(attempts) | stop_after_delay(within_s),
        "wait": wait_exponential(multiplier=0.05, max=2.0) + wait_random(0, 0.05),
        "reraise": True,
    }


def _unknown(claim_id: str, last: WarmCacheError, then: WarmCacheError) -> ClaimOutcomeUnknown:
    return ClaimOutcomeUnknown(claim_id, [], f"{last}; then asking for the claim: {then}")


class Client:
    """The API over HTTP, blocking. ``http``: an ``httpx.Client`` of yours
    (its base URL and auth are used as they are; it is not closed here)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        *,
        token: str | None = None,
        timeout_s: float = 30.0,
        http: httpx.Client | None = None,
        retry_attempts: int = 5,
        retry_within_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._owns = http is None
        self._http = http or httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)
        self._retry = _retrying(retry_attempts, retry_within_s)
        self._sleep = sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the HTTP client only if this object made it."""
        if self._owns:
            self._http.close()

    def _call(self, call: Call) -> Any:
        try:
            reply = self._http.request(call.method, call.path, json=call.json)
        except httpx.HTTPError as exc:
            raise _Wire.fail(self.url, exc) from exc
        return _Wire.parse(reply.status_code, reply.content, call.accept)

    def _get(self, model: type[M], path: str) -> M:
        return _Wire.model(model, self._call(Call("GET", path)))

    def health(self) -> Health:
        return self._get(Health, "/healthz")

    def ready(self) -> Ready:
        """``/readyz``: whether the instance can serve, and which dependency not."""
        return _Wire.model(Ready, self._call(Call("GET", "/readyz", accept=(503,))))

    def pools(self) -> list[PoolSummary]:
        return self._get(PoolsReply, "/v1/pools").pools

    def acquire(
        self,
        flavor: str,
        az: str,
        count: int,
        mode: Mode | str = Mode.RACK_AWARE,
        *,
        use_reserve: bool = False,
        requester: str = "anonymous",
        claim_id: str | None = None,
        lease_s: int | None = None,
    ) -> list[Vm]:
        """All or nothing, idempotent under ``claim_id`` (a fresh one if not
        given). Raises ``NoCapacity`` (nothing claimed) like the library;
        ``ClaimOutcomeUnknown`` only if the outcome cannot be learned. The
        VMs are the caller's until released (``release``) or, with a
        ``lease_s``, until the lease runs out (``renew`` extends it)."""
        claim_id = claim_id or uuid.uuid4().hex
        call = _Wire.acquire(flavor, az, count, mode, use_reserve, requester, claim_id, lease_s)
        sent = False
        try:
            for attempt in Retrying(sleep=self._sleep, **self._retry):
                with attempt:
                    try:
                        return _Wire.model(AcquireReply, self._call(call)).vms
                    except ServerUnreachable as exc:
                        sent = sent or exc.sent
                        raise
        except ServerUnreachable as last:
            if not sent:
                raise  # no attempt reached the server: nothing can have landed
            # A reply was lost: did the claim land meanwhile?
            try:
                return self.claim(claim_id).vms
            except UnknownClaim:
                raise last from None
            except (ServerUnreachable, StoreError, Overloaded) as then:
                raise _unknown(claim_id, last, then) from last
        raise AssertionError("unreachable")  # pragma: no cover

    def claim(self, claim_id: str) -> Claim:
        """A claim that landed; ``UnknownClaim`` if none did under that id."""
        return self._get(Claim, f"/v1/claims/{claim_id}")

    # --- handed-out VMs ------------------------------------------------------------

    def vm(self, name: str) -> Vm:
        """One VM in any state (``UnknownVm``; a user token: only its own)."""
        return self._get(Vm, _Wire.vm(name))

    def vms(
        self,
        *,
        state: str | None = None,
        requester: str | None = None,
        az: str | None = None,
        flavor: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> VmsReply:
        """A page of VMs in name order; ``next`` asks for the following page."""
        path = _Wire.vms(
            state=state, requester=requester, az=az, flavor=flavor, limit=limit, after=after
        )
        return self._get(VmsReply, path)

    def release(self, name: str) -> list[Vm]:
        """Give the VM back (it is ``releasing``; its agent deletes or
        recycles it). A repeat is harmless; ``UnknownVm`` once it is gone."""
        return _Wire.model(ReleaseReply, self._call(Call("DELETE", _Wire.vm(name)))).vms

    def release_claim(self, claim_id: str) -> list[Vm]:
        """Give back every VM of a named claim."""
        body = self._call(Call("DELETE", f"/v1/claims/{quote(claim_id, safe='')}"))
        return _Wire.model(ReleaseReply, body).vms

    def renew(self, name: str, lease_s: int) -> Vm:
        body = self._call(Call("POST", _Wire.vm(name, "renew"), json={"lease_s": lease_s}))
        return _Wire.model(Vm, body)

    def attach_disk(self, name: str, size_gib: int, preallocation: str = "off") -> Vm:
        """A new data disk for a VM you hold; the VM with its data disks."""
        call = Call(
            "POST",
            _Wire.vm(name, "disks"),
            json={"size_gib": size_gib, "preallocation": preallocation},
        )
        return _Wire.model(Vm, self._call(call))

    def detach_disk(self, name: str, target: str) -> Vm:
        return _Wire.model(Vm, self._call(Call("DELETE", _Wire.vm(name, "disks", target))))

    def leader(self) -> Leader | None:
        return self._get(LeaderReply, "/v1/leader").leader

    def rules(self) -> list[RuleEntry]:
        return self._get(RulesReply, "/v1/rules").rules

    def get_rule(self, az: str, flavor: str) -> BuildRule:
        return self._get(RuleEntry, f"/v1/rules/{az}/{flavor}").rule

    def put_rule(self, az: str, flavor: str, rule: BuildRule | Mapping[str, Any]) -> BuildRule:
        body = self._call(Call("PUT", f"/v1/rules/{az}/{flavor}", json=_Wire.rule_body(rule)))
        return _Wire.model(RuleEntry, body).rule

    def explain(self, az: str, flavor: str) -> Explain:
        return self._get(Explain, f"/v1/explain/{az}/{flavor}")

    def networks(self) -> list[NetworkEntry]:
        return self._get(NetworksReply, "/v1/networks").networks

    def budgets(self) -> list[BudgetEntry]:
        return self._get(BudgetsReply, "/v1/budgets").budgets

    def get_budget(self, az: str) -> Budget:
        return self._get(BudgetEntry, f"/v1/budgets/{az}").budget

    def put_budget(self, az: str, budget: Budget | Mapping[str, Any]) -> Budget:
        """``{"vms": N}`` or ``{"vcpus": N}``; ``InvalidRequest`` if bad (the old one stays)."""
        body = self._call(Call("PUT", f"/v1/budgets/{az}", json=_budget_body(budget)))
        return _Wire.model(BudgetEntry, body).budget

    def delete_budget(self, az: str) -> Budget:
        """Remove the AZ's budget; returns what it was (``NotFound`` if none)."""
        return _Wire.model(BudgetEntry, self._call(Call("DELETE", f"/v1/budgets/{az}"))).budget

    def agents(self) -> AgentsReply:
        return self._get(AgentsReply, "/v1/agents")

    def get_network(self, az: str, name: str) -> NetworkEntry:
        return self._get(NetworkEntry, f"/v1/networks/{az}/{name}")

    def images(self) -> list[ImageEntry]:
        """Every image of the catalog, with the flavors that boot it."""
        return self._get(ImagesReply, "/v1/images").images

    def get_image(self, image_id: str) -> ImageEntry:
        return self._get(ImageEntry, f"/v1/images/{image_id}")

    def create_network(self, az: str, name: str, pool: Mapping[str, Any]) -> NetworkEntry:
        """A new address pool; ``NetworkExists`` if there is one (a change is
        ``ask_change("update_network", ...)``)."""
        body = self._call(Call("PUT", f"/v1/networks/{az}/{name}", json=dict(pool)))
        return _Wire.model(NetworkEntry, body)

    # --- hosts, capacity, quotas ---------------------------------------------------

    def hosts(
        self,
        *,
        az: str | None = None,
        rack: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> HostsReply:
        """A page of hypervisors in (AZ, name) order; ``next`` asks for the following."""
        return self._get(HostsReply, _Wire.hosts(az=az, rack=rack, limit=limit, after=after))

    def host(self, hypervisor: str) -> HostEntry:
        """One hypervisor (``UnknownHypervisor``)."""
        return self._get(HostEntry, f"/v1/hosts/{quote(hypervisor, safe='')}")

    def capacity(self, az: str | None = None) -> CapacityReply:
        """Free and booked capacity per AZ and rack."""
        return self._get(CapacityReply, "/v1/capacity" + (f"?az={quote(az)}" if az else ""))

    def quotas(self) -> list[QuotaEntry]:
        return self._get(QuotasReply, "/v1/quotas").quotas

    def quota(self, requester: str) -> QuotaEntry:
        """One requester's limits (``UnknownQuota``)."""
        return self._get(QuotaEntry, _Wire.quota(requester))

    def set_quota(
        self, requester: str, limits: Sequence[QuotaLimit | Mapping[str, Any]]
    ) -> ChangeRequest:
        """Ask for ``requester``'s limits (maker-checker: another admin approves)."""
        body = self._call(Call("PUT", _Wire.quota(requester), json=_Wire.quota_body(limits)))
        return _Wire.model(ChangeReply, body, 202).request

    def delete_quota(self, requester: str) -> ChangeRequest:
        """Ask for ``requester``'s limits to go (maker-checker)."""
        body = self._call(Call("DELETE", _Wire.quota(requester)))
        return _Wire.model(ChangeReply, body, 202).request

    def ask_change(self, action: str, params: Mapping[str, Any]) -> ChangeRequest:
        body = self._call(
            Call("POST", "/v1/requests", json={"action": action, "params": dict(params)})
        )
        return _Wire.model(ChangeReply, body).request

    def changes(self) -> list[ChangeRequest]:
        return self._get(ChangesReply, "/v1/requests").requests

    def change(self, request_id: str) -> ChangeRequest:
        return self._get(ChangeReply, f"/v1/requests/{request_id}").request

    def approve(self, request_id: str) -> ChangeRequest:
        body = self._call(Call("POST", f"/v1/requests/{request_id}/approve"))
        return _Wire.model(ChangeReply, body).request


class AsyncClient:
    """``Client`` for asyncio (httpx.AsyncClient): the same methods, awaited."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        *,
        token: str | None = None,
        timeout_s: float = 30.0,
        http: httpx.AsyncClient | None = None,
        retry_attempts: int = 5,
        retry_within_s: float = 30.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._owns = http is None
        self._http = http or httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout_s
        )
        self._retry = _retrying(retry_attempts, retry_within_s)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns:
            await self._http.aclose()

    async def _call(self, call: Call) -> Any:
        try:
            reply = await self._http.request(call.method, call.path, json=call.json)
        except httpx.HTTPError as exc:
            raise _Wire.fail(self.url, exc) from exc
        return _Wire.parse(reply.status_code, reply.content, call.accept)

    async def _get(self, model: type[M], path: str) -> M:
        return _Wire.model(model, await self._call(Call("GET", path)))

    async def health(self) -> Health:
        return await self._get(Health, "/healthz")

    async def ready(self) -> Ready:
        return _Wire.model(Ready, await self._call(Call("GET", "/readyz", accept=(503,))))

    async def pools(self) -> list[PoolSummary]:
        return (await self._get(PoolsReply, "/v1/pools")).pools

    async def acquire(
        self,
        flavor: str,
        az: str,
        count: int,
        mode: Mode | str = Mode.RACK_AWARE,
        *,
        use_reserve: bool = False,
        requester: str = "anonymous",
        claim_id: str | None = None,
        lease_s: int | None = None,
    ) -> list[Vm]:
        """As ``Client.acquire``."""
        claim_id = claim_id or uuid.uuid4().hex
        call = _Wire.acquire(flavor, az, count, mode, use_reserve, requester, claim_id, lease_s)
        sent = False
        try:
            async for attempt in AsyncRetrying(sleep=asyncio.sleep, **self._retry):
                with attempt:
                    try:
                        return _Wire.model(AcquireReply, await self._call(call)).vms
                    except ServerUnreachable as exc:
                        sent = sent or exc.sent
                        raise
        except ServerUnreachable as last:
            if not sent:
                raise
            try:
                return (await self.claim(claim_id)).vms
            except UnknownClaim:
                raise last from None
            except (ServerUnreachable, StoreError, Overloaded) as then:
                raise _unknown(claim_id, last, then) from last
        raise AssertionError("unreachable")  # pragma: no cover

    async def claim(self, claim_id: str) -> Claim:
        return await self._get(Claim, f"/v1/claims/{claim_id}")

    async def vm(self, name: str) -> Vm:
        return await self._get(Vm, _Wire.vm(name))

    async def vms(
        self,
        *,
        state: str | None = None,
        requester: str | None = None,
        az: str | None = None,
        flavor: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> VmsReply:
        path = _Wire.vms(
            state=state, requester=requester, az=az, flavor=flavor, limit=limit, after=after
        )
        return await self._get(VmsReply, path)

    async def release(self, name: str) -> list[Vm]:
        body = await self._call(Call("DELETE", _Wire.vm(name)))
        return _Wire.model(ReleaseReply, body).vms

    async def release_claim(self, claim_id: str) -> list[Vm]:
        body = await self._call(Call("DELETE", f"/v1/claims/{quote(claim_id, safe='')}"))
        return _Wire.model(ReleaseReply, body).vms

    async def renew(self, name: str, lease_s: int) -> Vm:
        body = await self._call(Call("POST", _Wire.vm(name, "renew"), json={"lease_s": lease_s}))
        return _Wire.model(Vm, body)

    async def attach_disk(self, name: str, size_gib: int, preallocation: str = "off") -> Vm:
        call = Call(
            "POST",
            _Wire.vm(name, "disks"),
            json={"size_gib": size_gib, "preallocation": preallocation},
        )
        return _Wire.model(Vm, await self._call(call))

    async def detach_disk(self, name: str, target: str) -> Vm:
        body = await self._call(Call("DELETE", _Wire.vm(name, "disks", target)))
        return _Wire.model(Vm, body)

    async def leader(self) -> Leader | None:
        return (await self._get(LeaderReply, "/v1/leader")).leader

    async def rules(self) -> list[RuleEntry]:
        return (await self._get(RulesReply, "/v1/rules")).rules

    async def get_rule(self, az: str, flavor: str) -> BuildRule:
        return (await self._get(RuleEntry, f"/v1/rules/{az}/{flavor}")).rule

    async def put_rule(
        self, az: str, flavor: str, rule: BuildRule | Mapping[str, Any]
    ) -> BuildRule:
        body = await self._call(Call("PUT", f"/v1/rules/{az}/{flavor}", json=_Wire.rule_body(rule)))
        return _Wire.model(RuleEntry, body).rule

    async def explain(self, az: str, flavor: str) -> Explain:
        return await self._get(Explain, f"/v1/explain/{az}/{flavor}")

    async def networks(self) -> list[NetworkEntry]:
        return (await self._get(NetworksReply, "/v1/networks")).networks

    async def budgets(self) -> list[BudgetEntry]:
        return (await self._get(BudgetsReply, "/v1/budgets")).budgets

    async def get_budget(self, az: str) -> Budget:
        return (await self._get(BudgetEntry, f"/v1/budgets/{az}")).budget

    async def put_budget(self, az: str, budget: Budget | Mapping[str, Any]) -> Budget:
        body = await self._call(Call("PUT", f"/v1/budgets/{az}", json=_budget_body(budget)))
        return _Wire.model(BudgetEntry, body).budget

    async def delete_budget(self, az: str) -> Budget:
        body = await self._call(Call("DELETE", f"/v1/budgets/{az}"))
        return _Wire.model(BudgetEntry, body).budget

    async def agents(self) -> AgentsReply:
        return await self._get(AgentsReply, "/v1/agents")

    async def get_network(self, az: str, name: str) -> NetworkEntry:
        return await self._get(NetworkEntry, f"/v1/networks/{az}/{name}")

    async def images(self) -> list[ImageEntry]:
        return (await self._get(ImagesReply, "/v1/images")).images

    async def get_image(self, image_id: str) -> ImageEntry:
        return await self._get(ImageEntry, f"/v1/images/{image_id}")

    async def create_network(self, az: str, name: str, pool: Mapping[str, Any]) -> NetworkEntry:
        body = await self._call(Call("PUT", f"/v1/networks/{az}/{name}", json=dict(pool)))
        return _Wire.model(NetworkEntry, body)

    # --- hosts, capacity, quotas ---------------------------------------------------

    async def hosts(
        self,
        *,
        az: str | None = None,
        rack: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> HostsReply:
        """A page of hypervisors in (AZ, name) order; ``next`` asks for the following."""
        return await self._get(HostsReply, _Wire.hosts(az=az, rack=rack, limit=limit, after=after))

    async def host(self, hypervisor: str) -> HostEntry:
        """One hypervisor (``UnknownHypervisor``)."""
        return await self._get(HostEntry, f"/v1/hosts/{quote(hypervisor, safe='')}")

    async def capacity(self, az: str | None = None) -> CapacityReply:
        """Free and booked capacity per AZ and rack."""
        return await self._get(CapacityReply, "/v1/capacity" + (f"?az={quote(az)}" if az else ""))

    async def quotas(self) -> list[QuotaEntry]:
        return (await self._get(QuotasReply, "/v1/quotas")).quotas

    async def quota(self, requester: str) -> QuotaEntry:
        """One requester's limits (``UnknownQuota``)."""
        return await self._get(QuotaEntry, _Wire.quota(requester))

    async def set_quota(
        self, requester: str, limits: Sequence[QuotaLimit | Mapping[str, Any]]
    ) -> ChangeRequest:
        """Ask for ``requester``'s limits (maker-checker: another admin approves)."""
        body = await self._call(Call("PUT", _Wire.quota(requester), json=_Wire.quota_body(limits)))
        return _Wire.model(ChangeReply, body, 202).request

    async def delete_quota(self, requester: str) -> ChangeRequest:
        """Ask for ``requester``'s limits to go (maker-checker)."""
        body = await self._call(Call("DELETE", _Wire.quota(requester)))
        return _Wire.model(ChangeReply, body, 202).request

    async def ask_change(self, action: str, params: Mapping[str, Any]) -> ChangeRequest:
        body = await self._call(
            Call("POST", "/v1/requests", json={"action": action, "params": dict(params)})
        )
        return _Wire.model(ChangeReply, body).request

    async def changes(self) -> list[ChangeRequest]:
        return (await self._get(ChangesReply, "/v1/requests")).requests

    async def change(self, request_id: str) -> ChangeRequest:
        return (await self._get(ChangeReply, f"/v1/requests/{request_id}")).request

    async def approve(self, request_id: str) -> ChangeRequest:
        body = await self._call(Call("POST", f"/v1/requests/{request_id}/approve"))
        return _Wire.model(ChangeReply, body).request
