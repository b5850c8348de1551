"""The wheel works outside the checkout: built from this tree, installed
into a fresh venv in a temporary directory (dependencies from the package
index, as a user gets them), and run from there: the quickstart fills its
pools from the example configs shipped in the package, the dashboards are
found, the agent imports under its own name and nothing called ``agent``
is installed."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.wheels import CHECKOUT, build_wheel
from warmcache.testing.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.libvirt]


def run(args: list[str], cwd: Path, timeout_s: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_wheel_runs_outside_the_checkout(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in (
        "warmcache/data/config/service.example.toml",
        "warmcache/data/config/flavors.toml",
        "warmcache/data/config/systemd/warmcache.service",
        "warmcache/data/dashboards/kibana.ndjson",
        "warmcache/data/dashboards/grafana.json",
        "warmcache/web/templates/dashboard.html",
        "warmcache_agent/daemon.py",
        "warmcache_agent/py.typed",
    ):
        assert shipped in names, shipped
    assert not [n for n in names if n.startswith("agent/")]

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    run([*pip, f"{wheel}[libvirt]"], cwd=tmp_path, timeout_s=900)
    python, warmcache = str(venv / "bin" / "python"), str(venv / "bin" / "warmcache")
    away = tmp_path / "elsewhere"  # no checkout anywhere near
    away.mkdir()

    found = run(
        [
            python,
            "-c",
            "import warmcache_agent.daemon, importlib.util; "
            "print(importlib.util.find_spec('agent'))",
        ],
        cwd=away,
    )
    assert found.strip() == "None"
    out = run(
        [
            warmcache,
            "quickstart",
            "--exit-after",
            "1",
            "--state-dir",
            str(away / "qs"),
            "--port",
            str(free_port()),
            "--instances",
            "1",
        ],
        cwd=away,
    )
    assert "pools full in" in out and "stopped" in out, out
    out = run([warmcache, "dashboards", "import", "--dry-run"], cwd=away)
    assert "would import 16 saved object(s)" in out, out
    assert str(CHECKOUT) not in run(
        [python, "-c", "import warmcache; print(warmcache.__file__)"], cwd=away
    )
