"""Ports: the interfaces the core depends on. Adapters live in ``adapters/``
(and ``agent/libvirt_driver.py``) and are assembled in ``bootstrap.py`` only.

The coordination-store vocabulary (``KeyValue``, ``Compare``, ``Put``,
``Delete``, ``Change``) follows etcd's, which Consul's KV + txn + sessions can
express too: every key has a create and a modify revision from one global,
increasing counter; a transaction is all-or-nothing; a session (lease) with a
TTL owns keys and deletes them when it expires.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from warmcache.images import Image
from warmcache.model import Flavor, HostFacts, StaticNetwork


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall clock: shared by processes on a host)."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until ``event`` is set (True) or ``seconds`` of this clock pass
        (False): periodic threads wait through it so tests can drive them."""
        ...


# --- coordination store ------------------------------------------------------


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    session: str | None = None


@dataclass(frozen=True)
class Compare:
    """A transaction guard on one key.

    ``target`` is what is compared: ``mod``/``create`` revision (0 means the
    key does not exist) or ``value``.
    """

    key: str
    target: Literal["mod", "create", "value"]
    expected: int | str

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, "create", 0)

    @classmethod
    def mod_revision(cls, key: str, revision: int) -> Compare:
        return cls(key, "mod", revision)

    @classmethod
    def create_revision(cls, key: str, revision: int) -> Compare:
        return cls(key, "create", revision)

    def holds(self, kv: KeyValue | None) -> bool:
        """Whether this compare holds for ``kv`` (``None``: the key is absent)."""
        if self.target == "create":
            return (kv.create_revision if kv else 0) == self.expected
        if self.target == "mod":
            return (kv.mod_revision if kv else 0) == self.expected
        return kv is not None and kv.value == self.expected


@dataclass(frozen=True)
class Put:
    key: str
    value: str
    session: str | None = None


@dataclass(frozen=True)
class Delete:
    key: str


