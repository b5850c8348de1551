"""Looking VMs up: every tracked VM, in whatever state, by name, by holder,
or listed with filters.

A VM's record is in one of three folders per AZ (``pool``, ``acquired``,
``releasing``: ``warmcache.layout``), so a lookup by name is at most three
point reads per AZ, handed-out VMs first; VMs by holder come from the holder
index (``warmcache.claims.held``). Neither scans a folder. Listing everything
(an admin's ``GET /v1/vms`` without a holder) reads the folders of the AZs
asked for; pages are in name order, ``after`` the last name of the page
before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from warmcache.claims.held import HeldIndex
from warmcache.errors import InvalidRequest, UnknownVm
from warmcache.layout import Keys, Stored, _read
from warmcache.model import InstanceState, PoolInstance, is_valid_name
from warmcache.ports import CoordinationStore

Folder = Literal["acquired", "releasing", "pool"]
MAX_PAGE = 1000

# The folder each state's records are in.
FOLDER_OF: dict[InstanceState, Folder] = {
    InstanceState.ACQUIRED: "acquired",
    InstanceState.RELEASING: "releasing",
    InstanceState.RECYCLING: "releasing",
}


@dataclass(frozen=True)
class Found:
    folder: Folder
    key: str
    revision: int
    record: PoolInstance


def find_vm(store: CoordinationStore, keys: Keys, azs: Iterable[str], name: str) -> Found | None:
    """A VM's record in any of ``azs``, wherever it is (handed out first),
    or None (a malformed name too): at most three point reads per AZ."""
    if not is_valid_name(name):
        return None
    folders: tuple[tuple[Folder, Callable[[str, str], str]], ...] = (
        ("acquired", keys.acquired),
        ("releasing", keys.releasing),
        ("pool", keys.pool),
    )
    for zone in sorted(set(azs)):
        for folder, key_of in folders:
            key = key_of(zone, name)
            kv = store.get(key)
            if kv is not None:
                return Found(
                    folder, key, kv.mod_revision, PoolInstance.model_validate_json(kv.value)
                )
    return None


class VmBook:
    def __init__(
        self,
        store: CoordinationStore,
        keys: Keys,
        azs: Callable[[], Iterable[str]],
        held: HeldIndex,
    ) -> None:
        self._store = store
        self._keys = keys
        self._azs = azs
        self._held = held

    def _key(self, folder: Folder, az: str, name: str) -> str:
        if folder == "acquired":
            return self._keys.acquired(az, name)
        if folder == "releasing":
            return self._keys.releasing(az, name)
        return self._keys.pool(az, name)

    def _dir(self, folder: Folder, az: str) -> str:
        if folder == "acquired":
            return self._keys.acquired_dir(az)
        if folder == "releasing":
            return self._keys.releasing_dir(az)
        return self._keys.pool_dir(az)

    def find(self, name: str, az: str | None = None) -> Found | None:
        """The VM's record wherever it is, or None (a malformed name too)."""
        return find_vm(self._store, self._keys, [az] if az else self._azs(), name)

    def get(self, name: str, viewer: str | None = None) -> Found:
        """``UnknownVm`` when there is none, or when ``viewer`` (a user
        token's requester) does not hold it: nobody learns of VMs not theirs."""
        found = self.find(name)
        if found is None or (viewer is not None and found.record.acquired_by != viewer):
            raise UnknownVm(name)
        if viewer is not None and found.folder != "acquired":
            raise UnknownVm(name)  # given back: no longer the viewer's
        return found

    def list(
        self,
        *,
        state: InstanceState | None = None,
        requester: str | None = None,
        az: str | None = None,
        flavor: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> tuple[list[PoolInstance], str | None]:
        """A page of VMs in name order, and the name to ask ``after`` for the
        next page (None: this was the last)."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}, got {limit}")

        def wanted(r: PoolInstance) -> bool:
            return (state is None or r.state is state) and (flavor is None or r.flavor == flavor)

        if requester is not None:
            # in name order from the index, one read per VM, up to the page
            page = []
            for zone, name in self._held.names(requester):
                if (az is not None and zone != az) or (after is not None and name <= after):
                    continue
                kv = self._store.get(self._keys.acquired(zone, name))
                record = PoolInstance.model_validate_json(kv.value) if kv else None
                if record is not None and record.acquired_by == requester and wanted(record):
                    page.append(record)
                    if len(page) > limit:
                        break
            return page[:limit], (page[limit - 1].name if len(page) > limit else None)
        folders: list[Folder] = (
            [FOLDER_OF.get(state, "pool")]
            if state is not None
            else ["pool", "acquired", "releasing"]
        )
        zones = [az] if az else sorted(set(self._azs()))
        records = [
            item.record
            for zone in zones
            for folder in folders
            for item in _read(
                self._store, self._dir(folder, zone), PoolInstance.model_validate_json
            )[0]
        ]
        chosen = sorted(
            (r for r in records if wanted(r) and (after is None or r.name > after)),
            key=lambda r: r.name,
        )
        page = chosen[:limit]
        return page, (page[-1].name if len(chosen) > limit else None)

    def stored(self, found: Found) -> Stored[PoolInstance]:
        return Stored(found.key, found.revision, found.record)
