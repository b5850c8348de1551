"""Faults across real network namespaces (warmcache/testing/chaos.py): every kind of
fault once, on a fixed seed; the checker finds no VM handed out twice,
none lost, no stale write, every claim accounted for; and every namespace
and link is gone afterwards. bench/chaos.py runs the same with 50 faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import unavailable
from warmcache.testing.chaos import FAULTS, ChaosRig
from warmcache.testing.netns import available

pytestmark = [
    pytest.mark.netns,
    pytest.mark.etcd,
    pytest.mark.libvirt,
    pytest.mark.integration,
    pytest.mark.slow,
]


def test_one_of_every_fault_leaves_nothing_wrong(tmp_path: Path) -> None:
    why = available()
    if why:
        unavailable("netns", f"{why}; run as root with iproute2 and nftables")
    rig = ChaosRig(tmp_path / "chaos", seed=7)
    try:
        rig.start()
        report = rig.run(len(FAULTS), clients=3, kinds=FAULTS)
    finally:
        rig.close()
    print(report.line(), dict(report.replies))
    assert report.clean, report.notes
    assert len(report.faults) == len(FAULTS) and report.acquisitions > 20
    assert sorted(f.split()[0] for f in report.faults) == sorted(FAULTS)
    assert list(rig.net.leftovers()) == []  # every namespace and link removed
