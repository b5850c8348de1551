"""``warmcache.Client``: the HTTP API from Python (httpx), with the same typed
errors as the library (``NoCapacity`` carries the same numbers).

    from warmcache import Client, NoCapacity
    with Client("http://warmcache:8080", token=...) as wc:
        vms = wc.acquire("small", "az1", 3, "rack-aware")
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from warmcache.errors import (
    ClaimContention,
    ClaimOutcomeUnknown,
    Forbidden,
    InvalidRequest,
    InvalidRule,
    NoCapacity,
    NotFound,
    StoreError,
    Unauthorized,
    UnknownAZ,
    UnknownFlavor,
    UnknownPool,
    UnknownRule,
    WarmCacheError,
)
from warmcache.model import Mode


class Client:
    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 30.0,
                 http: httpx.Client | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._owns = http is None
        self._http = http or httpx.Client(base_url=url.rstrip("/"), headers=headers,
                                          timeout=timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None,
                 _tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Closes the HTTP client only if this object made it."""
        if self._owns:
            self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            reply = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise StoreError(f"warmcache unreachable: {exc}") from exc
        try:
            body = reply.json()
        except ValueError as exc:
            raise WarmCacheError(f"HTTP {reply.status_code} without a JSON body") from exc
        if reply.status_code < 400:
            return body
        raise _error(str(body.get("error", "")), body.get("detail"), reply.status_code)

    def pools(self) -> list[dict[str, Any]]:
        pools: list[dict[str, Any]] = self._call("GET", "/v1/pools")["pools"]
        return pools

    def acquire(self, flavor: str, az: str, count: int, mode: Mode | str, *,
                use_reserve: bool = False, requester: str = "anonymous") -> list[dict[str, Any]]:
        """All or nothing; raises ``NoCapacity`` (nothing claimed) like the library."""
        body = {"flavor": flavor, "az": az, "count": count, "mode": Mode(mode).value,
                "use_reserve": use_reserve, "requester": requester}
        vms: list[dict[str, Any]] = self._call("POST", "/v1/acquire", json=body)["vms"]
        return vms

    def leader(self) -> dict[str, Any] | None:
        holder: dict[str, Any] | None = self._call("GET", "/v1/leader")["leader"]
        return holder

    def get_rule(self, az: str, flavor: str) -> dict[str, Any]:
        rule: dict[str, Any] = self._call("GET", f"/v1/rules/{az}/{flavor}")["rule"]
        return rule

    def put_rule(self, az: str, flavor: str, rule: dict[str, Any]) -> dict[str, Any]:
        stored: dict[str, Any] = self._call("PUT", f"/v1/rules/{az}/{flavor}", json=rule)["rule"]
        return stored


def _error(code: str, detail: Any, status: int) -> WarmCacheError:
    """The typed error for an API error body (unknown codes: by HTTP status)."""
    info = detail if isinstance(detail, dict) else {}
    message = str(info.get("message", detail))
    if code == "no_capacity":
        return NoCapacity(**{k: info[k] for k in (
            "flavor", "az", "mode", "wanted", "ready", "racks", "hypervisors")})
    if code in ("invalid_request", "invalid_rule"):
        cls = InvalidRule if code == "invalid_rule" else InvalidRequest
        return cls(message, info.get("errors"))
    simple: dict[str, type[WarmCacheError]] = {
        "unauthorized": Unauthorized, "store_error": StoreError,
    }
    if code == "forbidden":
        return Forbidden("this token", "admin")
    if code == "claim_contention":
        return ClaimContention(0)
    if code == ClaimOutcomeUnknown.code:
        return ClaimOutcomeUnknown(str(info.get("claim_id", "")), list(info.get("vms", [])),
                                   message)
    for cls_ in (UnknownFlavor, UnknownAZ, UnknownPool, UnknownRule):
        if code == cls_.code:
            error = NotFound(message)
            error.code = code
            return error
    if code in simple:
        return simple[code](message)
    if status == 404:
        return NotFound(message)
    return WarmCacheError(f"HTTP {status} {code}: {message}")