Op = Put | Delete


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    # On failure: the current state of every compared key (None if absent),
    # so a caller can re-plan without another round trip.
    current: Mapping[str, KeyValue | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Txn:
    """One transaction of a batch (``CoordinationStore.txns``)."""

    compares: Sequence[Compare]
    success: Sequence[Op]

    def keys(self) -> set[str]:
        return {op.key for op in self.success}


@dataclass(frozen=True)
class Change:
    revision: int
    key: str
    kind: Literal["put", "delete"]
    value: str | None


class ChangeStream(Protocol):
    """A long-lived change feed of one prefix (``CoordinationStore.watch``).

    The adapter keeps one connection open where the store can stream, and
    reconnects from the last revision it delivered when the connection
    drops, so no change is missed or repeated across a reconnect.
    """

    def get(self, timeout_s: float) -> list[Change]:
        """The next changes, oldest first, waiting up to ``timeout_s`` for
        the first; ``[]`` when none came. Raises ``WatchCompacted`` when the
        history the stream needs is gone (the stream is then finished:
        re-read the prefix and watch again) and ``StoreError`` while the
        store cannot be reached (the stream keeps reconnecting: call again).
        """
        ...

    def close(self) -> None:
        """Stop watching (idempotent); a blocked ``get`` returns."""
        ...


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    node: str
    address: str
    registered_at: float
    expires_at: float


@runtime_checkable
class CoordinationStore(Protocol):
    """KV with revisions, CAS transactions, TTL sessions, change feed, services."""

    def get(self, key: str) -> KeyValue | None: ...

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` (sorted) and the store revision read at."""
        ...

    def put(self, key: str, value: str, session: str | None = None) -> int: ...

    def delete(self, key: str) -> bool: ...

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult: ...

    @property
    def txn_limit(self) -> int | None:
        """The most keys one transaction can compare (each with up to two
        writes), or ``None`` for no limit: etcd 126 (``--max-txn-ops`` 128),
        Consul 32 (64 operations). A larger transaction raises ValueError."""
        ...

    def txns(self, batch: Sequence[Txn]) -> list[TxnResult]:
        """Independent transactions, in as few round trips as the store
        allows (etcd: nested transactions, one request). Each is
        all-or-nothing on its own and every compare is evaluated against
        the state before the batch, so their writes must touch disjoint
        keys (``ValueError`` otherwise). A ``StoreError`` means the outcome
        of every transaction of the batch is unknown: any of them may have
        been applied, or may still be."""
        ...

    def create_session(self, ttl_s: float, node: str) -> str: ...

    def renew_session(self, session_id: str) -> None:
        """Extend the session by its TTL; raises ``SessionExpired`` if gone."""
        ...

    def destroy_session(self, session_id: str) -> None:
        """End the session now and delete the keys it owns (idempotent)."""
        ...

    def changes(self, prefix: str, after_revision: int, timeout_s: float) -> list[Change]:
        """Changes under ``prefix`` with revision > ``after_revision``, oldest
        first; waits up to ``timeout_s`` for the first one (one request:
        for following a prefix, ``watch`` keeps one stream open instead)."""
        ...

    def watch(self, prefix: str, after_revision: int) -> ChangeStream:
        """Follow ``prefix`` from ``after_revision`` (exclusive) on one
        long-lived stream (see ``ChangeStream``)."""
        ...

    def register_service(self, name: str, node: str, address: str, ttl_s: float) -> None: ...

    def deregister_service(self, name: str, node: str) -> None: ...

    def services(self, name: str) -> list[ServiceEntry]: ...

    def close(self) -> None: ...


# --- flavor catalog, events ----------------------------------------------------


class FlavorCatalog(Protocol):
    """Flavors and the images they boot (DESIGN §4). The catalog keeps
    itself consistent: every flavor names a known image (or none) and a
    root disk at least its image's ``min_disk_gib``; a change that would
    break that is refused with ``InvalidRequest`` (or ``ImageInUse``) and
    changes nothing."""

    def get(self, name: str) -> Flavor | None: ...

    def put(self, flavor: Flavor) -> Flavor:
        """Add or replace a flavor (``InvalidRequest``: unknown image, or a
        disk below the image's minimum)."""
        ...

    def image(self, image_id: str) -> Image | None: ...

    def images(self) -> list[Image]: ...

    def list(self) -> list[Flavor]:  # last: below it, "list" names this method
        ...

    def put_image(self, image: Image) -> Image:
        """Add or replace an image (``InvalidRequest`` when a flavor naming
        it would fall below its new ``min_disk_gib``)."""
        ...

    def delete_image(self, image_id: str) -> bool:
        """Remove an image; ``ImageInUse`` while a flavor names it; False
        when there was none."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Event:
    type: str
    at: float
    fields: Mapping[str, Any]


class EventSink(Protocol):
    def emit(self, event: Event) -> None:
        """Record an event; must not raise on a backend problem (log it)."""
        ...

    def recent(self, limit: int = 100, type_prefix: str = "") -> list[Event]:
        """Newest first, at most ``limit``, of the types starting with
        ``type_prefix``: every sink answers it (the dashboard shows it)."""
        ...

    @property
    def dropped(self) -> int:
        """Events that could not be recorded (a full queue, a close that
        gave up); exported as ``warmcache_events_dropped``."""
        ...

    def close(self) -> None:
        """Record what is queued, then release the backend."""
        ...


class AlertSink(Protocol):
    def alert(self, subject: str, body: str) -> None:
        """Send (or queue) an alert; must not raise on a backend problem."""
        ...

    @property
    def dropped(self) -> int:
        """Alerts that could not be sent (a full queue, a close that gave up)."""
        ...

    def close(self) -> None: ...


# --- host agents -----------------------------------------------------------------


@dataclass(frozen=True)
class VmSpec:
    name: str
    flavor: Flavor
    user_data: str = ""
    group: str | None = None
    network: StaticNetwork | None = None  # its address, from the AZ's pool
    image: Image | None = None  # its flavor's image (None: a blank root disk)


@dataclass(frozen=True)
class VmStatus:
    name: str
    state: str  # libvirt-style: running, shutoff, paused, crashed, missing
    healthy: bool
    server_id: str = ""
    addresses: tuple[str, ...] = ()
    standby: str = "running"  # running | paused | saved: the state it is kept in
    image_version: str = ""  # what the guest says it booted (real guests that report it)


class HostAgent(Protocol):
    """Client side of one hypervisor's agent (Unix socket or proxy)."""

    @property
    def endpoint(self) -> str: ...

    def facts(self) -> HostFacts: ...

    def create(self, spec: VmSpec) -> VmStatus: ...

    def delete(self, name: str) -> None: ...

    def status(self, name: str) -> VmStatus: ...

    def standby(self, name: str, state: str) -> VmStatus:
        """Pause, save or resume the VM (``running``, ``paused``, ``saved``)."""
        ...

    def prefetch(self, image: Image) -> None:
        """Fetch and verify ``image`` into the host's cache now, so the
        builds that need it do not wait for it (``ImageUnavailable``,
        ``ImageInvalid`` when it cannot be had)."""
        ...

    def recycle(self, spec: VmSpec) -> VmStatus:
        """Make the VM new again where it is: a fresh root disk from
        ``spec.image``, its extra disks wiped, a new seed (a new instance
        id), booted and probed; same host, same booking and pinning. A
        failure deletes the VM (and raises)."""
        ...

    def attach_disk(self, name: str, target: str, size_gib: int, preallocation: str) -> None:
        """A new data disk for the VM (``target`` vdb..vdy), booked first."""
        ...

    def detach_disk(self, name: str, target: str) -> None:
        """Unplug and delete one of the VM's data disks, and give its room back."""
        ...

    def list(self) -> list[VmStatus]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Pinning:
    """A VM's NUMA placement: its node, and host CPU ``cpus[i]`` for vCPU i."""

    node: int
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class KernelBoot:
    """Direct kernel boot: host paths of a verified kernel (and initrd) and
    the command line; the root file system is on the VM's own disk."""

    kernel: str
    initrd: str | None
    cmdline: str


@dataclass(frozen=True)
class GuestReport:
    """What a running guest says of itself on its health channel."""

    addresses: tuple[str, ...] = ()  # address/prefix
    image_version: str = ""  # e.g. its /etc/image-version


class HypervisorDriver(Protocol):
    """Agent side: the hypervisor itself (libvirt)."""

    def define_and_start(
        self,
        spec: VmSpec,
        pinning: Pinning | None,
        devices: Sequence[str] = (),
        boot: KernelBoot | None = None,
    ) -> str:
        """Create and boot the VM (with its disks and other devices as XML:
        the first disk is its root) from ``boot``'s kernel, or else from its
        root disk (firmware boot); returns its server id (domain UUID)."""
        ...

    def attach(self, name: str, device_xml: str) -> None:
        """Hot-plug a device into the running VM (and its persistent config)."""
        ...

    def detach(self, name: str, device_xml: str) -> None: ...

    def wait_ready(self, name: str, timeout_s: float) -> None:
        """Return once the guest has booted; raise if it does not in time."""
        ...

    def probe(self, name: str) -> bool:
        """The guest's own readiness answer (not just the hypervisor's state)."""
        ...

    def guest_report(self, name: str) -> GuestReport:
        """The addresses (``address/prefix``) and image version the guest
        reports (nothing where there is no guest to ask)."""
        ...

    def destroy(self, name: str) -> None:
        """Stop and undefine (a saved image too); a missing domain is not an error."""
        ...

    def standby(self, name: str, state: str) -> None:
        """Put the VM into ``state``: ``paused`` (suspended: memory kept, no
        CPU), ``saved`` (managed save: memory written to disk, the domain
        stopped) or ``running`` (resumed, or restored from its saved image)."""
        ...

    def has_saved_image(self, name: str) -> bool: ...

    def state(self, name: str) -> str: ...

    def domains(self) -> list[str]: ...
