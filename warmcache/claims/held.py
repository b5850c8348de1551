"""Who holds which VM: the holder index and the held counters.

* ``<prefix>/held/<requester>/<az>/<name>``: one key per VM handed out,
  written in the claim's transaction and removed in the one that takes the
  VM back (a release, a claim undone): ``GET /v1/vms?requester=`` and a user
  token's view of its own VMs read it without scanning the handed-out
  records.
* ``<prefix>/quotas/<requester>/held``: how many VMs a requester holds, kept
  only for requesters a ``max_held`` quota applies to
  (``warmcache.claims.quotas``), raised by the claim and lowered here, in
  the same transactions.
"""

from __future__ import annotations

from collections.abc import Sequence

from warmcache.claims.quotas import Quotas, held_given_back
from warmcache.layout import Keys
from warmcache.ports import Compare, CoordinationStore, Delete, Op, Put


class HeldIndex:
    def __init__(self, store: CoordinationStore, keys: Keys, quotas: Quotas) -> None:
        self._store = store
        self._keys = keys
        self._quotas = quotas

    def hand_out(self, requester: str, az: str, names: Sequence[str]) -> list[Put]:
        return [Put(self._keys.held(requester, az, name), "1") for name in names]

    def take_back(
        self, requester: str, az: str, names: Sequence[str]
    ) -> tuple[list[Compare], list[Op]]:
        """The compares and writes that take ``names`` back from
        ``requester`` (its counter read now: a transaction that fails on
        it is tried again by the caller)."""
        ops: list[Op] = [Delete(self._keys.held(requester, az, name)) for name in names]
        if not self._quotas.counts_held(requester):
            return [], ops
        key = self._keys.held_count(requester)
        compare, put = held_given_back(self._store.get(key), key, len(names))
        return [compare], [*ops, put]

    def names(self, requester: str) -> list[tuple[str, str]]:
        """(az, name) of every VM ``requester`` holds, by name."""
        kvs, _ = self._store.range(self._keys.held_dir(requester))
        found = []
        for kv in kvs:
            az, name = Keys.tail(kv.key, 2)
            found.append((az, name))
        return sorted(found, key=lambda item: item[1])
