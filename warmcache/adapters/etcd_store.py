"""EtcdStore: the coordination-store port on a real etcd (v3 JSON gateway).

Unary calls (ranges, transactions, leases) go through one thread-safe
``urllib3`` connection pool per member: ``requests``' per-call machinery
cost 1.3 ms of CPU a call against 0.6 ms through urllib3 on the same etcd
(the gateway comparison ``bench/acquire.py --store etcd`` prints).
``etcd3gw``'s client (on ``requests``) serves the streaming watch, the
sign-in, and clients passed in. Request bodies are written here so every
etcd feature maps one to one: a key's create and mod
revisions are etcd's, a session is a lease, a transaction is ``/kv/txn``
with ``CREATE``/``MOD``/``VALUE`` compares, the change feed is a watch from
a start revision. Gateway quirks handled here: int64 fields come back as
strings, fields at their default are omitted (a failed txn has no
``succeeded``), and bytes are base64.

TLS: ``https://`` member URLs, verified against ``ca`` (else the system's
CAs), with a client certificate (``cert``/``key``) for servers started with
``--client-cert-auth``. Authentication: with ``username``, the store signs in
(``/v3/auth/authenticate``) and sends the token on every request, signing in
again once when etcd says the token expired (``--auth-token-ttl``).

Every key is put under ``namespace`` (so tests and tenants can share one
cluster); keys handed back are relative to it again. A client passed in is
never closed by this adapter.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

import requests
import urllib3

from warmcache import deadline
from warmcache.adapters.retries import ReadRetry
from warmcache.adapters.txn_batches import check_disjoint
from warmcache.errors import SessionExpired, StoreError, StoreUnavailable, WatchCompacted
from warmcache.ports import (
    Change,
    ChangeStream,
    Compare,
    KeyValue,
    Op,
    Put,
    ServiceEntry,
    Txn,
    TxnResult,
)

try:
    import etcd3gw
    from etcd3gw import exceptions as etcd_exc
except ImportError:  # pragma: no cover - only without the extra
    etcd3gw = None  # type: ignore[assignment]

T = TypeVar("T")
_SERVICES = "_services/"
# etcd's --max-txn-ops default: operations (and compares) per transaction level.
MAX_TXN_OPS = 128
# Connections kept per member; threads beyond it open one and drop it after.
POOL_CONNECTIONS = 64
_JSON = {"Content-Type": "application/json"}


class _Retryable(Exception):
    """A request that surely did not apply: safe to send again."""


class _TokenExpired(Exception):
    """etcd refused the auth token (expired, or etcd restarted): sign in again."""


@dataclass(frozen=True)
class EtcdSecurity:
    """TLS and authentication for every connection to the members."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    username: str = ""
    password: str = field(default="", repr=False)

    def pool(self, url: str) -> urllib3.HTTPConnectionPool | None:
        """A connection pool to one member, shared by every thread; None when
        the environment routes it through a proxy (``requests`` then)."""
        if requests.utils.get_environ_proxies(url):
            return None
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 2379
        if parsed.scheme == "https":
            return urllib3.HTTPSConnectionPool(
                host,
                port,
                maxsize=POOL_CONNECTIONS,
                cert_reqs="CERT_REQUIRED",
                ca_certs=self.ca or None,
                cert_file=self.cert or None,
                key_file=self.key or None,
            )
        return urllib3.HTTPConnectionPool(host, port, maxsize=POOL_CONNECTIONS)

    def session(self, url: str) -> requests.Session:
        session = requests.Session()
        if self.ca:
            session.verify = self.ca
        if self.cert:
            session.cert = (self.cert, self.key)
        _settle_environment(session, url)
        return session


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
        connect_timeout_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        failover_s: float = 10.0,
        max_txn_ops: int = MAX_TXN_OPS,
        security: EtcdSecurity | None = None,
    ) -> None:
        if etcd3gw is None:
            raise StoreError("etcd3gw is not installed: pip install 'warmcache[etcd]'")
        # Several members may be given, comma-separated: requests go to one
        # and move to the next when it cannot be reached.
        self._urls = [u.strip() for u in (url or "http://127.0.0.1:2379").split(",") if u.strip()]
        self._current = 0
        self._given = client
        self._local = threading.local()
        self._pools: dict[int, urllib3.HTTPConnectionPool | None] = {}
        self._pools_lock = threading.Lock()
        self._ns = namespace
        self._timeout_s = timeout_s
        self._connect_s = connect_timeout_s
        self._failover_s = failover_s
        self._sleep = sleep
        self._max_ops = max_txn_ops
        self._read = ReadRetry(sleep)
        self._security = security or EtcdSecurity()
        self._auth_lock = threading.Lock()
        self._auth_token = ""
        self.sign_ins = 0  # how often it signed in (tests: a token was renewed)

    # --- transport -------------------------------------------------------------------

    def _make_client(self, index: int) -> Any:
        parsed = urlparse(self._urls[index])
        return etcd3gw.Etcd3Client(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 2379,
            protocol=parsed.scheme or "http",
            timeout=self._timeout_s,
            api_path="/v3/",
            session=self._security.session(self._urls[index]),
        )

    def _headers(self) -> dict[str, str]:
        """The auth token header (signing in first if there is none yet)."""
        if not self._security.username:
            return {}
        with self._auth_lock:
            if not self._auth_token:
                self._auth_token = self._authenticate()
            return {"Authorization": self._auth_token}

    def _authenticate(self) -> str:
        client = self._client
        client.timeout = (self._connect_s, self._timeout_s)
        body = {"name": self._security.username, "password": self._security.password}
        try:
            reply = client.post(client.get_url("auth/authenticate"), json=body)
        except etcd_exc.ConnectionFailedError as exc:
            raise StoreUnavailable("etcd", f"sign-in: {exc.detail_text or exc}") from exc
        except etcd_exc.Etcd3Exception as exc:
            detail = (exc.detail_text or str(exc)).strip()
            raise StoreError(f"etcd sign-in as {self._security.username!r}: {detail}") from exc
        self.sign_ins += 1
        return str(reply["token"])

    def _token_expired(self, sent: dict[str, str]) -> None:
        with self._auth_lock:
            if self._auth_token == sent.get("Authorization"):
                self._auth_token = ""

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
        give_up = time.monotonic() + self._failover_s
        while True:
            # the request's deadline (warmcache.deadline) bounds each try
            timeout = deadline.remaining(self._timeout_s, "etcd")
            headers = self._headers()
            try:
                try:
                    return self._post_once(path, body, timeout, headers)
                except _TokenExpired:  # once: a fresh token, then the request again
                    self._token_expired(headers)
                    return self._post_once(path, body, timeout, self._headers())
            except _TokenExpired as exc:
                raise StoreError(f"etcd {path}: the auth token was refused twice") from exc
            except _Retryable as exc:
                at = deadline.current()
                if time.monotonic() > give_up or (at is not None and time.monotonic() >= at):
                    # it never reached a member (or was refused unapplied)
                    raise StoreUnavailable("etcd", f"{path}: {exc}") from exc
                self._next_member()
                self._sleep(0.05)

    def _next_member(self) -> None:
        if len(self._urls) > 1:
            self._current = (self._current + 1) % len(self._urls)

    def _pool(self) -> urllib3.HTTPConnectionPool | None:
        index = self._current
        if index not in self._pools:
            with self._pools_lock:
                if index not in self._pools:
                    self._pools[index] = self._security.pool(self._urls[index])
        return self._pools[index]

    def _post_once(
        self, path: str, body: dict[str, Any], timeout_s: float, headers: dict[str, str]
    ) -> dict[str, Any]:
        pool = self._pool() if self._given is None else None
        if pool is not None:
            return self._urlopen(pool, path, body, timeout_s, headers)
        client = self._client
        # Clients are per thread (see _client), so the timeout is this call's.
        client.timeout = (min(timeout_s, self._connect_s), timeout_s)
        try:
            reply: dict[str, Any] = client.post(client.get_url(path), json=body, headers=headers)
            return reply
        except etcd_exc.ConnectionFailedError as exc:
            detail = exc.detail_text or str(exc)
            if "refused" in detail or "establish a new connection" in detail:
                raise _Retryable(detail) from exc
            raise StoreError(f"etcd {path}: {detail.strip()}") from exc
        except etcd_exc.ConnectionTimeoutError as exc:
            detail = exc.detail_text or str(exc)
            if "connect timeout" in detail.lower():  # nothing was sent
                raise _Retryable(detail) from exc
            raise StoreError(f"etcd {path}: no answer in {timeout_s:.2f} s") from exc
        except etcd_exc.Etcd3Exception as exc:
            raise _refusal(path, body, exc.detail_text or str(exc)) from exc

    def _urlopen(
        self,
        pool: urllib3.HTTPConnectionPool,
        path: str,
        body: dict[str, Any],
        timeout_s: float,
        headers: dict[str, str],
    ) -> dict[str, Any]:
        """One call through the member's connection pool, its failures sorted
        as ``_post_once`` sorts etcd3gw's: retried only if it cannot have applied."""
        timeout = urllib3.Timeout(connect=min(timeout_s, self._connect_s), read=timeout_s)
        try:
            reply = pool.urlopen(
                "POST",
                f"/v3/{path}",
                body=json.dumps(body).encode(),
                headers={**_JSON, **headers} if headers else _JSON,
                retries=False,
                timeout=timeout,
                redirect=False,
            )
        except urllib3.exceptions.ConnectTimeoutError as exc:  # refused, unreachable: not sent
            raise _Retryable(str(exc)) from exc
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise StoreError(f"etcd {path}: no answer in {timeout_s:.2f} s") from exc
        except urllib3.exceptions.HTTPError as exc:  # reset after sending: it may have applied
            raise StoreError(f"etcd {path}: {exc}") from exc
        if reply.status != 200:
            raise _refusal(path, body, f"{reply.status} {reply.data.decode(errors='replace')}")
        found: dict[str, Any] = json.loads(reply.data)
        return found

    def _key(self, key: str) -> bytes:
        return (self._ns + key).encode()

    def _k(self, key: str) -> str:
        """The namespaced key as the gateway wants it (base64)."""
        return base64.b64encode(self._key(key)).decode()

    def _kv(self, raw: dict[str, Any]) -> KeyValue:
        key = _unb64(raw["key"])[len(self._ns) :]
        lease = raw.get("lease")
        return KeyValue(
            key,
            _unb64(raw.get("value")),
            int(raw.get("create_revision", 0)),
            int(raw.get("mod_revision", 0)),
            str(lease) if lease and lease != "0" else None,
        )

    # --- KV ------------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        reply = self._read(lambda: self._post("kv/range", {"key": self._k(key)}))
        kvs = reply.get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        start = self._key(prefix)
        body = {
            "key": base64.b64encode(start).decode(),
            "range_end": base64.b64encode(_range_end(start)).decode(),
            "sort_order": "ASCEND",
            "sort_target": "KEY",
        }
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
        out: dict[str, Any] = {"key": self._k(c.key), "result": "EQUAL"}
        if c.target == "create":
            out.update(target="CREATE", create_revision=str(c.expected))
        elif c.target == "mod":
            out.update(target="MOD", mod_revision=str(c.expected))
        else:
            out.update(target="VALUE", value=_b64(str(c.expected)))
        return out

    @property
    def txn_limit(self) -> int:
        """The most keys one transaction can compare: etcd's budget of
        ``--max-txn-ops`` operations per nesting path, less two for the
        nested writes (126 with etcd's default of 128)."""
        return self._max_ops - 2

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        plan = _TxnPlan(self, compares, success, failure, self._max_ops)
        reply = self._post("kv/txn", plan.body)
        return plan.result(reply, int(reply["header"]["revision"]))

    def txns(self, batch: Sequence[Txn]) -> list[TxnResult]:
        """As few requests as etcd's budget allows: each holds an outer
        transaction without compares whose success branch is the batch's
        transactions, nested, so each succeeds or fails on its own, at one
        revision (etcd evaluates every compare of a request before it
        applies anything). An outer level n wide leaves ``limit - n`` for
        the costliest transaction under it; what does not fit goes in the
        next request."""
        check_disjoint(batch)
        plans = [_TxnPlan(self, t.compares, t.success, (), self._max_ops) for t in batch]
        results: list[TxnResult] = []
        start = 0
        while start < len(plans):
            end, costliest = start, 0
            while (
                end < len(plans)
                and (end - start + 1) + max(costliest, plans[end].cost) <= self._max_ops
            ):
                costliest = max(costliest, plans[end].cost)
                end += 1
            if end == start:  # too costly to nest: on its own, as a plain transaction
                reply = self._post("kv/txn", plans[start].body)
                results.append(plans[start].result(reply, int(reply["header"]["revision"])))
                start += 1
                continue
            group = plans[start:end]
            reply = self._post("kv/txn", {"success": [{"request_txn": p.body} for p in group]})
            revision = int(reply["header"]["revision"])
            responses = reply.get("responses") or []
            results += [
                p.result(r.get("response_txn") or {}, revision)
                for p, r in zip(group, responses, strict=True)
            ]
            start = end
        return results

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
        body = {
            "create_request": {
                "key": base64.b64encode(start).decode(),
                "range_end": base64.b64encode(_range_end(start)).decode(),
                "start_revision": str(after_revision + 1),
            }
        }
        if timeout_s <= 0:
            # Not waiting: ask first whether anything under the prefix changed
            # at all (one small range request), and watch only if so.
            probe = self._read(
                lambda: self._post(
                    "kv/range",
                    {
                        "key": body["create_request"]["key"],
                        "range_end": body["create_request"]["range_end"],
                        "count_only": True,
                        "min_mod_revision": str(after_revision + 1),
                    },
                )
            )
            # Deletions leave no key to count: they are found by the watch
            # below unless the prefix's revision says nothing happened.
            if (
                int(probe.get("count", 0)) == 0
                and int(probe["header"]["revision"]) <= after_revision
            ):
                return []
        # A history read is a watch from a start revision: give the gateway a
        # moment to replay what already happened.
        wait = max(timeout_s, 0.2)
        url = self._client.get_url("watch")
        try:
            with self._client.session.post(
                url, json=body, stream=True, timeout=(self._timeout_s, wait)
            ) as reply:
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
                self._next_member()  # try another member next time
                raise StoreError(f"etcd watch: {exc}") from exc
        return []

    def watch(self, prefix: str, after_revision: int) -> ChangeStream:
        return EtcdWatchStream(self, prefix, after_revision)

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
            out.append(
                ServiceEntry(
                    name,
                    kv.key.rsplit("/", 1)[1],
                    info["address"],
                    info["registered_at"],
                    info["registered_at"] + info["ttl_s"],
                )
            )
        return out

    def close(self) -> None:
        """Closes the connection pools it made (a client passed in belongs
        to whoever made it)."""
        with self._pools_lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            if pool is not None:
                pool.close()


