"""What every instance recorded of its pools' demand, read back (the
leader's side; ``demand.ledger`` writes it)."""

from __future__ import annotations

from collections import defaultdict

from warmcache.demand.forecast import Chunk
from warmcache.layout import Keys
from warmcache.ports import CoordinationStore


class DemandRecords:
    """Demand chunks (``<prefix>/demand/<az>/<flavor>/<hour>/<node>``), read
    side; each instance writes its own (``demand.ledger``). A chunk that
    does not parse is skipped and named, never trusted."""

    def __init__(self, store: CoordinationStore, keys: Keys) -> None:
        self._store = store
        self._keys = keys

    def chunks(self, az: str) -> tuple[dict[str, list[Chunk]], list[str], list[str]]:
        """The AZ's chunks by flavor, every key read (for pruning by hour),
        and the keys that did not parse."""
        kvs, _ = self._store.range(self._keys.demand_dir(az))
        out: dict[str, list[Chunk]] = defaultdict(list)
        bad: list[str] = []
        for kv in kvs:
            flavor = Keys.tail(kv.key, 3)[0]
            try:
                out[flavor].append(Chunk.from_json(kv.value))
            except (ValueError, KeyError, TypeError):
                bad.append(kv.key)
        return dict(out), [kv.key for kv in kvs], bad

    @staticmethod
    def hour(key: str) -> float:
        """The hour a chunk's key is for."""
        return float(Keys.tail(key, 2)[0])
