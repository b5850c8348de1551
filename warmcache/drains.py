"""Drains: hypervisors and racks an operator takes out of service.

A drain is a key in the store (``Keys.drain``: one hypervisor;
``Keys.rack_drain``: every hypervisor of one rack), put and removed by the
maker-checker actions ``drain_hypervisor``/``undrain_hypervisor`` and
``drain_rack``/``undrain_rack``. While a host is drained (its own drain or
its rack's) no VM is placed on it, and its pooled VMs

* ``evacuate = "now"`` (the default): are handed out no more, stop counting
  towards their pools (reported as ``drained``), are replaced elsewhere and
  retired by the next build cycle;
* ``evacuate = "as_acquired"``: stay in their pools and are handed out as
  usual; as they go, their replacements are built elsewhere, and the host
  empties.

Undraining puts the host back; whatever VMs it still holds count again,
and a pool above its target retires its surplus (``service.shrink_after_s``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

from warmcache.layout import Keys
from warmcache.ports import CoordinationStore

Evacuate = Literal["now", "as_acquired"]


class Drain(BaseModel):
    """The stored form of a drain (a drain from before ``evacuate`` existed
    reads as ``now``: its VMs were never handed out)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    at: float = 0.0
    evacuate: Evacuate = "now"
    by: str = ""

    @classmethod
    def parse(cls, value: str) -> Drain:
        """A drain key's value; the key is what drains, so a value that does
        not read (written by hand) is a drain with the defaults."""
        try:
            return cls.model_validate_json(value)
        except ValueError:
            return cls()


@dataclass(frozen=True)
class DrainKey:
    """What a key under ``Keys.drain()`` drains: one hypervisor, or a rack."""

    hypervisor: str | None = None
    rack: tuple[str, str] | None = None  # (az, rack)

    @classmethod
    def parse(cls, keys: Keys, key: str) -> DrainKey:
        tail = key[len(keys.drain()) :]
        parts = tail.split("/")
        if len(parts) == 1 and parts[0]:
            return cls(hypervisor=parts[0])
        if len(parts) == 3 and parts[0] == Keys.RACK_DRAINS and all(parts[1:]):
            return cls(rack=(parts[1], parts[2]))
        raise ValueError(f"not a drain key: {key}")


@dataclass
class Drains:
    """Every drain at one moment: what the build cycle reads once per cycle
    (``read``) and what ``inventory.DrainView`` keeps current."""

    hosts: dict[str, Drain] = field(default_factory=dict)
    racks: dict[tuple[str, str], Drain] = field(default_factory=dict)

    @classmethod
    def read(cls, store: CoordinationStore, keys: Keys) -> Drains:
        drains = cls()
        kvs, _ = store.range(keys.drain())
        for kv in kvs:
            try:
                drains.set(DrainKey.parse(keys, kv.key), Drain.parse(kv.value))
            except ValueError:
                continue  # not ours to judge: the view logs it
        return drains

    def set(self, key: DrainKey, drain: Drain | None) -> None:
        if key.hypervisor is not None:
            if drain is None:
                self.hosts.pop(key.hypervisor, None)
            else:
                self.hosts[key.hypervisor] = drain
        elif key.rack is not None:
            if drain is None:
                self.racks.pop(key.rack, None)
            else:
                self.racks[key.rack] = drain

    def of(self, hypervisor: str, az: str, rack: str) -> Drain | None:
        """The drain that applies to a host: its own, else its rack's."""
        return self.hosts.get(hypervisor) or self.racks.get((az, rack))

    def evacuating(self, hypervisor: str, az: str, rack: str) -> bool:
        drain = self.of(hypervisor, az, rack)
        return drain is not None and drain.evacuate == "now"