def _refusal(path: str, body: dict[str, Any], detail: str) -> Exception:
    """What an etcd refusal means, read from its text (either client): the
    lease is gone, no raft leader (nothing applied: safe to send again), an
    expired token (sign in again), or a plain StoreError."""
    if "lease not found" in detail:
        return SessionExpired(str(body.get("lease") or body.get("ID")))
    if "no leader" in detail:
        return _Retryable(detail)
    if "invalid auth token" in detail:
        return _TokenExpired(detail)
    return StoreError(f"etcd {path}: {detail.strip()[:500]}")


def _fit(n: int, floor: int, limit: int) -> int:
    """How many operations to put in each wrapper so that ``n`` operations
    fit under a transaction level at least ``floor`` wide, within etcd's
    budget: ``--max-txn-ops`` counts along every nesting path (a nested
    transaction gets what its parent's width left), so a level of width w
    with wrappers of m operations costs w + m. 0: no wrapper needed."""
    if max(floor, n) <= limit:
        return 0
    for top in range(1, limit + 1):
        m = math.ceil(n / top)
        if max(floor, top) + m <= limit:
            return m
    raise ValueError(f"etcd: {n} operations under {floor} compares exceed --max-txn-ops={limit}")


def _wrapped(ops: list[dict[str, Any]], m: int) -> list[dict[str, Any]]:
    """Runs of ``m`` operations as nested transactions without compares
    (which always take their success branch: order and effect unchanged)."""
    if not m:
        return ops
    return [{"request_txn": {"success": ops[i : i + m]}} for i in range(0, len(ops), m)]


