"""Agent configuration: who this host is and what it may give to VMs.

hypervisor = "az1-r1-h1"
rack = "az1-r1"
az = "az1"
libvirt_uri = "test:///default"
state_dir = "/var/lib/warmcache-agent"
create_delay_s = 0.0          # simulated boot time on test:///default

pin_cpus = true               # NUMA pinning (agent/numa.py)
numa_nodes = 2                # or numa_cpus = [[0, 1, ...], [8, 9, ...]]

[capacity]                    # host topology override (libvirt's numbers
vcpus = 16                    # are not trusted blindly, ENVIRONMENT.md)
memory_mib = 65536
disk_gib = 2000

[reserved]                    # buffer kept for the host itself
vcpus = 2
memory_mib = 4096
disk_gib = 50

[images]                      # the host's image cache (warmcache_agent.images)
cache_gib = 50                # images no VM uses are evicted beyond this
fetch_timeout_s = 900         # a whole download, not one read
local_dirs = ["/var/lib/warmcache-images"]   # path / file:// sources only from here
ca_file = ""                  # CA of an internal https image server (default: system CAs)

[disks]
check_filesystem = true       # refuse a create the filesystem could not hold fully written

nvme_devices = ["0000:3b:00.0"]   # PCI addresses VMs may be given (attach_nvme)

[inventory]                   # heartbeat with host facts into the store
kind = "etcd"                 # sqlite | etcd | consul, as the service's [store]
url = "http://10.0.0.5:2379"
ttl_s = 10
update_check_s = 60           # looks for an update slot this often
update_sources = ["https://artifacts.example.internal/warmcache/"]  # where builds may come from
update_probation_s = 60       # exits with an error this soon after "ready": rolled back
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from warmcache.config import PATH_OPTIONS, StoreConnection
from warmcache.errors import ConfigError
from warmcache.model import NAME_PATTERN
from warmcache_agent.numa import Topology


class Resources(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    vcpus: int = Field(ge=0, le=100_000)
    memory_mib: int = Field(ge=0)
    disk_gib: int = Field(ge=0)


class ServerLimits(BaseModel):
    """How much work the agent's socket (and the proxy) take at once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workers: int = Field(
        default=16, ge=1, le=1024, description="requests served at once (each can run a create)"
    )
    queue: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="connections that may wait for a worker; beyond: busy",
    )
    idle_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="a connection that sends nothing for this long (or stops half way "
        "through its request line) is closed",
    )
    request_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="warmcache-proxy (--request-timeout): a TLS handshake, and each request "
        "(headers and body), must arrive whole within this long of its first byte, however "
        "steadily it trickles in: else 408 and closed. (The agent's socket takes its one "
        "request line within idle_timeout_s in all.)",
    )


class InventoryConfig(StoreConnection):
    """Where the agent publishes its heartbeat: the service's coordination
    store, with the options of the service's ``[store]`` (kind, path, url,
    TLS, credentials and their ``*_file`` forms)."""

    path: str = ""
    prefix: str = "warmcache"
    ttl_s: float = Field(default=10.0, ge=2.0, le=3600.0)
    update_check_s: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="how often the agent looks for an update slot (one small read)",
    )
    update_sources: tuple[str, ...] = Field(
        default=(),
        max_length=64,
        description="where agent builds may come from: absolute path prefixes and https:// "
        "URL prefixes; an artifact anywhere else is refused (empty: every update is)",
    )
    update_probation_s: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="the launcher rolls a new build back if it exits with an error within "
        "this long of saying it was ready (a crash loop ends on the last good build)",
    )

    @field_validator("update_sources")
    @classmethod
    def _sources_are_prefixes(cls, sources: tuple[str, ...]) -> tuple[str, ...]:
        for source in sources:
            if not (source.startswith("/") or source.startswith("https://")) or any(
                ord(c) < 32 for c in source
            ):
                raise ValueError(
                    f"{source!r}: an absolute path or an https:// URL prefix, no control characters"
                )
        return sources

    advertise: str = Field(
        default="",
        description="endpoint the service should call; default unix:<the agent's socket>",
    )

    @model_validator(mode="after")
    def _sqlite_needs_a_path(self) -> InventoryConfig:
        if self.kind == "sqlite" and not self.path:
            raise ValueError("inventory.kind = sqlite needs inventory.path (the store file)")
        return self


