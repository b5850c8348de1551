"""Quota limits in the store, followed live by every instance.

Each requester's limits are one key, ``<prefix>/quota-limits/<requester>``
(``Keys.quota_limit``), holding a ``QuotaEntry``. ``QuotaLimitsView``
follows the folder like every other view: a change (``PUT`` or ``DELETE
/v1/quotas/<requester>``, both maker-checker) reaches the ``Quotas`` of
every instance within the change feed's delay, and applies from the next
acquisition on, with no restart. The config file's ``[[quotas.limits]]``
seed the store: a requester that has no key gets the file's limits when an
instance starts; once a key exists, the store is the truth (an operator's
change is never undone by an instance's restart).

Counting starts when a limit exists: a ``max_held`` set on a requester
that already holds VMs counts those handed out from then on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from warmcache.config import QuotaLimit
from warmcache.layout import Keys
from warmcache.ports import Compare, CoordinationStore, Put
from warmcache.views import PrefixView

# A requester's name as a key (and a URL path segment): a token's name, or "*".
REQUESTER_PATTERN = r"^(\*|[A-Za-z0-9][A-Za-z0-9._@-]{0,99})$"


class QuotaEntry(BaseModel):
    """One requester's limits, as stored (each limit's ``requester`` is
    the entry's)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    requester: str = Field(pattern=REQUESTER_PATTERN)
    limits: tuple[QuotaLimit, ...]
    set_at: float = 0.0
    by: str = ""


class QuotaLimitsView(PrefixView[QuotaEntry]):
    """Every requester's limits; ``on_change`` hears all of them after each
    change (O(limits): a handful per requester)."""

    def __init__(
        self,
        store: CoordinationStore,
        keys: Keys,
        on_change: Callable[[tuple[QuotaLimit, ...]], None],
    ) -> None:
        self._on_change = on_change
        self._entries: dict[str, QuotaEntry] = {}
        super().__init__(
            store, keys.quota_limits_dir(), lambda _k, v: QuotaEntry.model_validate_json(v)
        )

    def _changed(self, key: str, old: QuotaEntry | None, new: QuotaEntry | None) -> None:
        if old is not None:
            self._entries.pop(old.requester, None)
        if new is not None:
            self._entries[new.requester] = new
        self._on_change(tuple(q for e in self._entries.values() for q in e.limits))

    def entries(self) -> list[QuotaEntry]:
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: e.requester)

    def get(self, requester: str) -> QuotaEntry | None:
        with self._lock:
            return self._entries.get(requester)


def entry(requester: str, limits: Iterable[QuotaLimit], at: float, by: str) -> QuotaEntry:
    """The entry of ``requester`` (each limit made its own)."""
    own = tuple(q.model_copy(update={"requester": requester}) for q in limits)
    return QuotaEntry(requester=requester, limits=own, set_at=at, by=by)


def seed(store: CoordinationStore, keys: Keys, limits: Sequence[QuotaLimit], at: float) -> int:
    """Put the config file's limits of each requester that has no key yet
    (create-only: a key an operator set, or another instance seeded, stays).
    Returns how many requesters were seeded."""
    by_requester: dict[str, list[QuotaLimit]] = {}
    for q in limits:
        by_requester.setdefault(q.requester, []).append(q)
    seeded = 0
    for requester, own in sorted(by_requester.items()):
        key = keys.quota_limit(requester)
        value = entry(requester, own, at, "config").model_dump_json()
        seeded += int(store.txn([Compare.absent(key)], [Put(key, value)]).succeeded)
    return seeded
