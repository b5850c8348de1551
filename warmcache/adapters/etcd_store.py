"""EtcdStore: the coordination-store port on a real etcd (v3 JSON gateway).

Uses ``etcd3gw``'s client for transport and errors, with request bodies
written here so every etcd feature maps one to one: a key's create and mod
revisions are etcd's, a session is a lease, a transaction is ``/kv/txn``
with ``CREATE``/``MOD``/``VALUE`` compares, the change feed is a watch from
a start revision. Gateway quirks handled here: int64 fields come back as
strings, fields at their default are omitted (a failed txn has no
``succeeded``), and bytes are base64.

Every key is put under ``namespace`` (so tests and tenants can share one
cluster); keys handed back are relative to it again. A client passed in is
never closed by this adapter.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlparse

import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from warmcache.errors import SessionExpired, StoreError, WatchCompacted
from warmcache.ports import Change, Compare, KeyValue, Op, Put, ServiceEntry, TxnResult

try:
    import etcd3gw
    from etcd3gw import exceptions as etcd_exc
except ImportError:  # pragma: no cover - only without the extra
    etcd3gw = None  # type: ignore[assignment]

T = TypeVar("T")
_SERVICES = "_services/"


class _Retryable(Exception):
    """A request that surely did not apply: safe to send again."""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(data: str | None) -> str:
    return base64.b64decode(data or "").decode()


def _range_end(prefix_b: bytes) -> bytes:
    # etcd's prefix range end: the prefix with its last byte incremented.
    # Keys here are UTF-8 text, so no byte is 0xff and no carry is needed.
    return prefix_b[:-1] + bytes([prefix_b[-1] + 1]) if prefix_b else b"\0"


class EtcdStore:
    """See the module docstring. ``url`` is ``http://host:port``."""

    def __init__(
        self,
        url: str = "",
        *,
        namespace: str = "",
        client: Any = None,
        timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        failover_s: float = 10.0,
    ) -> None:
        if etcd3gw is None:
            raise StoreError("etcd3gw is not installed: pip install 'warmcache[etcd]'")
        # Several members may be given, comma-separated: requests go to one
        # and move to the next when it cannot be reached.
        self._urls = [u.strip() for u in (url or "http://127.0.0.1:2379").split(",") if u.strip()]
        self._current = 0
        self._given = client
        self._local = threading.local()
        self._ns = namespace
        self._timeout_s = timeout_s
        self._failover_s = failover_s
        self._sleep = sleep
        self._retrying = Retrying(
            retry=retry_if_exception_type(StoreError),
            stop=stop_after_attempt(3),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            sleep=sleep,
            reraise=True,
        )

    # --- transport -------------------------------------------------------------------

    def _make_client(self, index: int) -> Any:
        parsed = urlparse(self._urls[index])
        return etcd3gw.Etcd3Client(
            host=parsed.hostname or "127.0.0.1", port=parsed.port or 2379,
            protocol=parsed.scheme or "http", timeout=self._timeout_s, api_path="/v3/",
        )

    @property
    def _client(self) -> Any:
        if self._given is not None:
            return self._given
        # requests sessions are not guaranteed thread-safe: a client per
        # thread and member.
        clients: dict[int, Any] = self._local.__dict__.setdefault("clients", {})
        index = self._current
        if index not in clients:
            clients[index] = self._make_client(index)
        return clients[index]

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One request; moves to another member and retries only when that
        is safe: the request never reached a member (connection refused), or
        the member refused it for want of a raft leader (nothing applied)."""
        deadline = time.monotonic() + self._failover_s
        while True:
            try:
                return self._post_once(path, body)
            except _Retryable as exc:
                if time.monotonic() > deadline:
                    raise StoreError(f"etcd {path}: {exc}") from exc
                if len(self._urls) > 1:
                    self._current = (self._current + 1) % len(self._urls)
                self._sleep(0.05)

    def _post_once(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            reply: dict[str, Any] = self._client.post(self._client.get_url(path), json=body)
            return reply
        except etcd_exc.ConnectionFailedError as exc:
            detail = exc.detail_text or str(exc)
            if "refused" in detail or "establish a new connection" in detail:
                raise _Retryable(detail) from exc
            raise StoreError(f"etcd {path}: {detail.strip()}") from exc
        except etcd_exc.Etcd3Exception as exc:
            detail = exc.detail_text or str(exc)
            if "lease not found" in detail:
                raise SessionExpired(str(body.get("lease") or body.get("ID"))) from exc
            if "no leader" in detail:
                raise _Retryable(detail) from exc
            raise StoreError(f"etcd {path}: {detail.strip()}") from exc

    def _read(self, fn: Callable[[], T]) -> T:
        """Reads are idempotent: retry transient failures (a member restarting)."""
        return self._retrying(fn)

    def _key(self, key: str) -> bytes:
        return (self._ns + key).encode()

    def _k(self, key: str) -> str:
        """The namespaced key as the gateway wants it (base64)."""
        return base64.b64encode(self._key(key)).decode()

    def _kv(self, raw: dict[str, Any]) -> KeyValue:
        key = _unb64(raw["key"])[len(self._ns):]
        lease = raw.get("lease")
        return KeyValue(
            key, _unb64(raw.get("value")), int(raw.get("create_revision", 0)),
            int(raw.get("mod_revision", 0)), str(lease) if lease and lease != "0" else None,
        )

    # --- KV ------------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        reply = self._read(lambda: self._post("kv/range", {"key": self._k(key)}))
        kvs = reply.get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        start = self._key(prefix)
        body = {"key": base64.b64encode(start).decode(),
                "range_end": base64.b64encode(_range_end(start)).decode(),
                "sort_order": "ASCEND", "sort_target": "KEY"}
        reply = self._read(lambda: self._post("kv/range", body))
        kvs = [self._kv(raw) for raw in reply.get("kvs") or []]
        return kvs, int(reply["header"]["revision"])

    def _put_op(self, key: str, value: str, session: str | None) -> dict[str, Any]:
        op: dict[str, Any] = {"key": self._k(key), "value": _b64(value)}
        if session is not None:
            op["lease"] = session
        return op

    def put(self, key: str, value: str, session: str | None = None) -> int:
        reply = self._post("kv/put", self._put_op(key, value, session))
        return int(reply["header"]["revision"])

    def delete(self, key: str) -> bool:
        reply = self._post("kv/deleterange", {"key": self._k(key)})
        return int(reply.get("deleted", 0)) > 0

    def _op(self, op: Op) -> dict[str, Any]:
        if isinstance(op, Put):
            return {"request_put": self._put_op(op.key, op.value, op.session)}
        return {"request_delete_range": {"key": self._k(op.key)}}

    def _compare(self, c: Compare) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self._k(c.key),
                               "result": "EQUAL"}
        if c.target == "create":
            out.update(target="CREATE", create_revision=str(c.expected))
        elif c.target == "mod":
            out.update(target="MOD", mod_revision=str(c.expected))
        else:
            out.update(target="VALUE", value=_b64(str(c.expected)))
        return out

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        compared = list(dict.fromkeys(c.key for c in compares))
        # On failure, read every compared key in the same transaction, so the
        # caller sees the state that made it fail.
        reads = [{"request_range": {"key": self._k(k)}}
                 for k in compared]
        reply = self._post("kv/txn", {
            "compare": [self._compare(c) for c in compares],
            "success": [self._op(op) for op in success],
            "failure": [self._op(op) for op in failure] + reads,
        })
        revision = int(reply["header"]["revision"])
        if reply.get("succeeded"):
            return TxnResult(True, revision)
        responses = (reply.get("responses") or [])[len(failure):]
        current: dict[str, KeyValue | None] = {}
        for key, resp in zip(compared, responses, strict=False):
            kvs = (resp.get("response_range") or {}).get("kvs") or []
            current[key] = self._kv(kvs[0]) if kvs else None
        return TxnResult(False, revision, current)

    # --- sessions (leases) ------------------------------------------------------------

    def create_session(self, ttl_s: float, node: str) -> str:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        reply = self._post("lease/grant", {"TTL": str(max(1, math.ceil(ttl_s)))})
        return str(reply["ID"])

    def renew_session(self, session_id: str) -> None:
        reply = self._post("lease/keepalive", {"ID": session_id})
        if "TTL" not in (reply.get("result") or {}):
            raise SessionExpired(session_id)

    def destroy_session(self, session_id: str) -> None:
        with contextlib.suppress(SessionExpired):  # already gone: idempotent
            self._post("lease/revoke", {"ID": session_id})

    # --- change feed -------------------------------------------------------------------

    def changes(self, prefix: str, after_revision: int, timeout_s: float) -> list[Change]:
        start = self._key(prefix)
        body = {"create_request": {
            "key": base64.b64encode(start).decode(),
            "range_end": base64.b64encode(_range_end(start)).decode(),
            "start_revision": str(after_revision + 1),
        }}
        if timeout_s <= 0:
            # Not waiting: ask first whether anything under the prefix changed
            # at all (one small range request), and watch only if so.
            probe = self._read(lambda: self._post("kv/range", {
                "key": body["create_request"]["key"],
                "range_end": body["create_request"]["range_end"],
                "count_only": True, "min_mod_revision": str(after_revision + 1)}))
            # Deletions leave no key to count: they are found by the watch
            # below unless the prefix's revision says nothing happened.
            if int(probe.get("count", 0)) == 0 and int(
                    probe["header"]["revision"]) <= after_revision:
                return []
        # A history read is a watch from a start revision: give the gateway a
        # moment to replay what already happened.
        wait = max(timeout_s, 0.2)
        url = self._client.get_url("watch")
        try:
            with self._client.session.post(url, json=body, stream=True,
                                           timeout=(self._timeout_s, wait)) as reply:
                for line in reply.iter_lines():
                    if not line:
                        continue
                    result = json.loads(line).get("result") or {}
                    if result.get("compact_revision"):
                        raise WatchCompacted(after_revision, int(result["compact_revision"]))
                    events = result.get("events")
                    if events:
                        return [self._change(e) for e in events]
        except requests.exceptions.RequestException as exc:
            # A quiet watch ends by read timeout (requests reports it as a
            # ConnectionError while streaming): that is "no change yet".
            if "timed out" not in str(exc).lower():
                if len(self._urls) > 1:  # try another member next time
                    self._current = (self._current + 1) % len(self._urls)
                raise StoreError(f"etcd watch: {exc}") from exc
        return []

    def _change(self, event: dict[str, Any]) -> Change:
        kv = self._kv(event["kv"])
        if event.get("type") == "DELETE":
            return Change(kv.mod_revision, kv.key, "delete", None)
        return Change(kv.mod_revision, kv.key, "put", kv.value)

    # --- services -----------------------------------------------------------------------

    def register_service(self, name: str, node: str, address: str, ttl_s: float) -> None:
        lease = self.create_session(ttl_s, node)
        now = time.time()
        value = json.dumps({"address": address, "registered_at": now, "ttl_s": ttl_s})
        self.put(f"{_SERVICES}{name}/{node}", value, session=lease)

    def deregister_service(self, name: str, node: str) -> None:
        kv = self.get(f"{_SERVICES}{name}/{node}")
        if kv is not None and kv.session:
            self.destroy_session(kv.session)
        self.delete(f"{_SERVICES}{name}/{node}")

    def services(self, name: str) -> list[ServiceEntry]:
        kvs, _ = self.range(f"{_SERVICES}{name}/")
        out = []
        for kv in kvs:
            info = json.loads(kv.value)
            out.append(ServiceEntry(name, kv.key.rsplit("/", 1)[1], info["address"],
                                    info["registered_at"],
                                    info["registered_at"] + info["ttl_s"]))
        return out

    def close(self) -> None:
        """The client belongs to whoever made it; nothing to release here."""
