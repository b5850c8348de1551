"""The acquirable VMs of one pool, indexed so that selecting ``count`` of
them costs O(count), whatever the size of the pool or the fleet.

* ``RandomSet``: a set with O(1) add, remove and uniform random sampling
  (a list plus a position map; removal swaps the last item in).
* ``Ranking``: groups (racks or hypervisors) ranked by how many VMs they
  hold. Every change moves one group by +1 or -1, so the ranks are a
  doubly linked list of count buckets (the O(1) LFU layout): an update is
  O(1), and the ``k`` largest groups come out in O(k), random among ties.
* ``Stock``: the VMs by rack and by hypervisor, with a ``Ranking`` of each.

Pure data structures: no I/O, no clock, no locks (``PoolIndex`` holds the
lock).
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class RandomSet(Generic[T]):
    __slots__ = ("_items", "_pos")

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._items: list[T] = []
        self._pos: dict[T, int] = {}
        for item in items:
            self.add(item)

    def add(self, item: T) -> bool:
        if item in self._pos:
            return False
        self._pos[item] = len(self._items)
        self._items.append(item)
        return True

    def remove(self, item: T) -> bool:
        pos = self._pos.pop(item, None)
        if pos is None:
            return False
        last = self._items.pop()
        if pos < len(self._items):
            self._items[pos] = last
            self._pos[last] = pos
        return True

    def sample(self, k: int, rng: random.Random) -> list[T]:
        """``k`` distinct members, uniformly at random (O(k) for small k)."""
        return rng.sample(self._items, k)

    def __contains__(self, item: object) -> bool:
        return item in self._pos

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))


class _Bucket(Generic[T]):
    __slots__ = ("count", "groups", "higher", "lower")

    def __init__(self, count: int) -> None:
        self.count = count
        self.groups: RandomSet[T] = RandomSet()
        self.higher: _Bucket[T] | None = None
        self.lower: _Bucket[T] | None = None


class Ranking(Generic[T]):
    """Groups by size; ``incr``/``decr`` by one in O(1), ``top(k)`` in O(k)."""

    def __init__(self) -> None:
        self._count: dict[T, int] = {}
        self._buckets: dict[int, _Bucket[T]] = {}
        self._top: _Bucket[T] | None = None  # largest count
        self._bottom: _Bucket[T] | None = None

    def __len__(self) -> int:
        """Groups with at least one member."""
        return len(self._count)

    def count(self, group: T) -> int:
        return self._count.get(group, 0)

    def incr(self, group: T) -> None:
        old = self._count.get(group, 0)
        below = self._buckets.get(old) if old else None
        bucket = self._buckets.get(old + 1) or self._insert_above(old + 1, below)
        bucket.groups.add(group)
        self._count[group] = old + 1
        if below is not None:
            self._leave(below, group)

    def decr(self, group: T) -> None:
        old = self._count.get(group, 0)
        if old == 0:
            raise KeyError(group)
        current = self._buckets[old]
        if old == 1:
            del self._count[group]
        else:
            target = self._buckets.get(old - 1) or self._insert_below(old - 1, current)
            target.groups.add(group)
            self._count[group] = old - 1
        self._leave(current, group)

    def top(self, k: int, rng: random.Random) -> list[T]:
        """The ``k`` largest groups (fewer if there are fewer), largest
        first; groups of equal size are taken in random order."""
        out: list[T] = []
        bucket = self._top
        while bucket is not None and len(out) < k:
            out += bucket.groups.sample(min(k - len(out), len(bucket.groups)), rng)
            bucket = bucket.lower
        return out

    def descending(self) -> Iterator[tuple[int, list[T]]]:
        """(count, groups) from the largest count down (for full scans)."""
        bucket = self._top
        while bucket is not None:
            yield bucket.count, list(bucket.groups)
            bucket = bucket.lower

    # --- the linked list of buckets ------------------------------------------------

    def _insert_above(self, count: int, below: _Bucket[T] | None) -> _Bucket[T]:
        """A new bucket just above ``below`` (None: at the bottom)."""
        bucket: _Bucket[T] = _Bucket(count)
        above = below.higher if below is not None else self._bottom
        bucket.lower, bucket.higher = below, above
        if below is not None:
            below.higher = bucket
        else:
            self._bottom = bucket
        if above is not None:
            above.lower = bucket
        else:
            self._top = bucket
        self._buckets[count] = bucket
        return bucket

    def _insert_below(self, count: int, above: _Bucket[T]) -> _Bucket[T]:
        return self._insert_above(count, above.lower)

    def _leave(self, bucket: _Bucket[T], group: T) -> None:
        bucket.groups.remove(group)
        if len(bucket.groups):
            return
        if bucket.lower is not None:
            bucket.lower.higher = bucket.higher
        else:
            self._bottom = bucket.higher
        if bucket.higher is not None:
            bucket.higher.lower = bucket.lower
        else:
            self._top = bucket.lower
        del self._buckets[bucket.count]


class Stock:
    """The acquirable VMs (by name) of one pool, by rack and by hypervisor."""

    __slots__ = ("_by_hv", "_by_rack", "_size", "hypervisors", "racks")

    def __init__(self) -> None:
        self.racks: Ranking[str] = Ranking()
        self.hypervisors: Ranking[str] = Ranking()
        self._by_rack: dict[str, RandomSet[str]] = {}
        self._by_hv: dict[str, RandomSet[str]] = {}
        self._size = 0

    @classmethod
    def of(cls, vms: Iterable[tuple[str, str, str]]) -> Stock:
        """From (name, rack, hypervisor) triples (tests, explanations)."""
        stock = cls()
        for name, rack, hv in vms:
            stock.add(name, rack, hv)
        return stock

    def __len__(self) -> int:
        return self._size

    def add(self, name: str, rack: str, hv: str) -> None:
        members = self._by_hv.setdefault(hv, RandomSet())
        if not members.add(name):
            return
        self._by_rack.setdefault(rack, RandomSet()).add(name)
        self.hypervisors.incr(hv)
        self.racks.incr(rack)
        self._size += 1

    def remove(self, name: str, rack: str, hv: str) -> None:
        members = self._by_hv.get(hv)
        if members is None or not members.remove(name):
            return
        if not members:
            del self._by_hv[hv]
        in_rack = self._by_rack[rack]
        in_rack.remove(name)
        if not in_rack:
            del self._by_rack[rack]
        self.hypervisors.decr(hv)
        self.racks.decr(rack)
        self._size -= 1

    def members(self) -> set[str]:
        """Every VM in the stock (O(size): tests and explanations)."""
        return {name for names in self._by_hv.values() for name in names}

    def on_rack(self, rack: str) -> RandomSet[str]:
        return self._by_rack[rack]

    def on_hypervisor(self, hv: str) -> RandomSet[str]:
        return self._by_hv[hv]
