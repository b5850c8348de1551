"""A wheel of this tree, built the way a user builds one (``pip wheel``,
build isolation), from a copy so the checkout gets no build/ or *.egg-info."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def build_wheel(work: Path, tweak: Callable[[Path], None] | None = None) -> Path:
    """The wheel, built from a copy of the tree (``tweak`` edits the copy
    first: another build of the package)."""
    source = work / "source"
    shutil.copytree(
        CHECKOUT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            "test-artifacts",
            ".state",
        ),
    )
    if tweak is not None:
        tweak(source)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(work / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [built] = (work / "dist").glob("warmcache-*.whl")
    return built
