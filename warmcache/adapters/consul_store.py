"""ConsulStore: the coordination-store port on Consul (py-consul).

NOT tested against a live Consul here (none can be installed on the
project's machines); it runs the same contract suite as SQLite and etcd
whenever ``WARMCACHE_TEST_CONSUL=http://host:8500`` is set.

How the port maps onto Consul:

* revisions are Consul's Raft indexes: a key's ``CreateIndex`` and
  ``ModifyIndex``; ``range`` reports the ``X-Consul-Index`` it read at;
* a transaction is ``/v1/txn`` (at most 64 operations, all or nothing).
  Compares become ``check-not-exists`` / ``check-index``; a compare and a
  write on the same key fuse into one ``cas`` / ``delete-cas``, so an
  acquisition of up to 32 VMs fits. Consul has no failure branch: passing
  ``failure`` operations is refused;
* a create-revision compare is a ``check-index`` on the key. That is exact
  for the keys it is used on, the leader lock: it is created by a session
  acquire and never modified, and deleted (sessions use ``behavior=delete``)
  when released or expired, so its ``ModifyIndex`` equals its
  ``CreateIndex`` for its whole life and a new acquisition is a new key
  with a new index. This is the fencing token; ``LockIndex`` and
  ``check-session`` are not needed on top of it;
* sessions have a TTL (Consul: 10 s to 24 h; may be reaped only after up
  to 2 x TTL), ``lock_delay=0`` (fencing makes the stock 15 s unnecessary)
  and ``behavior=delete``;
* the change feed is a blocking query on the prefix with the last
  ``X-Consul-Index``, diffed against the previous answer (``watch`` keeps
  the index and the state per stream): Consul keeps state, not history, so
  several changes of one key between two reads arrive as its latest state;
* a batch of transactions (``txns``) is merged into as few ``/v1/txn``
  calls as fit in 64 operations; Consul has no nested transactions, so a
  failed merge is retried without the transactions whose compares failed;
* services are agent services with a TTL check, read back from
  ``/v1/health/service`` (passing only).

A client passed in is never closed by this adapter.
"""

from __future__ import annotations

import base64
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlparse

from warmcache import deadline
from warmcache.adapters.retries import ReadRetry
from warmcache.adapters.txn_batches import merged_txns
from warmcache.errors import SessionExpired, StoreError, StoreUnavailable
from warmcache.ports import (
    Change,
    ChangeStream,
    Compare,
    Delete,
    KeyValue,
    Op,
    Put,
    ServiceEntry,
    Txn,
    TxnResult,
)

try:
    import consul
    import requests

    # py-consul exports ConsulException and NotFound at the top, not ClientError.
    from consul.exceptions import ClientError
except ImportError:  # pragma: no cover - only without the extra
    consul = None
    requests = None  # type: ignore[assignment]
    ClientError = Exception

T = TypeVar("T")
INDEX_PROBE = "warmcache-index-probe"  # never written: read for the index it reports
MAX_TXN_OPS = 64
MIN_SESSION_TTL_S = 10


