"""``warmcache quickstart``: the whole system on the embedded stack, for real.

In a state directory it writes configs, then starts real processes:

* one ``warmcache-agent`` per simulated hypervisor (AZs x racks x
  hypervisors), each on its own Unix socket with its own libvirt
  ``test:///default`` (state per process: each agent is its own host);
* N ``warmcache serve`` instances on one SQLite store, which elect a leader
  per build cycle; the leader fills the pools through the agents.

It loads the example flavors and rules from ``config/``, shows the pools
filling, and stops every process it started (by PID) on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from warmcache.adapters.file_catalog import FileFlavorCatalog, image_toml
from warmcache.bootstrap import build_store
from warmcache.config import parse_config
from warmcache.images import Image
from warmcache.layout import HostRecords, Keys
from warmcache.networks import NetworkBook
from warmcache.ports import CoordinationStore
from warmcache.resources import config_dir
from warmcache.rules import RuleBook, read_rules_file

MARKER = ".warmcache-quickstart"
REAL_VM_IMAGE = "warmcache-busybox-guest"  # the id config/realvm-flavors.toml names
EXAMPLE_CONFIG = config_dir()  # the shipped example configs (warmcache/data/config)


class QuickstartError(Exception):
    pass


@dataclass(frozen=True)
class Topology:
    azs: tuple[str, ...] = ("az1", "az2")
    racks_per_az: int = 3
    hypervisors_per_rack: int = 2

    def hosts(self) -> list[tuple[str, str, str]]:
        """(az, rack, hypervisor) for every simulated hypervisor."""
        return [
            (az, f"{az}-r{r}", f"{az}-r{r}-h{h}")
            for az in self.azs
            for r in range(1, self.racks_per_az + 1)
            for h in range(1, self.hypervisors_per_rack + 1)
        ]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class QuickstartStack:
    state_dir: Path
    port: int = 8080
    instances: int = 2
    topology: Topology = field(default_factory=Topology)
    config_dir: Path = EXAMPLE_CONFIG
    create_delay_s: float = 0.2
    cycle_interval_s: float = 5.0
    leader_ttl_s: float = 5.0
    build_concurrency: int = 8
    retry_interval_s: float = 5.0
    store_kind: str = "sqlite"
    store_url: str = ""  # etcd: comma-separated member URLs
    rules_toml: str | None = None  # instead of config/rules.toml
    real_vms: bool = False  # agents boot real QEMU guests on qemu:///system
    procs: list[Proc] = field(default_factory=list)
    _libvirtd: Any = None
    _guest_cache: Path | None = None  # real guests: where their image and kernel are

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.port + i}" for i in range(self.instances)]

    # --- set-up ---------------------------------------------------------------------

    def _prepare_dir(self) -> None:
        d = self.state_dir
        if d.exists() and any(d.iterdir()) and not (d / MARKER).exists():
            raise QuickstartError(
                f"{d} is not empty and was not made by quickstart; choose another --state-dir"
            )
        # Old records describe VMs of agents that are gone: start clean.
        shutil.rmtree(d, ignore_errors=True)
        for sub in ("agents", "logs"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / MARKER).write_text("made by warmcache quickstart; safe to delete\n")
        for name in ("flavors.toml", "rules.toml"):
            src = self.config_dir / (f"realvm-{name}" if self.real_vms else name)
            if not src.exists():
                raise QuickstartError(f"missing {src} (pass --config-dir)")
            shutil.copy(src, d / name)
        if self.rules_toml is not None:
            (d / "rules.toml").write_text(self.rules_toml)
        networks = self.config_dir / "networks.toml"
        if networks.exists():
            shutil.copy(networks, d / "networks.toml")
        if self.real_vms:
            # the image every guest boots, built here from Debian packages
            image = self._real_vm_image()
            with open(d / "flavors.toml", "a") as catalog:
                catalog.write("\n" + image_toml(image))
        elif (self.config_dir / "images").is_dir():
            shutil.copytree(self.config_dir / "images", d / "images")

    def _spawn(self, name: str, args: list[str]) -> Proc:
        log = self.state_dir / "logs" / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def _real_vm_image(self) -> Image:
        """libvirtd up (started here if needed) and the guest image built
        (Debian's cloud kernel, a busybox root disk: warmcache_agent.guest)."""
        from warmcache_agent.guest import GuestImageError, build_image, default_cache
        from warmcache_agent.libvirtd import Libvirtd, LibvirtdUnavailable

        self._libvirtd = Libvirtd(self.state_dir / "libvirtd")
        try:
            self._libvirtd.ensure()
            self._guest_cache = default_cache()
            return build_image(self._guest_cache, "quickstart-1", image_id=REAL_VM_IMAGE)
        except (LibvirtdUnavailable, GuestImageError) as exc:
            raise QuickstartError(f"real guests cannot run here: {exc}") from exc

    def start_agents(self) -> list[str]:
        sockets = []
        for az, rack, hv in self.topology.hosts():
            adir = self.state_dir / "agents" / hv
            adir.mkdir(parents=True, exist_ok=True)
            if self._guest_cache is not None:
                from warmcache_agent.guest import agent_config_toml

                (adir / "agent.toml").write_text(
                    agent_config_toml(
                        hypervisor=hv, rack=rack, az=az, image_dirs=[self._guest_cache]
                    )
                    + self._inventory_toml()
                )
                sock = adir / "agent.sock"
                self._spawn(
                    f"agent-{hv}",
                    [
                        "warmcache_agent",
                        "--socket",
                        str(sock),
                        "--config",
                        str(adir / "agent.toml"),
                    ],
                )
                sockets.append(str(sock))
                continue
            (adir / "agent.toml").write_text(
                f'hypervisor = "{hv}"\nrack = "{rack}"\naz = "{az}"\n'
                f'libvirt_uri = "test:///default"\nstate_dir = "."\n'
                f"create_delay_s = {self.create_delay_s}\n"
                f"numa_nodes = 2\n"
                # the test driver's built-in domain is not warmcache's business
                'reconcile_ignore = ["test"]\n'
                "[capacity]\nvcpus = 16\nmemory_mib = 65536\ndisk_gib = 2000\n"
                "[reserved]\nvcpus = 2\nmemory_mib = 4096\ndisk_gib = 50\n"
                # twelve pretend hosts share this machine's disk: their books
                # are theirs, the filesystem is not checked against them
                "[disks]\ncheck_filesystem = false\n"
                f'[images]\nlocal_dirs = ["{self.state_dir / "images"}"]\n' + self._inventory_toml()
            )
            sock = adir / "agent.sock"
            self._spawn(
                f"agent-{hv}",
                ["warmcache_agent", "--socket", str(sock), "--config", str(adir / "agent.toml")],
            )
            sockets.append(str(sock))
        return sockets

    def _inventory_toml(self) -> str:
        where = (
            f'path = "{self.state_dir / "store.db"}"'
            if self.store_kind == "sqlite"
            else f'url = "{self.store_url}"'
        )
        return f'[inventory]\nkind = "{self.store_kind}"\n{where}\nttl_s = {self.leader_ttl_s}\n'

    def _service_config(self, index: int) -> Path:
        path = self.state_dir / f"instance-{index + 1}.toml"
        path.write_text(
            "[service]\n"
            f'node = "wc-{index + 1}"\n'
            f"listen_port = {self.port + index}\n"
            f"cycle_interval_s = {self.cycle_interval_s}\n"
            f"leader_ttl_s = {self.leader_ttl_s}\n"
            f"build_concurrency = {self.build_concurrency}\n"
            f"retry_interval_s = {self.retry_interval_s}\n"
            # a short lease is seen reclaimed here within a cycle or two
            "lease_grace_s = 5\n"
            # the dashboard's charts fill within seconds of a demo
            "history_sample_s = 2\n"
            + self._store_toml()
            + '[catalog]\nkind = "file"\npath = "flavors.toml"\n'
            '[events]\nkind = "sqlite"\npath = "events.db"\n'
        )
        return path

    def _store_toml(self) -> str:
        if self.store_kind == "sqlite":
            return '[store]\nkind = "sqlite"\npath = "store.db"\n'
        return f'[store]\nkind = "{self.store_kind}"\nurl = "{self.store_url}"\n'

    def store(self) -> CoordinationStore:
        """A client of the stack's coordination store (close it after use)."""
        config = parse_config(
            tomllib.loads("\n".join(["[service]", self._store_toml()])),
            base=self.state_dir,
            environ={},
        )
        return build_store(config)

    def instance(self, node: str) -> Proc:
        """The process of service instance ``node`` (``wc-1``, ``wc-2``...)."""
        return next(p for p in self.procs if p.name == f"instance-{node.split('-')[1]}")

    def load_rules(self) -> int:
        store = self.store()
        try:
            book = RuleBook(
                store, Keys("warmcache"), FileFlavorCatalog(self.state_dir / "flavors.toml")
            )
            rules = read_rules_file((self.state_dir / "rules.toml").read_text())
            for (az, flavor), fields in rules.items():
                book.put(az, flavor, fields)
            networks = self.state_dir / "networks.toml"
            if networks.exists():
                pools = NetworkBook(store, Keys("warmcache"))
                for az, named in tomllib.loads(networks.read_text())["networks"].items():
                    for name, pool in named.items():
                        if pools.get(az, name) is None:
                            pools.create(az, name, pool)
            return len(rules)
        finally:
            store.close()

    def start(self, *, timeout_s: float = 60.0) -> None:
        self._prepare_dir()
        sockets = self.start_agents()
        self._wait(lambda: all(Path(s).exists() for s in sockets), timeout_s, "agents to listen")
        self._wait(self._all_published, timeout_s, "agents to publish their host facts")
        self.load_rules()
        for i in range(self.instances):
            config = self._service_config(i)
            self._spawn(f"instance-{i + 1}", ["warmcache", "serve", "--config", str(config)])
        self._wait(self._all_healthy, timeout_s, "service instances to answer /healthz")

    def _all_published(self) -> bool:
        store = self.store()
        try:
            published = HostRecords(store, Keys("warmcache")).facts()
        finally:
            store.close()
        return len(published) == len(self.topology.hosts())

    def _all_healthy(self) -> bool:
        try:
            return all(httpx.get(f"{u}/healthz", timeout=2).status_code == 200 for u in self.urls)
        except httpx.HTTPError:
            return False

    def _wait(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            self._check_alive(what)
            if time.monotonic() > deadline:
                raise QuickstartError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.1)

    def _check_alive(self, what: str) -> None:
        dead = [p for p in self.procs if p.popen.poll() is not None]
        if dead:
            tail = dead[0].log.read_text()[-2000:]
            raise QuickstartError(f"{dead[0].name} exited while waiting for {what}:\n{tail}")

    # --- running ---------------------------------------------------------------------

    def pools(self) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.urls[0]}/v1/pools", timeout=10)
        reply.raise_for_status()
        pools: list[dict[str, Any]] = reply.json()["pools"]
        return pools

    @staticmethod
    def full(pools: list[dict[str, Any]]) -> bool:
        return bool(pools) and all(p["ready"] + p["reserved"] >= p["target"] for p in pools)

    def wait_full(
        self,
        timeout_s: float = 120.0,
        on_update: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        pools: list[dict[str, Any]] = []
        while True:
            self._check_alive("the pools to fill")
            try:
                pools = self.pools()
            except httpx.HTTPError as exc:  # one failed poll is not the answer
                if time.monotonic() > deadline:
                    raise QuickstartError(f"{self.urls[0]} did not answer: {exc!r}") from exc
                time.sleep(0.25)
                continue
            if on_update:
                on_update(pools)
            if self.full(pools):
                return pools
            if time.monotonic() > deadline:
                raise QuickstartError(f"pools not full after {timeout_s:.0f} s: {pools}")
            time.sleep(0.25)

    # --- tear-down -------------------------------------------------------------------

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every process we started, by PID; SIGKILL the stragglers.
        Real guests the pools built are ours too: the service instances stop
        first (a leader still running would build the pool up again behind
        us), then the agents destroy every guest they hold, then they stop."""
        instances = [p for p in self.procs if p.name.startswith("instance-")]
        self._terminate(instances, grace_s)
        if self.real_vms:
            self._destroy_guests()
        self._terminate(self.procs, grace_s)
        self.procs.clear()
        if self._libvirtd is not None:
            self._libvirtd.stop()

    @staticmethod
    def _terminate(procs: list[Proc], grace_s: float) -> None:
        for proc in procs:
            if proc.popen.poll() is None:
                os.kill(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()

    def _destroy_guests(self) -> None:
        from warmcache.adapters.agent_client import AgentClient
        from warmcache.errors import AgentError

        for sock in (self.state_dir / "agents").glob("*/agent.sock"):
            client = AgentClient(f"unix:{sock}", timeout_s=30)
            try:
                for vm in client.list():
                    client.delete(vm.name)
            except AgentError:
                continue

    def __enter__(self) -> QuickstartStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
