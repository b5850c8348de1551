"""``make bench``: every benchmark at a small default size, one summary table.

Each benchmark runs as its own process (as a user would run it); its last
line, the contract line, goes into the table. A benchmark that cannot run
here (real guests without root or libvirtd) is listed with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
SMALL = [
    ("failover (SQLite)", ["failover.py", "--store", "sqlite", "--ttl", "2", "--runs", "3"]),
    ("failover (etcd)", ["failover.py", "--store", "etcd", "--ttl", "2", "--runs", "3"]),
    (
        "acquire (SQLite, in process)",
        ["acquire.py", "--store", "sqlite", "--clients", "8", "--seconds", "5", "--via", "library"],
    ),
    (
        "acquire (etcd, HTTP)",
        ["acquire.py", "--store", "etcd", "--clients", "8", "--seconds", "5", "--via", "http"],
    ),
    (
        "acquire (etcd, HTTP, 64 clients, beside each part's ceiling)",
        [
            "acquire.py",
            "--store",
            "etcd",
            "--clients",
            "64",
            "--seconds",
            "5",
            "--via",
            "http",
            "--ceilings",
        ],
    ),
    (
        "acquire (SQLite, 9,000 hypervisors)",
        [
            "acquire.py",
            "--store",
            "sqlite",
            "--clients",
            "1",
            "--seconds",
            "3",
            "--via",
            "library",
            "--instances",
            "1",
            "--hypervisors",
            "9000",
            "--pools",
            "9",
            "--pool-size",
            "30000",
        ],
    ),
    ("refill (simulated, mean 1 s)", ["refill.py", "--vms", "24", "--create-mean-s", "1"]),
    (
        "fleet (1,000 hypervisors)",
        ["fleet.py", "--hypervisors", "1000", "--racks", "60", "--vms", "300"],
    ),
    ("fleet, demand sizing (9,960 hypervisors)", ["fleet.py", "--demand"]),
    ("operators' views (9,960 hypervisors)", ["views.py", "--sizes", "10000", "--calls", "100"]),
    ("replay (Azure, 30 min)", ["replay.py", "--bins", "6", "--budget", "60"]),
    ("real guests", ["realvm.py", "--sequential", "2", "--parallel", "4"]),
    ("standby states (real guests)", ["standby.py", "--vms", "2"]),
    ("chaos (one fault of each kind)", ["chaos.py", "--faults", "10"]),
]


def main() -> None:
    console = Console()
    table = Table(title="warmcache benchmarks (small sizes; docs/benchmarks.md has the full runs)")
    for col in ("benchmark", "result (the benchmark's last line)", "wall s"):
        table.add_column(col)
    failed = 0
    for title, args in SMALL:
        if args[0] in ("realvm.py", "standby.py", "chaos.py") and os.geteuid() != 0:
            table.add_row(title, "not run: needs root (libvirtd, network namespaces)", "-")
            continue
        console.print(f"running {title}...")
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, str(HERE / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        took = time.monotonic() - started
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines:
            failed += 1
            why = (result.stderr.strip().splitlines() or ["no output"])[-1]
            table.add_row(title, f"FAILED: {why}", f"{took:.0f}")
        else:
            table.add_row(title, lines[-1], f"{took:.0f}")
    console.print(table)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