def txn_payload(
    namespace: str,
    compares: Sequence[Compare],
    ops: Sequence[Op],
    current_values: Mapping[str, KeyValue | None] | None = None,
) -> list[dict[str, Any]]:
    """Translate a port transaction into Consul txn operations (pure).

    ``current_values`` must hold the current entry of every key with a
    ``value`` compare (Consul cannot compare values: the value is checked
    here and its ``ModifyIndex`` pinned in the transaction).
    """
    checks: dict[str, int] = {}  # key -> required ModifyIndex (0: must not exist)
    for c in compares:
        if c.target == "value":
            current = (current_values or {}).get(c.key)
            if current is None or current.value != c.expected:
                raise _CompareFailed(c.key)
            index = current.mod_revision
        else:
            index = int(c.expected)
        if checks.get(c.key, index) != index:
            raise _CompareFailed(c.key)  # two compares that cannot both hold
        checks[c.key] = index
    payload: list[dict[str, Any]] = []
    fused: set[str] = set()
    for op in ops:
        entry: dict[str, Any] = {"Key": namespace + op.key}
        check = checks.get(op.key)
        if isinstance(op, Put):
            entry["Value"] = base64.b64encode(op.value.encode()).decode()
            if op.session is not None:
                entry.update(Verb="lock", Session=op.session)
            elif check is not None:
                entry.update(Verb="cas", Index=check)  # Index 0: only if absent
                fused.add(op.key)
            else:
                entry["Verb"] = "set"
        elif check is not None and check > 0:
            entry.update(Verb="delete-cas", Index=check)
            fused.add(op.key)
        else:
            entry["Verb"] = "delete"
        payload.append({"KV": entry})
    guards = [
        {"KV": {"Verb": "check-index", "Key": namespace + key, "Index": index}}
        if index
        else {"KV": {"Verb": "check-not-exists", "Key": namespace + key}}
        for key, index in checks.items()
        if key not in fused
    ]
    payload = guards + payload
    if len(payload) > MAX_TXN_OPS:
        raise ValueError(
            f"consul: a transaction takes at most {MAX_TXN_OPS} operations, "
            f"this one needs {len(payload)} (acquire fewer VMs at once)"
        )
    return payload


def _refused(exc: BaseException) -> bool:
    """The connection was never made (so the request was never sent)."""
    text = str(exc).lower()
    return "refused" in text or "establish a new connection" in text


class _CompareFailed(Exception):
    pass


