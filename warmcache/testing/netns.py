"""Hosts on one machine: network namespaces on a bridge (iproute2), and
faults between them (nftables inside a namespace; this kernel has no netem).

Every name this module makes starts with the run's ``tag`` (namespaces
``<tag>-<host>``, links ``<tag>v<n>``, the bridge ``<tag>br``), and
``destroy`` removes exactly those, so a run never touches anything else and
never leaves anything behind (``with Network(...)``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


class NetnsUnavailable(Exception):
    pass


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


def available() -> str | None:
    """None when namespaces, veth, a bridge and nftables work here; else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"no {tool} (apt-get install iproute2 nftables)"
    probe = f"wcxp{os.getpid() % 100000}"
    try:
        _run("ip", "netns", "add", probe)
        _run("ip", "netns", "exec", probe, "nft", "add", "table", "inet", "probe")
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create a namespace with nftables: {exc}"
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            _run("ip", "netns", "del", probe)
    return None


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    link: str  # the bridge side of its veth pair


@dataclass
class Network:
    tag: str
    subnet: str  # first three octets, e.g. "10.77.31"
    hosts: dict[str, Host] = field(default_factory=dict)
    created: bool = False

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge (where the driver runs)."""
        return f"{self.subnet}.1"

    def __enter__(self) -> Network:
        self.create()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.destroy()

    def create(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self.created = True
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")

    def add(self, name: str, last_octet: int) -> Host:
        namespace, link = f"{self.tag}-{name}", f"{self.tag}v{last_octet}"
        inside = f"{link}p"
        host = Host(name, namespace, f"{self.subnet}.{last_octet}", link)
        self.hosts[name] = host
        _run("ip", "netns", "add", namespace)
        _run("ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        _run("ip", "link", "add", link, "type", "veth", "peer", "name", inside)
        _run("ip", "link", "set", inside, "netns", namespace)
        _run("ip", "link", "set", link, "master", self.bridge)
        _run("ip", "link", "set", link, "up")
        _run(
            "ip",
            "netns",
            "exec",
            namespace,
            "ip",
            "addr",
            "add",
            f"{host.address}/24",
            "dev",
            inside,
        )
        _run("ip", "netns", "exec", namespace, "ip", "link", "set", inside, "up")
        return host

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside host ``name`` (``ip netns exec`` execs it: same PID)."""
        return ["ip", "netns", "exec", self.hosts[name].namespace, *argv]

    # --- faults --------------------------------------------------------------------

    def drop(
        self, name: str, *, outgoing: Sequence[str] = (), incoming: Sequence[str] = ()
    ) -> None:
        """Drop packets in host ``name``: ``outgoing`` and ``incoming`` are
        nftables match expressions (e.g. ``"tcp dport 2379"``)."""
        ns = self.hosts[name].namespace
        _run("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "chaos")
        for chain, hook, rules in (("out", "output", outgoing), ("in", "input", incoming)):
            if not rules:
                continue
            _run(
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                "add",
                "chain",
                "inet",
                "chaos",
                chain,
                f"{{ type filter hook {hook} priority 0; policy accept; }}",
            )
            for rule in rules:
                _run(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "nft",
                    "add",
                    "rule",
                    "inet",
                    "chaos",
                    chain,
                    *rule.split(),
                    "drop",
                )

    def heal(self, name: str) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            _run(
                "ip",
                "netns",
                "exec",
                self.hosts[name].namespace,
                "nft",
                "delete",
                "table",
                "inet",
                "chaos",
            )

    def link_down(self, name: str) -> None:
        _run("ip", "link", "set", self.hosts[name].link, "down")

    def link_up(self, name: str) -> None:
        _run("ip", "link", "set", self.hosts[name].link, "up")

    # --- cleanup ---------------------------------------------------------------------

    def destroy(self) -> None:
        for host in self.hosts.values():
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("ip", "link", "del", host.link)  # takes its peer with it
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("ip", "netns", "del", host.namespace)
        if self.created:
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("ip", "link", "del", self.bridge)
        self.hosts.clear()
        self.created = False

    def leftovers(self) -> Iterator[str]:
        """Namespaces or links of this run still present (should be none)."""
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        yield from (line.split()[0] for line in out.splitlines() if line.startswith(f"{self.tag}-"))
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        yield from (
            line.split(":")[1].strip().split("@")[0]
            for line in links.splitlines()
            if line.split(":")[1].strip().startswith(self.tag)
        )
