"""Reconciliation (DESIGN.md §10, §12.2): what libvirt runs, what the agent's
lockfile promises and what the store records must agree. Disagreements are
reported, never repaired silently: deleting a VM nobody can account for is
an operator's decision.

Pure: the three views in, findings out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Finding:
    kind: str  # unmanaged_domain | record_without_vm | lockfile_without_vm | vm_without_record
    vm: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reconcile(
    domains: Iterable[str],
    lockfile: Iterable[str],
    records: Mapping[str, str] | None,
    ignore: Iterable[str] = (),
) -> list[Finding]:
    """``records`` maps the store's VM names on this host to their state
    (pool or acquired); ``None`` when the store could not be read (then only
    libvirt and the lockfile are compared)."""
    skip = set(ignore)
    running = set(domains) - skip
    promised = set(lockfile)
    found: list[Finding] = []
    for name in sorted(running - promised - set(records or {})):
        found.append(Finding("unmanaged_domain", name, "a libvirt domain warmcache did not create"))
    for name in sorted(promised - running):
        found.append(
            Finding(
                "lockfile_without_vm",
                name,
                "the lockfile holds capacity for a VM libvirt does not have",
            )
        )
    if records is not None:
        for name, state in sorted(records.items()):
            if name not in running and name not in promised:
                found.append(
                    Finding(
                        "record_without_vm",
                        name,
                        f"the store has it ({state}) but this host does not",
                    )
                )
        for name in sorted((running & promised) - set(records)):
            found.append(
                Finding(
                    "vm_without_record", name, "runs here, but no pool or acquired record names it"
                )
            )
    return found