class ConsulStore:
    def __init__(
        self,
        url: str = "",
        *,
        token: str = "",
        namespace: str = "",
        client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        ca: str = "",
        cert: str = "",
        key: str = "",
    ) -> None:
        if consul is None:
            raise StoreError("py-consul is not installed: pip install 'warmcache[consul]'")
        if client is None:
            parsed = urlparse(url or "http://127.0.0.1:8500")
            client = consul.Consul(
                host=parsed.hostname or "127.0.0.1",
                port=parsed.port or 8500,
                scheme=parsed.scheme or "http",
                token=token or None,
                verify=ca or True,  # https: the given CA bundle, else the system's
                cert=(cert, key) if cert else None,
            )
        self._c = client
        self._read = ReadRetry(sleep)
        self._ns = namespace
        self._sleep = sleep
        self._snapshots: dict[tuple[int, str], dict[str, int]] = {}
        self._lock = threading.Lock()

    @staticmethod
    @contextlib.contextmanager
    def _translated(what: str, session: str = "") -> Iterator[None]:
        """The one translation of py-consul's errors into the port's, most
        specific first: a session Consul does not know is ``SessionExpired``;
        a connection that could not be made is ``StoreUnavailable`` (nothing
        was sent); any other failure is a ``StoreError``, whose outcome the
        caller treats as unknown."""
        # The request's deadline is checked before each call (py-consul's
        # client is shared by threads, so a call keeps the client's timeout).
        deadline.remaining(1e9, "consul")
        try:
            yield
        except consul.NotFound as exc:
            if session:
                raise SessionExpired(session) from exc
            raise StoreError(f"consul {what}: {exc}") from exc
        except ClientError as exc:
            if "invalid session" in str(exc).lower():
                raise SessionExpired(session or "?") from exc
            raise StoreError(f"consul {what}: {exc}") from exc
        except consul.ConsulException as exc:
            raise StoreError(f"consul {what}: {exc}") from exc
        except requests.ConnectionError as exc:
            if isinstance(exc, requests.ConnectTimeout) or _refused(exc):
                raise StoreUnavailable("consul", f"{what}: {exc}") from exc
            raise StoreError(f"consul {what}: {exc}") from exc
        except requests.RequestException as exc:
            raise StoreError(f"consul {what}: {exc}") from exc

    def _call(self, fn: Callable[[], T], what: str = "request") -> T:
        with self._translated(what):
            return fn()

    def _kv(self, item: dict[str, Any]) -> KeyValue:
        raw = item.get("Value")
        value = raw.decode() if isinstance(raw, bytes) else (raw or "")
        return KeyValue(
            item["Key"][len(self._ns) :],
            value,
            int(item["CreateIndex"]),
            int(item["ModifyIndex"]),
            item.get("Session"),
        )

    # --- KV ----------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        _, item = self._read(lambda: self._call(lambda: self._c.kv.get(self._ns + key), "get"))
        return self._kv(item) if item else None

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        index, items = self._read(
            lambda: self._call(lambda: self._c.kv.get(self._ns + prefix, recurse=True), "range")
        )
        kvs = sorted((self._kv(i) for i in items or []), key=lambda kv: kv.key)
        return kvs, int(index)

    def put(self, key: str, value: str, session: str | None = None) -> int:
        return self.txn([], [Put(key, value, session)]).revision

    def delete(self, key: str) -> bool:
        existed = self.get(key) is not None
        self.txn([], [Delete(key)])
        return existed

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        deadline.remaining(1e9, "consul")  # past the request's deadline: send nothing
        if failure:
            raise StoreError("consul: transactions have no failure branch")
        values = {c.key: self.get(c.key) for c in compares if c.target == "value"}
        try:
            payload = txn_payload(self._ns, compares, success, values)
        except _CompareFailed:
            return self._failed(compares)
        if not payload:
            return TxnResult(True, self._revision())
        session = next((op.session for op in success if isinstance(op, Put) and op.session), "")
        try:
            with self._translated("txn", session):
                reply = self._c.txn.put(payload)
        except StoreError as exc:
            # Consul's 409: a compare failed, nothing applied
            if isinstance(exc.__cause__, ClientError) and str(exc.__cause__).startswith("409"):
                return self._failed(compares)
            raise
        indexes = [
            int(r["KV"]["ModifyIndex"]) for r in (reply or {}).get("Results") or [] if r.get("KV")
        ]
        return TxnResult(True, max(indexes) if indexes else self._revision())

    # 64 operations: a key compared and deleted fuses into one delete-cas,
    # plus one write elsewhere.
    txn_limit = MAX_TXN_OPS // 2

    def txns(self, batch: Sequence[Txn]) -> list[TxnResult]:
        """Consul has no nested transactions: merged plain transactions,
        retried without those whose compares failed (``merged_txns``)."""
        return merged_txns(
            self.txn,
            batch,
            MAX_TXN_OPS,
            lambda t: (
                len(txn_payload(self._ns, [], t.success))
                + len({c.key for c in t.compares} - t.keys())
            ),
        )

    def _failed(self, compares: Sequence[Compare]) -> TxnResult:
        # Consul reports which operation failed, not the state: read it (not
        # atomically with the transaction; callers use it only to re-plan).
        current = {c.key: self.get(c.key) for c in compares}
        return TxnResult(False, self._revision(), current)

    def _revision(self) -> int:
        """The KV store's current index: what a read of one (absent) key
        reports. Never a recursive read of the namespace, which with the
        default empty namespace would read every key in the cluster."""
        index, _ = self._call(lambda: self._c.kv.get(self._ns + INDEX_PROBE))
        return int(index)

    # --- sessions ------------------------------------------------------------------------

    def create_session(self, ttl_s: float, node: str) -> str:
        ttl = max(MIN_SESSION_TTL_S, math.ceil(ttl_s))
        session: str = self._call(
            lambda: self._c.session.create(
                name=f"warmcache-{node}", ttl=ttl, lock_delay=0, behavior="delete"
            )
        )
        return session

    def renew_session(self, session_id: str) -> None:
        with self._translated("session renew", session_id):
            reply = self._c.session.renew(session_id)
        if not reply:
            raise SessionExpired(session_id)

    def destroy_session(self, session_id: str) -> None:
        self._call(lambda: self._c.session.destroy(session_id))

    # --- change feed -------------------------------------------------------------------

    def changes(self, prefix: str, after_revision: int, timeout_s: float) -> list[Change]:
        snap_key = (threading.get_ident(), prefix)
        with self._lock:
            before = self._snapshots.get(snap_key)
        index, now = self._blocking_read(
            prefix, after_revision if before is not None and timeout_s > 0 else None, timeout_s
        )
        with self._lock:
            self._snapshots[snap_key] = {k: kv.mod_revision for k, kv in now.items()}
        return diff_states(before, now, after_revision, index)

    def _blocking_read(
        self, prefix: str, index: int | None, timeout_s: float
    ) -> tuple[int, dict[str, KeyValue]]:
        """A blocking query: returns when the prefix changes past ``index``
        or after ``timeout_s`` (Consul rounds the wait up to a second)."""
        wait = f"{max(1, math.ceil(timeout_s))}s"
        got, items = self._call(
            lambda: self._c.kv.get(self._ns + prefix, recurse=True, index=index, wait=wait)
        )
        return int(got), {kv.key: kv for kv in (self._kv(i) for i in items or [])}

    def watch(self, prefix: str, after_revision: int) -> ChangeStream:
        return ConsulWatchStream(self, prefix, after_revision)

    # --- services ----------------------------------------------------------------------

    def register_service(self, name: str, node: str, address: str, ttl_s: float) -> None:
        service_id = f"{name}-{node}"
        ttl = f"{max(1, math.ceil(ttl_s))}s"
        self._call(
            lambda: self._c.agent.service.register(
                name,
                service_id=service_id,
                address=address,
                check={"ttl": ttl, "DeregisterCriticalServiceAfter": "1m"},
            )
        )
        self._call(lambda: self._c.agent.check.ttl_pass(f"service:{service_id}"))

    def deregister_service(self, name: str, node: str) -> None:
        self._call(lambda: self._c.agent.service.deregister(f"{name}-{node}"))

    def services(self, name: str) -> list[ServiceEntry]:
        _, entries = self._read(
            lambda: self._call(lambda: self._c.health.service(name, passing=True), "services")
        )
        now = time.time()
        out = []
        for entry in entries or []:
            service = entry["Service"]
            node = (
                service["ID"][len(name) + 1 :] if service["ID"].startswith(name) else service["ID"]
            )
            out.append(ServiceEntry(name, node, service.get("Address", ""), now, now))
        return sorted(out, key=lambda s: s.node)

    def close(self) -> None:
        """The client belongs to whoever made it; nothing to release here."""


