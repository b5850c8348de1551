"""warmcache under faults across real network namespaces (see warmcache/testing/chaos.py).

    .venv/bin/python bench/chaos.py [--faults 50] [--seed 1] [--hypervisors 3]   # as root

Three etcd members, two service instances and hypervisors (agent + proxy)
in namespaces of their own on a bridge; acquisitions from client threads,
half of them given back at once (``DELETE /v1/vms/<name>``);
faults from a seeded schedule (partitions both ways and one way, an etcd
member isolated, links down, SIGKILL and SIGSTOP of instances and agents);
then everything is healed and the checker reads every reply and etcd's
history. It prints each fault and the replies seen, and last:

    chaos faults=<n> acquisitions=<n> duplicates=<n> lost=<n> stale_writes=<n>
        unresolved_claims=<n> releases=<n> double_releases=<n> stuck_releases=<n>

(one line) Exit status 1 if any of duplicates, lost, stale_writes,
unresolved_claims, double_releases or stuck_releases is not 0; 2 if namespaces cannot be
made here. Every namespace and link it made is removed at the end.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the rig

from warmcache.testing.chaos import FAULTS, ChaosRig
from warmcache.testing.netns import available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hypervisors", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument(
        "--kinds",
        default=",".join(FAULTS),
        help=f"comma-separated fault kinds (default all: {', '.join(FAULTS)})",
    )
    args = parser.parse_args()
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault kinds {sorted(unknown)} (valid: {', '.join(FAULTS)})")
    why = available()
    if why:
        print(f"chaos: cannot run here: {why}", file=sys.stderr)
        sys.exit(2)
    work = Path(tempfile.mkdtemp(prefix="warmcache-chaos-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    rig = ChaosRig(work, seed=args.seed, hypervisors=args.hypervisors)
    started = time.monotonic()
    try:
        rig.start()
        print(
            f"up in {time.monotonic() - started:.1f} s: {len(rig.net.hosts)} namespaces "
            f"on {rig.net.subnet}.0/24 (work dir {work})",
            flush=True,
        )
        report = rig.run(args.faults, clients=args.clients, kinds=kinds)
    finally:
        rig.close()
    for n, fault in enumerate(report.faults, 1):
        print(f"fault {n:3}: {fault}")
    print(f"replies: {dict(report.replies)}")
    for note in report.notes[:50]:
        print(f"note: {note}")
    print(f"took {time.monotonic() - started:.0f} s")
    print(report.line())
    sys.exit(0 if report.clean else 1)


if __name__ == "__main__":
    main()
