"""Named claims (idempotent acquisitions, DESIGN.md §8): a caller that names
its claim (``claim_id``, Stripe's idempotency key) can repeat the request
after a timeout and get the VMs of the claim that landed, never a second
claim.

The record of a named claim, ``<prefix>/claims/<claim_id>``, is written in
the claim's own transaction, on the condition that it does not exist yet:
so the VMs move to ``acquired`` if and only if the record appears, and two
requests with one id (on one instance or on two) cannot both land. A repeat
whose transaction fails on that condition reads the record from the failed
transaction's reply and returns its VMs (or ``ClaimMismatch`` when the
request differs). A claim that never landed (``no_capacity``, contention,
``store_unavailable``) leaves no record, so the id can be retried.

Records are kept at least ``service.claim_retention_s``; the leader deletes
older ones (``sweep``), all of them each sweep, in batches. The claim's
transaction also writes an expiry index key,
``<prefix>/claim-expiry/<bucket>/<claim_id>`` (buckets of ``BUCKET_S`` of
expiry time), so a sweep reads only the buckets that have expired since
the last one, not the whole folder: the first sweep of an instance reads
everything once (records written before the index, buckets another leader
left), then only what expired.
"""

from __future__ import annotations

import logging
import math

from pydantic import BaseModel, ConfigDict

from warmcache.errors import UnknownClaim
from warmcache.layout import Keys
from warmcache.model import Mode, PoolInstance
from warmcache.ports import Compare, CoordinationStore, Delete, KeyValue, Txn

log = logging.getLogger(__name__)
BUCKET_S = 300.0  # expiry index: one folder per 5 minutes of expiry time
MAX_BUCKETS = 2016  # a week of buckets since the last sweep: read everything instead


class ClaimRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    claim_id: str
    requester: str
    flavor: str
    az: str
    count: int
    mode: Mode
    acquired_at: float
    expires_at: float
    vms: list[PoolInstance]

    def differs(self, flavor: str, az: str, count: int, mode: Mode, requester: str) -> list[str]:
        """What of a request is not what this claim was made for."""
        asked = {"flavor": flavor, "az": az, "count": count, "mode": mode, "requester": requester}
        return [name for name, value in asked.items() if getattr(self, name) != value]


class ClaimLog:
    def __init__(self, store: CoordinationStore, keys: Keys) -> None:
        self._store = store
        self._keys = keys
        self._swept: int | None = None  # every bucket up to here is swept

    def expiry_key(self, claim_id: str, expires_at: float) -> str:
        """The index key written with the record (same transaction)."""
        return self._keys.claim_expiry(math.floor(expires_at / BUCKET_S), claim_id)

    def key(self, claim_id: str) -> str:
        return self._keys.claim(claim_id)

    def get(self, claim_id: str) -> ClaimRecord:
        """The record of a claim that landed; ``UnknownClaim`` if none did
        (or it was swept after its retention)."""
        kv = self._store.get(self._keys.claim(claim_id))
        if kv is None:
            raise UnknownClaim(claim_id)
        return self.parse(kv)

    @staticmethod
    def parse(kv: KeyValue) -> ClaimRecord:
        return ClaimRecord.model_validate_json(kv.value)

    def sweep(self, now: float, batch: int = 1000) -> int:
        """Delete every record past its retention, each only if unchanged
        since read, ``batch`` per store round trip; returns how many went.
        (It removed at most 1,000 a cycle: past ~24,000 named claims a day
        at the hourly default, the folder only grew; and it read the whole
        folder each time: now only the expiry buckets that ended since.)"""
        done = math.floor(now / BUCKET_S) - 1  # the last bucket wholly past
        if self._swept is None or done - self._swept > MAX_BUCKETS:
            gone = self._sweep_all(now, done, batch)
        else:
            gone = sum(
                self._sweep_bucket(bucket, batch) for bucket in range(self._swept + 1, done + 1)
            )
        self._swept = done if self._swept is None else max(self._swept, done)
        return gone

    def _sweep_bucket(self, bucket: int, batch: int) -> int:
        """A bucket wholly past: each record goes with its index key if it
        is the one the key was written with (same revision); index keys of
        records already gone (released) or written again go alone."""
        kvs, _ = self._store.range(self._keys.claim_expiry_dir(bucket))
        gone = 0
        for start in range(0, len(kvs), batch):
            chunk = kvs[start : start + batch]
            records = [self.key(kv.key.rsplit("/", 1)[1]) for kv in chunk]
            txns = [
                Txn(
                    [Compare.mod_revision(record, kv.mod_revision)],
                    [Delete(record), Delete(kv.key)],
                )
                for record, kv in zip(records, chunk, strict=True)
            ]
            results = self._store.txns(txns)
            gone += sum(1 for r in results if r.succeeded)
            left = [kv for kv, r in zip(chunk, results, strict=True) if not r.succeeded]
            if left:
                self._store.txns([Txn([], [Delete(kv.key)]) for kv in left])
        return gone

    def _sweep_all(self, now: float, done: int, batch: int) -> int:
        """The whole folder and index, once: records past their retention
        (with or without an index key), and index keys of buckets past."""
        kvs, _ = self._store.range(self._keys.claims_dir())
        old = [kv for kv in kvs if ClaimRecord.model_validate_json(kv.value).expires_at <= now]
        gone = 0
        for start in range(0, len(old), batch):
            txns = [
                Txn([Compare.mod_revision(kv.key, kv.mod_revision)], [Delete(kv.key)])
                for kv in old[start : start + batch]
            ]
            gone += sum(1 for r in self._store.txns(txns) if r.succeeded)
        index, _ = self._store.range(self._keys.claim_expiry_dir())
        root = len(self._keys.claim_expiry_dir())
        past = [kv for kv in index if _bucket(kv.key[root:]) <= done]
        for start in range(0, len(past), batch):
            self._store.txns([Txn([], [Delete(kv.key)]) for kv in past[start : start + batch]])
        log.info("claim sweep read it all: %d records, %d index keys", len(kvs), len(index))
        return gone


def _bucket(rest: str) -> int:
    """The bucket of an index key (past its folder); a key not of ours: 0."""
    try:
        return int(rest.split("/", 1)[0])
    except ValueError:
        return 0