def diff_states(
    before: dict[str, int] | None, now: dict[str, KeyValue], after_revision: int, index: int
) -> list[Change]:
    """Changes between two states of a prefix (Consul keeps state, not
    history): keys modified past ``after_revision``, and keys gone since
    ``before`` (dated at the query's ``index``). Pure."""
    out = [
        Change(kv.mod_revision, k, "put", kv.value)
        for k, kv in now.items()
        if kv.mod_revision > after_revision
    ]
    out += [
        Change(index, k, "delete", None)
        for k in (before or {})
        if k not in now and index > after_revision
    ]
    return sorted(out, key=lambda c: (c.revision, c.key))


class ConsulWatchStream:
    """Blocking queries on the prefix with the last ``X-Consul-Index``: each
    returns as soon as something under the prefix changed, and is diffed
    against the state the stream saw before."""

    def __init__(self, store: ConsulStore, prefix: str, after_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self.position = after_revision
        self._index: int | None = None
        self._state: dict[str, int] | None = None
        self._closed = False

    def get(self, timeout_s: float) -> list[Change]:
        if self._closed:
            return []
        index, now = self._store._blocking_read(self._prefix, self._index, timeout_s)
        changes = diff_states(self._state, now, self.position, index)
        if index < (self._index or 0):
            index = 0  # Consul's index went backwards (a restore): start over
        self._index, self._state = index, {k: kv.mod_revision for k, kv in now.items()}
        if changes:
            self.position = max(self.position, changes[-1].revision)
        return changes

    def close(self) -> None:
        self._closed = True