class GuestBootConfig(BaseModel):
    """How real guests run (qemu:///system). A VM boots its image: the
    image's own ``boot`` kernel and initrd with the root on its disk, or
    else firmware boot from its root disk. ``kernel``/``initrd`` here are
    only a fallback for images with neither (a kernel the host provides)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kernel: str = ""
    initrd: str = ""
    cmdline: str = "console=ttyS0 quiet panic=-1"
    domain_type: str = Field(
        default="qemu", pattern="^(qemu|kvm)$", description="qemu (software emulation) or kvm"
    )


class ImageCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cache_gib: float = Field(
        default=50.0,
        gt=0,
        le=1_000_000,
        description="GiB of images kept; beyond it, images no VM boots from are evicted, "
        "least recently used first (keep it within [reserved] disk_gib)",
    )
    fetch_timeout_s: float = Field(
        default=900.0, gt=0, le=86400, description="a whole image download, not one read"
    )
    local_dirs: tuple[str, ...] = Field(
        default=("/var/lib/warmcache-images",),
        description="folders a path or file:// image source may be in (https: anywhere)",
    )
    ca_file: str = Field(
        default="", description="CA bundle for https image sources (default: the system's)"
    )


class DiskConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    check_filesystem: bool = Field(
        default=True,
        description="refuse a create (insufficient_capacity) unless the filesystem under "
        "state_dir/vms can hold every promised disk fully written; off only for simulated "
        "hosts that share one filesystem",
    )


class AgentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    hypervisor: str = Field(pattern=NAME_PATTERN)
    rack: str = Field(pattern=NAME_PATTERN)
    az: str = Field(pattern=NAME_PATTERN)
    libvirt_uri: str = "test:///default"
    state_dir: str = "."
    create_delay_s: float = Field(default=0.0, ge=0.0, le=600.0)
    capacity: Resources = Resources(vcpus=16, memory_mib=65536, disk_gib=2000)
    reserved: Resources = Resources(vcpus=2, memory_mib=4096, disk_gib=50)
    inventory: InventoryConfig | None = None
    guest: GuestBootConfig | None = None
    images: ImageCacheConfig = ImageCacheConfig()
    disks: DiskConfig = DiskConfig()
    nvme_devices: tuple[str, ...] = Field(
        default=(),
        description="PCI addresses of the NVMe devices VMs may be given (attach_nvme), "
        "each to one VM at a time",
    )
    server: ServerLimits = ServerLimits()
    ready_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="how long a real guest may take to boot"
    )
    reconcile_every_s: float = Field(
        default=86400.0, gt=0, description="reconciliation period (daily by default)"
    )
    reconcile_ignore: tuple[str, ...] = Field(
        default=(), description="libvirt domains that are not warmcache's business"
    )
    pin_cpus: bool = Field(default=True, description="NUMA-pin every VM (agent/numa.py rules)")
    numa_nodes: int = Field(
        default=1, ge=1, le=64, description="NUMA nodes; capacity.vcpus is split evenly over them"
    )
    numa_cpus: tuple[tuple[int, ...], ...] | None = Field(
        default=None, description="explicit host CPU ids per NUMA node (overrides numa_nodes)"
    )

    @field_validator("nvme_devices")
    @classmethod
    def _pci_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from warmcache_agent.disks import DiskError, PciAddress

        try:
            canonical = tuple(PciAddress.parse(v).canonical for v in value)
        except DiskError as exc:
            raise ValueError(str(exc)) from exc
        if len(set(canonical)) != len(canonical):
            raise ValueError("nvme_devices lists a device twice")
        return canonical

    @model_validator(mode="after")
    def _topology_matches_capacity(self) -> AgentConfig:
        if self.numa_cpus is not None:
            if sum(len(n) for n in self.numa_cpus) != self.capacity.vcpus:
                raise ValueError("numa_cpus must list exactly capacity.vcpus CPUs")
        elif self.capacity.vcpus % self.numa_nodes:
            raise ValueError("capacity.vcpus must split evenly over numa_nodes")
        return self

    def topology(self) -> Topology:
        nodes = (
            self.numa_cpus
            or Topology.uniform(self.numa_nodes, self.capacity.vcpus // self.numa_nodes).nodes
        )
        return Topology(tuple(tuple(n) for n in nodes), reserved=self.reserved.vcpus)


def load_agent_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError([f"{path}: no such file"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc
    if isinstance(data.get("state_dir"), str):
        data["state_dir"] = str((path.parent / data["state_dir"]).resolve())
    guest = data.get("guest")
    if isinstance(guest, dict):
        for field in ("kernel", "initrd"):
            if isinstance(guest.get(field), str) and guest[field]:
                guest[field] = str((path.parent / guest[field]).resolve())
    images = data.get("images")
    if isinstance(images, dict):
        if isinstance(images.get("local_dirs"), list):
            images["local_dirs"] = [
                str((path.parent / d).resolve()) if isinstance(d, str) else d
                for d in images["local_dirs"]
            ]
        if isinstance(images.get("ca_file"), str) and images["ca_file"]:
            images["ca_file"] = str((path.parent / images["ca_file"]).resolve())
    inventory = data.get("inventory")
    if isinstance(inventory, dict):
        for option, value in list(inventory.items()):
            if (
                isinstance(value, str)
                and value
                and (option in PATH_OPTIONS or option.endswith("_file"))
            ):
                inventory[option] = str((path.parent / value).resolve())
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        ) from exc
