"""AgentClient: the ``HostAgent`` port over an agent's Unix socket.

Connection failures and timeouts become ``AgentUnavailable`` (transient: the
build cycle retries them); an error reply becomes ``AgentRejected`` carrying
the agent's stable code (never retried: the agent already said no).
"""

from __future__ import annotations

import json
import socket
from typing import Any

from warmcache.errors import AgentRejected, AgentUnavailable, InsufficientHostCapacity
from warmcache.model import HostFacts
from warmcache.ports import VmSpec, VmStatus
from warmcache.wire import MAX_LINE_BYTES, VmStatusWire


class AgentClient:
    def __init__(self, endpoint: str, timeout_s: float = 60.0) -> None:
        if not endpoint.startswith("unix:"):
            raise ValueError(f"unsupported agent endpoint {endpoint!r} (want unix:PATH)")
        self._endpoint = endpoint
        self._path = endpoint[len("unix:"):]
        self._timeout_s = timeout_s

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def call(self, request: dict[str, Any]) -> Any:
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
            reply = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AgentUnavailable(self._endpoint, f"unreadable reply: {exc}") from exc
        if reply.get("ok"):
            return reply.get("result")
        code = str(reply.get("error", "internal_error"))
        cls = InsufficientHostCapacity if code == "insufficient_capacity" else AgentRejected
        raise cls(self._endpoint, code, reply.get("detail"))

    def facts(self) -> HostFacts:
        return HostFacts.model_validate(self.call({"op": "facts"}))

    def create(self, spec: VmSpec) -> VmStatus:
        vm = {
            "name": spec.name,
            "flavor": spec.flavor.model_dump(mode="json"),
            "user_data": spec.user_data,
            "group": spec.group,
        }
        return _status(self.call({"op": "create", "vm": vm}))

    def delete(self, name: str) -> None:
        self.call({"op": "delete", "name": name})

    def status(self, name: str) -> VmStatus:
        return _status(self.call({"op": "status", "name": name}))

    def list(self) -> list[VmStatus]:
        return [_status(item) for item in self.call({"op": "list"})]


def _status(raw: Any) -> VmStatus:
    wire = VmStatusWire.model_validate(raw)
    return VmStatus(wire.name, wire.state, wire.healthy, wire.server_id, wire.addresses)
