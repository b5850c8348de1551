"""The shipped systemd units: valid to systemd itself (``systemd-analyze
verify``), none running as root, and hardened (``systemd-analyze security
--offline``: an exposure level of at most 3 out of 10, where systemd calls
a unit with no hardening 9.6 "UNSAFE")."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from warmcache.resources import config_dir

UNITS = ("warmcache.service", "warmcache-agent.service", "warmcache-proxy.service")
MAX_EXPOSURE = 3.0


def service_section(unit: str) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in (config_dir() / "systemd" / unit).read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", "[")):
            options.setdefault(key.strip(), []).append(value.strip())
    return options


@pytest.mark.parametrize("unit", UNITS)
def test_every_unit_runs_unprivileged_and_hardened(unit: str) -> None:
    options = service_section(unit)
    assert options["User"][0] not in ("root", "0")
    assert options["NoNewPrivileges"] == ["yes"] and options["ProtectSystem"] == ["strict"]
    assert options["CapabilityBoundingSet"] == [""]  # no capability at all
    assert "LoadCredential" in options  # secrets handed over by systemd, not world-readable
    assert any("--log-format json" in line for line in options["ExecStart"])


@pytest.fixture
def units(tmp_path: Path) -> Path:
    if not shutil.which("systemd-analyze"):
        pytest.skip("no systemd-analyze here (apt-get install systemd)")
    venv_bin = str(Path(sys.executable).parent)
    for unit in UNITS:
        text = (config_dir() / "systemd" / unit).read_text()
        (tmp_path / unit).write_text(text.replace("/opt/warmcache/.venv/bin", venv_bin))
    # the agent's unit requires libvirtd's, which this machine may not have as a unit
    (tmp_path / "libvirtd.service").write_text("[Service]\nExecStart=/bin/true\n")
    return tmp_path


def test_systemd_accepts_the_units(units: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", *(str(units / u) for u in UNITS)],
        capture_output=True,
        text=True,
        env={"SYSTEMD_UNIT_PATH": f"{units}:", "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_rates_each_unit_safe(units: Path, unit: str) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(units / unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, done.stdout[-2000:]
