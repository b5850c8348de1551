"""bench/replay.py accepts any trace of the Azure arrivals format: a small
synthetic one here, with a history before it for the demand policy (its
figures are the benchmark's business; the oracle bounds them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "replay.py"


def test_replay_runs_on_a_small_synthetic_trace(tmp_path: Path) -> None:
    (tmp_path / "arrivals.txt").write_text("1000 a,a,|,b,|,a,b,b,|\n1300 b,|,a,a,a,|\n1600 b,b,|\n")
    (tmp_path / "lives.txt").write_text(
        "1000 U1,U2,|,U0,|,U1,C3,U1,|\n1300 U2,|,U0,U1,U1,|\n1600 U3,U3,|\n"
    )
    (tmp_path / "intervals.txt").write_text("0 0\n300 1\n600 2\n900 3\n1200 3\n")
    (tmp_path / "flavors.txt").write_text("1,0.75 a\n2,4 b\n")
    # what came before the window: the demand policy's history
    (tmp_path / "before.txt").write_text("100 a,|,a,a,|,b,|\n400 a,|,b,b,|\n700 a,a,|\n")
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--trace",
            str(tmp_path / "arrivals.txt"),
            "--lifetimes",
            str(tmp_path / "lives.txt"),
            "--interval-map",
            str(tmp_path / "intervals.txt"),
            "--flavor-map",
            str(tmp_path / "flavors.txt"),
            "--bins",
            "3",
            "--budget",
            "6",
            "--create-mean-s",
            "5",
            "--history",
            str(tmp_path / "before.txt"),
            "--history-bins",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    last = result.stdout.strip().splitlines()[-1]
    # 5 batches, two of them mixing flavors: 7 requests
    assert last.startswith("replay requests=7 warmcache_served="), result.stdout
    fields = dict(item.split("=") for item in last.split()[1:])
    assert set(fields) == {
        "requests",
        "warmcache_served",
        "static_served",
        "cold_p50_s",
        "warmcache_p50_s",
        "warmcache_idle_share",
        "demand_served",
        "oracle_served",
        "demand_idle_share",
        "objective_served",
        "objective_p99_ms",
        "objective_cost",
        "demand_cost",
    }
    assert "demand history 3 bins (6 requests)" in result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line}
    assert rows["cold"][1] == "0.0%"  # cold serves nothing at once
    assert rows["oracle"][5] == "0.0%"  # the oracle's VMs never wait
    served = {
        p: float(fields[f"{p}_served"].rstrip("%")) for p in ("warmcache", "demand", "oracle")
    }
    assert served["oracle"] >= max(served["warmcache"], served["demand"])
    # the tiered oracle holds the budget in cost units: at least as much
    assert float(rows["oracle-tiered"][1].rstrip("%")) >= served["oracle"]
    assert float(fields["objective_cost"]) >= 0 and float(fields["objective_p99_ms"]) >= 0
