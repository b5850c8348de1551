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
older ones (``sweep``), all of them each cycle, in batches.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from warmcache.errors import UnknownClaim
from warmcache.layout import Keys
from warmcache.model import Mode, PoolInstance
from warmcache.ports import Compare, CoordinationStore, Delete, KeyValue, Txn


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
        at the hourly default, the folder only grew.)"""
        kvs, _ = self._store.range(self._keys.claims_dir())
        old = [kv for kv in kvs if ClaimRecord.model_validate_json(kv.value).expires_at <= now]
        gone = 0
        for start in range(0, len(old), batch):
            txns = [
                Txn([Compare.mod_revision(kv.key, kv.mod_revision)], [Delete(kv.key)])
                for kv in old[start : start + batch]
            ]
            gone += sum(1 for r in self._store.txns(txns) if r.succeeded)
        return gone
