"""The wheel ships every package the code imports: setup.cfg lists packages by
hand, and a new one missing from the list installs a product that cannot
start (it did once: warmcache.vms)."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def listed_packages() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return {line.strip() for line in cfg["options"]["packages"].splitlines() if line.strip()}


def packages_on_disk() -> set[str]:
    found = set()
    for base, prefix in (
        (ROOT / "warmcache", "warmcache"),
        (ROOT / "agent" / "warmcache_agent", "warmcache_agent"),
    ):
        for init in base.rglob("__init__.py"):
            parts = init.parent.relative_to(base).parts
            if "__pycache__" not in parts:
                found.add(".".join((prefix, *parts)))
    return found


def test_every_package_in_the_tree_is_in_the_wheel() -> None:
    assert packages_on_disk() - listed_packages() == set()


def test_every_listed_package_exists() -> None:
    assert listed_packages() - packages_on_disk() == set()