def _unwrapped(responses: list[dict[str, Any]], m: int) -> list[dict[str, Any]]:
    if not m:
        return responses
    return [
        inner
        for wrapper in responses
        for inner in (wrapper.get("response_txn") or {}).get("responses") or []
    ]


class _TxnPlan:
    """One port transaction as an etcd request body, within etcd's budget
    of ``limit`` operations along any nesting path. The compares form one
    level (all of them must be evaluated together for the transaction to be
    all-or-nothing, so at most ``limit - 2`` keys); writes beyond the level's
    width go into nested transactions without compares. The failure branch
    runs the caller's failure ops and reads every compared key, so a failed
    transaction reports the state that made it fail."""

    def __init__(
        self,
        store: EtcdStore,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op],
        limit: int,
    ) -> None:
        self._store = store
        self._keys = list(dict.fromkeys(c.key for c in compares))
        fail_ops = [store._op(op) for op in failure] + [
            {"request_range": {"key": store._k(k)}} for k in self._keys
        ]
        self._failure_n = len(failure)
        width = max(len(compares), len(fail_ops))
        if width > limit:
            raise ValueError(f"etcd: {len(compares)} compares exceed --max-txn-ops={limit}")
        self._m = _fit(len(success), width, limit)
        body_success = _wrapped([store._op(op) for op in success], self._m)
        self.cost = max(width, len(body_success)) + self._m
        self.body: dict[str, Any] = {
            "compare": [store._compare(c) for c in compares],
            "success": body_success,
            "failure": fail_ops,
        }

    def result(self, reply: dict[str, Any], revision: int) -> TxnResult:
        if reply.get("succeeded"):  # the gateway omits it when false
            return TxnResult(True, revision)
        leaves = (reply.get("responses") or [])[self._failure_n :]
        current: dict[str, KeyValue | None] = {}
        for key, resp in zip(self._keys, leaves, strict=False):
            kvs = (resp.get("response_range") or {}).get("kvs") or []
            current[key] = self._store._kv(kvs[0]) if kvs else None
        return TxnResult(False, revision, current)


