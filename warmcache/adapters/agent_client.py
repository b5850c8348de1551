"""AgentClient: the ``HostAgent`` port over an agent's Unix socket.

Connection failures and timeouts become ``AgentUnavailable`` (transient: the
build cycle retries them); an error reply becomes the class its stable code
maps to (``warmcache.errors.AGENT_ERRORS``): ``AgentBusy`` is transient too,
the ``AgentRejected`` ones are never retried (the agent already said no). The
same replies arrive over the agent's socket or through its mTLS proxy.
"""

from __future__ import annotations

import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from warmcache.agent_codes import AgentCode
from warmcache.errors import AgentUnavailable, agent_error
from warmcache.images import Image
from warmcache.model import HostFacts
from warmcache.ports import VmSpec, VmStatus
from warmcache.wire import MAX_LINE_BYTES, VmStatusWire


@dataclass(frozen=True)
class AgentTls:
    """Client side of the proxy's mTLS: our certificate and the proxy's CA."""

    cert: str
    key: str
    ca: str

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


class AgentClient:
    """``unix:PATH`` (the agent's socket, on the same host) or
    ``https://host:port`` (its ``warmcache-proxy``, with ``tls``)."""

    def __init__(self, endpoint: str, timeout_s: float = 60.0, tls: AgentTls | None = None) -> None:
        self._endpoint = endpoint
        self._timeout_s = timeout_s
        self._http: httpx.Client | None = None
        if endpoint.startswith("unix:"):
            self._path = endpoint[len("unix:") :]
        elif endpoint.startswith("https://"):
            if tls is None:
                raise ValueError(f"{endpoint}: an https agent endpoint needs [agent_tls]")
            self._http = httpx.Client(base_url=endpoint, verify=tls.context(), timeout=timeout_s)
        else:
            raise ValueError(
                f"unsupported agent endpoint {endpoint!r} (want unix:PATH or https://HOST:PORT)"
            )

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def _over_socket(self, request: dict[str, Any]) -> Any:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self._timeout_s)
                sock.connect(self._path)
                sock.sendall(json.dumps(request).encode() + b"\n")
                with sock.makefile("rb") as stream:
                    line = stream.readline(MAX_LINE_BYTES + 1)
        except (FileNotFoundError, ConnectionError, TimeoutError, OSError) as exc:
            raise AgentUnavailable(self._endpoint, str(exc) or type(exc).__name__) from exc
        if not line:
            raise AgentUnavailable(self._endpoint, "connection closed without a reply")
        try:
            return json.loads(line)
        except json.JSONDecodeError as exc:
            raise AgentUnavailable(self._endpoint, f"unreadable reply: {exc}") from exc

    def _over_https(self, request: dict[str, Any]) -> Any:
        assert self._http is not None
        try:
            reply = self._http.post("/v1/agent", json=request)
        except httpx.HTTPError as exc:  # TLS refusal, connection, timeout
            raise AgentUnavailable(self._endpoint, str(exc) or type(exc).__name__) from exc
        try:
            body = reply.json()
        except ValueError as exc:
            raise AgentUnavailable(self._endpoint, f"HTTP {reply.status_code}") from exc
        if not isinstance(body, dict):
            raise AgentUnavailable(self._endpoint, f"HTTP {reply.status_code}: not an agent reply")
        return body

    def call(self, request: dict[str, Any]) -> Any:
        reply = self._over_https(request) if self._http else self._over_socket(request)
        if reply.get("ok"):
            return reply.get("result")
        # A typed error per code (AgentUnavailable ones are transient: the
        # cycle retries them; AgentRejected ones are not).
        raise agent_error(
            self._endpoint, str(reply.get("error", AgentCode.INTERNAL_ERROR)), reply.get("detail")
        )

    def facts(self) -> HostFacts:
        return HostFacts.model_validate(self.call({"op": "facts"}))

    def create(self, spec: VmSpec) -> VmStatus:
        return _status(self.call({"op": "create", "vm": _vm(spec)}))

    def recycle(self, spec: VmSpec) -> VmStatus:
        return _status(self.call({"op": "recycle", "vm": _vm(spec)}))

    def attach_disk(self, name: str, target: str, size_gib: int, preallocation: str) -> None:
        self.call(
            {
                "op": "attach_disk",
                "name": name,
                "target": target,
                "size_gib": size_gib,
                "preallocation": preallocation,
            }
        )

    def detach_disk(self, name: str, target: str) -> None:
        self.call({"op": "detach_disk", "name": name, "target": target})

    def prefetch(self, image: Image) -> None:
        self.call({"op": "prefetch", "image": image.model_dump(mode="json", exclude_none=True)})

    def delete(self, name: str) -> None:
        self.call({"op": "delete", "name": name})

    def status(self, name: str) -> VmStatus:
        return _status(self.call({"op": "status", "name": name}))

    def standby(self, name: str, state: str) -> VmStatus:
        return _status(self.call({"op": "standby", "name": name, "state": state}))

    def list(self) -> list[VmStatus]:
        return [_status(item) for item in self.call({"op": "list"})]


def _vm(spec: VmSpec) -> dict[str, Any]:
    vm: dict[str, Any] = {
        "name": spec.name,
        "flavor": spec.flavor.model_dump(mode="json"),
        "user_data": spec.user_data,
        "group": spec.group,
    }
    if spec.network is not None:
        vm["network"] = spec.network.model_dump(mode="json")
    if spec.image is not None:
        vm["image"] = spec.image.model_dump(mode="json", exclude_none=True)
    return vm


def _status(raw: Any) -> VmStatus:
    wire = VmStatusWire.model_validate(raw)
    return VmStatus(
        wire.name,
        wire.state,
        wire.healthy,
        wire.server_id,
        wire.addresses,
        wire.standby,
        wire.image_version,
    )
