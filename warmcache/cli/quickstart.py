"""``warmcache quickstart``: the embedded stack, two commands from a fresh machine."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click
import httpx

from warmcache.cli.base import _fail, _pools_table, console, main

# --- quickstart -----------------------------------------------------------------------


def _default_state_dir() -> str:
    from platformdirs import user_data_dir

    return str(Path(user_data_dir("warmcache")) / "quickstart")


@main.command()
@click.option(
    "--state-dir",
    default=_default_state_dir,
    show_default="user data dir",
    type=click.Path(file_okay=False),
    help="Where configs, store and logs go.",
)
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(1, 65534),
    help="API port of the first instance; the others use the next ports.",
)
@click.option(
    "--instances",
    default=2,
    show_default=True,
    type=click.IntRange(1, 9),
    help="Service instances (they elect a leader among themselves).",
)
@click.option(
    "--exit-after",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop everything after this many seconds (default: run until Ctrl-C).",
)
@click.option(
    "--config-dir",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Where flavors.toml and rules.toml are (default: the checkout's config/).",
)
@click.option(
    "--create-delay",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 60),
    help="Simulated seconds each VM takes to boot on test:///default.",
)
@click.option(
    "--real-vms",
    is_flag=True,
    help="Boot real QEMU guests under libvirtd (root; one hypervisor, small pools).",
)
def quickstart(
    state_dir: str,
    port: int,
    instances: int,
    exit_after: float | None,
    config_dir: str | None,
    create_delay: float,
    real_vms: bool,
) -> None:
    """Run the whole system on the embedded stack and fill the pools."""
    from warmcache.quickstart import EXAMPLE_CONFIG, QuickstartError, QuickstartStack, Topology

    stack = QuickstartStack(
        Path(state_dir),
        port=port,
        instances=instances,
        create_delay_s=create_delay,
        config_dir=Path(config_dir) if config_dir else EXAMPLE_CONFIG,
        real_vms=real_vms,
        topology=Topology(azs=("az1",), racks_per_az=1, hypervisors_per_rack=1)
        if real_vms
        else Topology(),
    )
    started = time.monotonic()
    stopping = threading.Event()

    def _interrupt(_sig: int, _frame: object) -> None:
        stopping.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with console.status("starting agents and service instances..."):
            stack.start()
        hosts = stack.topology.hosts()
        console.print(
            f"[green]up:[/green] {len(hosts)} agents ({len(stack.topology.azs)} AZs x "
            f"{stack.topology.racks_per_az} racks x {stack.topology.hypervisors_per_rack} "
            f"hypervisors), {instances} instances: {', '.join(stack.urls)}"
        )
        _fill_with_progress(stack)
        console.print(f"pools full in {time.monotonic() - started:.1f} s")
        console.print(_pools_table(stack.pools()))
        leader = httpx.get(f"{stack.urls[0]}/v1/leader", timeout=5).json()["leader"]
        console.print(f"leader of the last cycle: {leader['node'] if leader else 'none (idle)'}")
        example = json.dumps(
            {"flavor": "tiny", "az": "az1", "count": 2, "mode": "best-effort"}
            if real_vms
            else {"flavor": "small", "az": "az1", "count": 3, "mode": "rack-aware"}
        )
        console.print(
            "\nAcquire 2 real guests:" if real_vms else "\nAcquire 3 VMs on 3 different racks:"
        )
        print(
            f"  curl -s -X POST {stack.urls[0]}/v1/acquire "
            f"-H 'Content-Type: application/json' -d '{example}'"
        )
        print(f"  curl -s {stack.urls[0]}/v1/pools")
        console.print(
            f"\ndashboard: {stack.urls[0]}/   metrics: {stack.urls[0]}/metrics   "
            f"API: {stack.urls[0]}/v1/openapi.json",
            highlight=False,
            soft_wrap=True,
        )
        console.print(f"\nstate and logs: {state_dir}")
        if exit_after is None:
            console.print("running; Ctrl-C stops every process started here")
            while True:
                time.sleep(3600)
        remaining = exit_after - (time.monotonic() - started)
        if remaining > 0:
            stopping.wait(remaining)
    except KeyboardInterrupt:
        pass
    except (QuickstartError, httpx.HTTPError) as exc:
        stack.stop()
        _fail(str(exc))
    finally:
        with console.status("stopping every process started by quickstart..."):
            stack.stop()
        signal.signal(signal.SIGTERM, previous)
    console.print("stopped")


def _fill_with_progress(stack: Any) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
    ) as progress:
        tasks: dict[str, Any] = {}

        def update(pools: list[dict[str, Any]]) -> None:
            for p in pools:
                key = f"{p['az']}/{p['flavor']}"
                if key not in tasks:
                    tasks[key] = progress.add_task(key, total=p["target"], detail="")
                racks = len(p["ready_by_rack"])
                progress.update(
                    tasks[key],
                    completed=p["ready"] + p["reserved"],
                    detail=f"building {p['building']}, reserved {p['reserved']}, "
                    f"on {racks} rack(s)",
                )

        stack.wait_full(on_update=update)