class EtcdWatchStream:
    """One long-lived etcd watch (``POST /v3/watch``, newline-delimited JSON
    on one HTTP connection) read by a background thread into a buffer.

    When the connection drops, the thread reconnects from the last revision
    it delivered (moving to another member when there are several), so a
    reconnect neither loses nor repeats a change; a compacted start revision
    ends the stream with ``WatchCompacted``. A watch that stays quiet for
    ``idle_s`` is re-created the same way, so a connection that died
    without a reset (a partition) is noticed.
    """

    def __init__(
        self, store: EtcdStore, prefix: str, after_revision: int, idle_s: float = 30.0
    ) -> None:
        self._store = store
        self._prefix = prefix
        self.position = after_revision
        self._idle_s = idle_s
        self._cond = threading.Condition()
        self._buffer: deque[list[Change] | BaseException] = deque()
        self._closed = False
        self._response: Any = None
        self.connects = 0  # connections made (tests: a reconnect happened)
        self._thread = threading.Thread(target=self._run, name=f"etcd-watch {prefix}", daemon=True)
        self._thread.start()

    def get(self, timeout_s: float) -> list[Change]:
        with self._cond:
            if not self._buffer and not self._closed:
                self._cond.wait(timeout_s)
            out: list[Change] = []
            while self._buffer:
                item = self._buffer[0]
                if isinstance(item, BaseException):
                    if out:
                        break  # deliver what came before it first
                    self._buffer.popleft()
                    raise item
                out += item
                self._buffer.popleft()
            return out

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            response = self._response
        _abort(response)

    def _push(self, item: list[Change] | BaseException) -> None:
        with self._cond:
            self._buffer.append(item)
            self._cond.notify_all()

    def _run(self) -> None:
        backoff, reported = 0.05, False
        while True:
            with self._cond:
                if self._closed:
                    return
            try:
                finished = self._stream_once()
                backoff, reported = 0.05, False
                if finished:
                    return
            except requests.exceptions.RequestException as exc:
                with self._cond:
                    if self._closed:
                        return
                if "timed out" in str(exc).lower():
                    continue  # quiet for idle_s: watch again from the same revision
                if not reported:  # once per outage: the reader keeps trying
                    self._push(StoreError(f"etcd watch {self._prefix}: {exc}"))
                    reported = True
                self._store._next_member()
                self._store._sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            except Exception:
                # close() aborts the response under the reader's feet, and
                # urllib3 then fails in ways of its own (AttributeError on a
                # released socket): expected once closed, a bug otherwise
                with self._cond:
                    if self._closed:
                        return
                raise

    def _stream_once(self) -> bool:
        """One connection; True when the stream is finished for good."""
        start = self._store._key(self._prefix)
        body: dict[str, Any] = {
            "create_request": {
                "key": base64.b64encode(start).decode(),
                "range_end": base64.b64encode(_range_end(start)).decode(),
                "start_revision": str(self.position + 1),
                "progress_notify": True,
            }
        }
        store = self._store
        session = store._security.session(store._urls[store._current])
        headers = store._headers()
        try:
            response = session.post(
                store._client.get_url("watch"),
                json=body,
                headers=headers,
                stream=True,
                timeout=(self._store._timeout_s, self._idle_s),
            )
            with self._cond:
                if self._closed:
                    _abort(response)
                    return True
                self._response = response
            self.connects += 1
            # chunk_size=None: hand each chunk over as it arrives, not per 512 bytes
            for line in response.iter_lines(chunk_size=None):  # type: ignore[call-overload]
                if not line:
                    continue
                message = json.loads(line)
                if "error" in message:
                    if "invalid auth token" in str(message["error"]):
                        store._token_expired(headers)  # the next connection signs in again
                    raise requests.exceptions.ConnectionError(str(message["error"]))
                result = message.get("result") or {}
                if result.get("compact_revision") and result.get("canceled"):
                    self._push(WatchCompacted(self.position, int(result["compact_revision"])))
                    with self._cond:
                        self._closed = True
                    return True
                events = result.get("events")
                if events:
                    changes = [self._store._change(e) for e in events]
                    self.position = max(self.position, changes[-1].revision)
                    self._push(changes)
            raise requests.exceptions.ConnectionError("the watch stream ended")
        finally:
            session.close()


def _settle_environment(session: requests.Session, url: str) -> None:
    """Read the proxy settings of the environment (HTTP_PROXY, NO_PROXY...)
    once, here, instead of on every request: requests walks the whole
    environment per request when trust_env is on (measured: ~0.45 ms of
    GIL time per etcd call, 45,000 os.environ lookups per 300 calls)."""
    session.proxies.update(requests.utils.get_environ_proxies(url))
    session.trust_env = False


def _abort(response: Any) -> None:
    """Close a streaming response now, even while another thread is blocked
    reading it: closing alone does not wake a blocked recv(); shutdown does."""
    if response is None:
        return
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        response.close()
