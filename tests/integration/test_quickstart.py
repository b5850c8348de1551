"""The whole quickstart path with real processes: 12 warmcache-agent
processes on libvirt test:///default, 2 `warmcache serve` instances electing
a leader on one SQLite store, the HTTP API in front."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from warmcache.layout import Keys
from warmcache.quickstart import QuickstartStack
from warmcache.testing.polling import wait_for
from warmcache.testing.ports import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.libvirt,
    pytest.mark.usefixtures("libvirt_available"),
]


def free_port_pair() -> int:
    return free_port(2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuickstartStack]:
    qs = QuickstartStack(
        tmp_path_factory.mktemp("qs"),
        port=free_port_pair(),
        create_delay_s=0.05,
        cycle_interval_s=2.0,
    )
    with qs:
        qs.wait_full(timeout_s=120)
        yield qs
    for proc in qs.procs:
        assert proc.popen.poll() is not None


def pooled(stack: QuickstartStack) -> dict[str, str]:
    """Name -> state of every pooled VM, read straight from the store."""
    from warmcache.model import PoolInstance

    store = stack.store()
    try:
        kvs, _ = store.range(Keys("warmcache").pool_dir())
    finally:
        store.close()
    recs = [PoolInstance.model_validate_json(kv.value) for kv in kvs]
    return {r.name: r.state.value for r in recs}


def small_az1(pools: list[dict[str, Any]]) -> dict[str, Any]:
    return next(p for p in pools if (p["az"], p["flavor"]) == ("az1", "small"))


def test_pools_fill_spread_over_racks(stack: QuickstartStack) -> None:
    pools = stack.pools()
    assert len(pools) == 5 and stack.full(pools)
    for pool in pools:
        assert pool["ready"] + pool["reserved"] == pool["target"]
        assert len(pool["ready_by_rack"]) == 3
    assert small_az1(pools)["reserved"] == 2


def test_both_instances_serve_and_a_leader_was_elected(stack: QuickstartStack) -> None:
    for url in stack.urls:
        assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    import sqlite3

    events = sqlite3.connect(stack.state_dir / "events.db")
    leaders = {
        row[0]
        for row in events.execute(
            "SELECT json_extract(fields, '$.node') FROM events WHERE type = 'leader.elected'"
        )
    }
    events.close()
    assert leaders and leaders <= {"wc-1", "wc-2"}


def test_rack_aware_acquire_409_and_400_over_http(stack: QuickstartStack) -> None:
    url = stack.urls[1]  # the second instance serves acquisitions too
    body = {"flavor": "small", "az": "az1", "count": 3, "mode": "rack-aware"}
    reply = httpx.post(f"{url}/v1/acquire", json=body)
    assert reply.status_code == 200, reply.text
    vms = reply.json()["vms"]
    assert len(vms) == 3 and len({vm["rack"] for vm in vms}) == 3
    # each with its own address from az1's pool (config/networks.toml)
    addresses = [vm["addresses"][0] for vm in vms]
    assert len(set(addresses)) == 3 and all(a.startswith("10.101.") for a in addresses)
    before = pooled(stack)
    assert not {vm["name"] for vm in vms} & set(before)  # handed out: no longer pooled
    reply = httpx.post(f"{url}/v1/acquire", json={**body, "count": 4})
    assert reply.status_code == 409 and reply.json()["error"] == "no_capacity"
    assert reply.json()["detail"]["racks"] == 3
    reply = httpx.post(f"{url}/v1/acquire", json={**body, "count": "three"})
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_request"
    # Build cycles keep running (they may add VMs), but nothing was claimed:
    # every VM acquirable before is still there, in the same state.
    acquirable = {n: st for n, st in before.items() if st in ("ready", "reserved")}
    after = pooled(stack)
    assert acquirable and {n: after.get(n) for n in acquirable} == acquirable


def test_the_acquired_vms_run_on_their_agents(stack: QuickstartStack) -> None:
    from warmcache.adapters.agent_client import AgentClient

    body = {"flavor": "medium", "az": "az2", "count": 2, "mode": "hypervisor-aware"}
    vms = httpx.post(f"{stack.urls[0]}/v1/acquire", json=body).json()["vms"]
    for vm in vms:
        sock = Path(stack.state_dir) / "agents" / vm["hypervisor"] / "agent.sock"
        status = AgentClient(f"unix:{sock}").status(vm["name"])
        assert status.state == "running" and status.healthy


def test_processes_are_ours_and_alive(stack: QuickstartStack) -> None:
    assert len(stack.procs) == 12 + 2
    for proc in stack.procs:
        assert proc.popen.poll() is None
        os.kill(proc.popen.pid, 0)


def test_operator_cli_against_the_live_stack(stack: QuickstartStack, tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from warmcache.cli import main

    url = stack.urls[0]
    runner = CliRunner()
    result = runner.invoke(main, ["rules", "get", "az2", "medium", "--url", url])
    assert result.exit_code == 0 and json.loads(result.output)["total_instances"] == 6
    rule = tmp_path / "rule.json"
    rule.write_text('{"max_instance_per_cycle": 2, "total_instances": 8, "min_fault_domain": 2}')
    result = runner.invoke(main, ["rules", "set", "az2", "medium", str(rule), "--url", url])
    assert result.exit_code == 0 and json.loads(result.output)["total_instances"] == 8
    result = runner.invoke(main, ["explain", "az2", "medium", "--url", url])
    assert result.exit_code == 0 and "2 to build on 6 host(s)" in result.output
    # Where it goes depends on what earlier tests left on the hosts: either
    # placements with their explanation, or the reason there are none.
    assert "has_capacity removed" in result.output or "problem:" in result.output
    rule.write_text('{"max_instance_per_cycle": 2, "total_instances": 1, "reserve_cap": 2}')
    result = runner.invoke(main, ["rules", "set", "az2", "medium", str(rule), "--url", url])
    assert result.exit_code == 2 and "invalid_rule" in result.stderr  # refused input
    assert "reserve_cap" in result.stderr
    result = runner.invoke(main, ["acquire", "large", "az1", "3", "--url", url])
    assert result.exit_code == 0 and len(json.loads(result.output)["vms"]) == 3


def test_the_embedding_example_gets_rack_aware_sets(stack: QuickstartStack) -> None:
    import subprocess
    import sys

    example = Path(__file__).resolve().parents[2] / "examples" / "cluster_provisioner.py"
    result = subprocess.run(
        [
            sys.executable,
            str(example),
            "--config",
            str(stack.state_dir / "instance-1.toml"),
            "--clusters",
            "2",
            "--size",
            "3",
            "--az",
            "az2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("es-")]
    for cluster in ("es-1", "es-2"):
        racks = {
            line.split("rack ")[1].split(",")[0]
            for line in lines
            if line.startswith(f"{cluster}:") and " on rack " in line
        }
        assert len(racks) == 3, result.stdout


def test_the_dashboard_in_a_real_browser(stack: QuickstartStack, tmp_path: Path) -> None:
    """Headless Chromium (Debian's) renders the dashboard of a running stack;
    the screenshot is kept in test-artifacts/dashboard.png."""
    import shutil
    import subprocess

    from tests.conftest import unavailable

    chromium = shutil.which("chromium")
    if chromium is None:
        unavailable("browser", "no chromium (apt-get install chromium)")
    url = f"{stack.urls[0]}/"
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    # The charts fill as the instance samples its pools (every 2 s here).
    wait_for(
        "a pool level sampled twice",
        lambda: "collecting" not in httpx.get(f"{stack.urls[0]}/live", timeout=10).text,
        60,
        interval_s=0.5,
    )
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=90, check=True
    ).stdout
    assert "<h1>warmcache</h1>" in dom
    for pool in ("az1/small", "az1/medium", "az1/large", "az2/small", "az2/medium"):
        assert f'data-pool="{pool}"' in dom
    assert "vm.build_finished" in dom and "leader.elected" in dom
    assert 'class="series-ready"' in dom and 'class="host-up"' in dom
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "dashboard.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1400,1100", url],
        capture_output=True,
        timeout=90,
        check=True,
    )
    assert shot.stat().st_size > 10_000
    # The charts have content on the rendered page: the pools' level areas
    # (ready's green) and the racks' booked vCPUs (blue) cover real pixels.
    from PIL import Image

    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        colours = {colour: n for n, colour in rgb.getcolors(rgb.width * rgb.height) or []}
    assert colours
    assert colours.get((0x2F, 0x7D, 0x4F), 0) > 2_000, "no pool level drawn"
    assert colours.get((0x4A, 0x6F, 0xA5), 0) > 500, "no booked capacity drawn"
